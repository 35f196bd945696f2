"""Graceful shutdown: SIGTERM while a stream is in flight."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx2
import openai
import pytest

import mocktext
from conftest import CLIENT_KEY, REQUEST_TIMEOUT

DRAIN_TIMEOUT_S = 10
SLOW_TOKENS = 40
# ~2 s of streaming at 20 tokens per second: the signal lands well before the end.
SLOW = {"slow": [("up", f"mock-tokens-{SLOW_TOKENS}-tps-20")]}


def assert_refused(host: str, port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=REQUEST_TIMEOUT).close()


def content_chunks(data: list[str]) -> int:
    n = 0
    for d in data:
        if d != "[DONE]":
            c = json.loads(d)
            n += bool(c.get("choices") and c["choices"][0]["delta"].get("content"))
    return n


def test_sigterm_lets_an_inflight_stream_finish(private_gateway):
    gw = private_gateway(extra_models=SLOW, extra_limits={"drain_timeout": f"{DRAIN_TIMEOUT_S}s"})
    payload = {
        "model": "slow",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data: list[str] = []
    signalled = False
    with httpx2.Client(base_url=gw.url, timeout=REQUEST_TIMEOUT, trust_env=False) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {CLIENT_KEY}"}
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data.append(line[len("data:"):].strip())
                if not signalled and content_chunks(data) >= 2:
                    gw.proc.signal(signal.SIGTERM)
                    signalled = True
    assert signalled, f"stream ended before two content chunks: {data}"

    # The stream in flight completed in full.
    assert data[-1] == "[DONE]", data[-3:]
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == mocktext.text(SLOW_TOKENS)
    assert chunks[-1]["usage"]["completion_tokens"] == SLOW_TOKENS

    # No new connections once draining, and a clean exit within the drain timeout.
    assert_refused(gw.host, gw.port)
    rc = gw.proc.wait(timeout=DRAIN_TIMEOUT_S + 5)
    assert rc == 0, f"exit status {rc}\n{gw.proc.log_tail()}"
    assert_refused(gw.host, gw.port)


def test_sigterm_on_idle_gateway_exits_cleanly(private_gateway):
    gw = private_gateway(extra_limits={"drain_timeout": f"{DRAIN_TIMEOUT_S}s"})
    client = gw.client()
    assert client.models.list().data  # it was serving (and holds a keep-alive connection)
    gw.proc.signal(signal.SIGTERM)
    rc = gw.proc.wait(timeout=DRAIN_TIMEOUT_S + 5)
    assert rc == 0, f"exit status {rc}\n{gw.proc.log_tail()}"
    # The idle keep-alive connection was closed at once, not waited for
    # until the drain timed out.
    assert "drain timeout" not in gw.proc.log_tail(), gw.proc.log_tail()
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    client.close()


def test_a_second_signal_during_the_drain_is_a_forced_stop_and_not_a_success(private_gateway):
    # A stream far longer than the test: only a forced stop ends it early.
    long = {"long": [("up", "mock-tokens-400-tps-20")]}
    gw = private_gateway(extra_models=long, extra_limits={"drain_timeout": f"{DRAIN_TIMEOUT_S}s"})
    payload = {"model": "long", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    data: list[str] = []
    with httpx2.Client(base_url=gw.url, timeout=REQUEST_TIMEOUT, trust_env=False) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {CLIENT_KEY}"}
        ) as r:
            assert r.status_code == 200
            # Kept referenced: a generator left by `break` and collected
            # would close the response, and so end the stream.
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    data.append(line[len("data:"):].strip())
                if content_chunks(data) >= 2:
                    break
            gw.proc.signal(signal.SIGTERM)
            # Two signals sent at once are one pending signal: wait until the
            # first one started the drain.
            deadline = time.monotonic() + REQUEST_TIMEOUT
            while "draining" not in gw.proc.log_tail():
                assert time.monotonic() < deadline, gw.proc.log_tail()
                time.sleep(0.02)
            gw.proc.signal(signal.SIGTERM)
            rc = gw.proc.wait(timeout=DRAIN_TIMEOUT_S)
    assert rc == 130, f"exit status {rc}\n{gw.proc.log_tail()}"
    assert "second signal" in gw.proc.log_tail()
