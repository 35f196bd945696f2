"""Routes: a strategy per alias, fallback routes, and the response naming
what served it (`x-shardgate-model`, `-provider`, `-upstream-model`,
`-attempts`), through the official `openai` SDK. Config errors name their
field."""

from __future__ import annotations

import collections
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx2
import openai
import pytest

from conftest import REQUEST_TIMEOUT, Upstream, binary, gateway_config, start_gateway, write_config

MESSAGES = [{"role": "user", "content": "hi"}]


def routes_config(upstream: Upstream) -> dict:
    cfg = gateway_config(upstream)
    cfg["models"]["weighted"] = {
        "strategy": "weighted",
        "targets": [
            {"provider": "up", "model": "mock-1", "weight": 3},
            {"provider": "local", "model": "mock-1", "weight": 1},
        ],
    }
    cfg["models"]["fast"] = {
        "strategy": "lowest_latency",
        "targets": [
            {"provider": "local", "model": "mock-ttft-60ms"},
            {"provider": "local", "model": "mock-1"},
        ],
    }
    cfg["models"]["cheap"] = {
        "strategy": "cheapest",
        "targets": [{"provider": "up", "model": "pricey-1"}, {"provider": "up", "model": "mock-1"}],
    }
    cfg["pricing"] = [
        {"model": "pricey-*", "input_per_million_usd": 30, "output_per_million_usd": 60},
        {"model": "mock-*", "input_per_million_usd": 1, "output_per_million_usd": 2},
    ]
    cfg["models"]["primary"] = {"targets": [{"provider": "up", "model": "mock-500"}], "fallback": ["backup"]}
    cfg["models"]["backup"] = {"targets": [{"provider": "local", "model": "mock-1"}]}
    return cfg


@pytest.fixture(scope="module")
def gw(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    path = write_config(tmp_path_factory.mktemp("routing") / "gateway.yaml", routes_config(mock_upstream))
    g = start_gateway("gateway-routing", path, logs_dir / "gateway-routing.log", upstream_key)
    yield g
    assert g.stop() == 0


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-x", base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                         http_client=httpx2.Client(trust_env=False))


def test_weighted_spreads_by_weight_and_names_the_target(gw):
    c = client(gw)
    seen = collections.Counter()
    for _ in range(200):
        r = c.chat.completions.with_raw_response.create(model="weighted", messages=MESSAGES)
        assert r.headers["x-shardgate-model"] == "weighted"
        assert r.headers["x-shardgate-upstream-model"] == "mock-1"
        assert r.headers["x-shardgate-attempts"] == "1"
        seen[r.headers["x-shardgate-provider"]] += 1
    # 3:1; 200 draws put `up` between 120 and 180 with overwhelming odds.
    assert 120 <= seen["up"] <= 180 and seen["up"] + seen["local"] == 200, seen


def test_lowest_latency_moves_traffic_to_the_faster_target(gw):
    c = client(gw)
    fast = 0
    for _ in range(60):
        r = c.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
        fast += r.headers["x-shardgate-upstream-model"] == "mock-1"
    # The better of two distinct draws, and one pick in 50 at random: after
    # each shard has measured both targets, all but about 1% go to the
    # faster one.
    assert fast >= 50, fast


def test_cheapest_picks_the_lower_price(gw):
    c = client(gw)
    for _ in range(5):
        r = c.chat.completions.with_raw_response.create(model="cheap", messages=MESSAGES)
        assert r.headers["x-shardgate-upstream-model"] == "mock-1"


def test_a_fallback_route_serves_when_every_target_fails(gw):
    c = client(gw)
    r = c.chat.completions.with_raw_response.create(model="primary", messages=MESSAGES)
    assert r.headers["x-shardgate-model"] == "backup"
    assert r.headers["x-shardgate-provider"] == "local"
    assert r.headers["x-shardgate-attempts"] == "2"
    assert r.parse().choices[0].message.content


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m["weighted"].update(strategy="fastest"), "models.weighted.strategy"),
        (lambda m: [t.update(weight=0) for t in m["weighted"]["targets"]], "models.weighted.targets"),
        (lambda m: m["backup"].update(fallback=["primary"]), "models."),
        (lambda m: m["primary"].update(fallback=["nowhere"]), "models.primary.fallback[0]"),
        (lambda m: m["backup"].update(hedge={"after": "200ms"}), "models.backup.hedge"),
        (lambda m: m["weighted"].update(retry={"attempts": 0}), "models.weighted.retry.attempts"),
        (lambda m: m["weighted"].update(timeouts={"first_token": "soon"}), "models.weighted.timeouts.first_token"),
    ],
    ids=["unknown-strategy", "zero-weights", "fallback-cycle", "unknown-fallback", "hedge-one-target",
         "zero-attempts", "bad-timeout"],
)
def test_bad_routes_are_refused_naming_the_field(tmp_path: Path, mock_upstream: Upstream, change, field):
    cfg = routes_config(mock_upstream)
    change(cfg["models"])
    path = write_config(tmp_path / "gateway.yaml", cfg)
    r = subprocess.run([str(binary("shardgate")), "check", "--config", str(path)], capture_output=True, text=True,
                       timeout=30, env={"SG_TEST_UPSTREAM_KEY": "k", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    assert field in r.stderr, r.stderr
    if "cycle" in field or field == "models.":
        assert "cycle" in r.stderr


def test_an_open_circuit_is_avoided_on_every_shard(tmp_path: Path, mock_upstream: Upstream, upstream_key: str, logs_dir: Path):
    """A target failing with 5xx trips its breaker on one shard; from then
    on every shard serves the route from its healthy target at the first
    attempt."""
    cfg = gateway_config(mock_upstream)
    cfg["upstream"] = {"breaker_failures": 2, "breaker_open_for": "60s"}
    cfg["models"]["flaky"] = {"targets": [{"provider": "up", "model": "mock-500"}, {"provider": "local", "model": "mock-1"}]}
    path = write_config(tmp_path / "gateway.yaml", cfg)
    g = start_gateway("gateway-breaker", path, logs_dir / "gateway-breaker.log", upstream_key)
    try:
        def attempts() -> str:
            with httpx2.Client(trust_env=False) as c:  # a fresh connection: any shard
                r = c.post(f"{g.base_url}/chat/completions", json={"model": "flaky", "messages": MESSAGES},
                           headers={"connection": "close"}, timeout=REQUEST_TIMEOUT)
            assert r.status_code == 200 and r.headers["x-shardgate-provider"] == "local"
            return r.headers["x-shardgate-attempts"]

        seen = [attempts() for _ in range(20)]
        first_direct = seen.index("1")  # tripped on some shard by now
        assert first_direct >= 2, seen
        # Every request from here, on any shard, skips the open target.
        assert [attempts() for _ in range(16)] == ["1"] * 16
    finally:
        assert g.stop() == 0


# ------------------------------------------------------- when things fail


def free_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tag() -> str:
    """A unique model-name tag: `-first-N` counts per name on the mock."""
    return uuid.uuid4().hex[:10]


def resilience_config(upstream: Upstream) -> dict:
    cfg = gateway_config(upstream)
    cfg["providers"]["dead"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "k"}
    m = cfg["models"]
    m["refused"] = {"targets": [{"provider": "dead", "model": "mock-1"}, {"provider": "local", "model": "mock-1"}]}
    m["slow-first"] = {
        "targets": [{"provider": "up", "model": "mock-ttft-5s"}, {"provider": "local", "model": "mock-1"}],
        "timeouts": {"first_token": "300ms"},
    }
    m["deadline"] = {
        "targets": [{"provider": "up", "model": "mock-hang"}, {"provider": "up", "model": "mock-hang"}],
        "timeouts": {"total": "600ms"},
    }
    m["context"] = {
        "targets": [
            {"provider": "up", "model": "mock-ctx-50", "context_window": 50},
            {"provider": "up", "model": "mock-ctx-40", "context_window": 40},
            {"provider": "local", "model": "mock-1", "context_window": 100000},
        ],
    }
    m["context-nowhere"] = {
        "targets": [
            {"provider": "up", "model": "mock-ctx-50", "context_window": 50},
            {"provider": "local", "model": "mock-1"},
        ],
    }
    m["cut-first"] = {"targets": [{"provider": "up", "model": "mock-tokens-10-cut-after-3"}, {"provider": "local", "model": "mock-1"}]}
    m["only-connect"] = {
        "targets": [{"provider": "up", "model": "mock-500"}, {"provider": "local", "model": "mock-1"}],
        "retry": {"on": ["connect"]},
    }
    m["idle"] = {"targets": [{"provider": "up", "model": "mock-tokens-6-tps-2"}], "timeouts": {"idle": "200ms"}}
    m["hedged"] = {
        "targets": [{"provider": "up", "model": "mock-ttft-3s"}, {"provider": "local", "model": "mock-1"}],
        "hedge": {"after": "150ms"},
    }
    return cfg


@pytest.fixture(scope="module")
def rgw(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    cfg = resilience_config(mock_upstream)
    path = write_config(tmp_path_factory.mktemp("resilience") / "gateway.yaml", cfg)
    g = start_gateway("gateway-resilience", path, logs_dir / "gateway-resilience.log", upstream_key)
    g.cfg = cfg
    g.path = path
    yield g
    assert g.stop() == 0


def with_route(upstream: Upstream, upstream_key: str, tmp_path: Path, logs_dir: Path, alias: str, route: dict):
    """A gateway of its own with one more route (routes with per-test model
    names)."""
    cfg = resilience_config(upstream)
    cfg["models"][alias] = route
    path = write_config(tmp_path / "gateway.yaml", cfg)
    return start_gateway(f"gateway-{alias}", path, logs_dir / f"gateway-{alias}.log", upstream_key)


def timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def stream_text(c: openai.OpenAI, model: str, **kw) -> tuple[str, dict]:
    with c.chat.completions.with_streaming_response.create(model=model, messages=MESSAGES, stream=True, **kw) as r:
        text = "".join(ch.choices[0].delta.content or "" for ch in r.parse() if ch.choices)
        return text, dict(r.headers)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_refused_connection_moves_to_the_next_target_at_once(rgw, stream):
    c = client(rgw)
    if stream:
        (text, h), took = timed(lambda: stream_text(c, "refused"))
        assert text
    else:
        r, took = timed(lambda: c.chat.completions.with_raw_response.create(model="refused", messages=MESSAGES))
        h = r.headers
        assert r.parse().choices[0].message.content
    assert h["x-shardgate-provider"] == "local" and h["x-shardgate-attempts"] == "2"
    assert took < 2.0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_first_token_timeout_moves_on_before_the_client_sees_a_byte(rgw, stream):
    c = client(rgw)
    if stream:
        (text, h), took = timed(lambda: stream_text(c, "slow-first"))
        assert text
    else:
        r, took = timed(lambda: c.chat.completions.with_raw_response.create(model="slow-first", messages=MESSAGES))
        h = r.headers
    assert h["x-shardgate-provider"] == "local" and h["x-shardgate-attempts"] == "2"
    # 300 ms of waiting, not the 5 s the first target would take.
    assert took < 3.0, took


def test_the_total_deadline_bounds_every_attempt(rgw):
    c = client(rgw)
    t = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="deadline", messages=MESSAGES)
    assert e.value.status_code == 504
    # Two hanging targets, and the default first-token wait of 300 s: the
    # 600 ms total is what ends it.
    assert time.monotonic() - t < 3.0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_context_length_error_moves_only_to_a_larger_window(rgw, stream):
    c = client(rgw)
    long = [{"role": "user", "content": "word " * 200}]
    if stream:
        with c.chat.completions.with_streaming_response.create(model="context", messages=long, stream=True) as r:
            assert "".join(ch.choices[0].delta.content or "" for ch in r.parse() if ch.choices)
            h = r.headers
    else:
        r = c.chat.completions.with_raw_response.create(model="context", messages=long)
        h = r.headers
    # The 40-token target is skipped: it is smaller than the one that refused.
    assert h["x-shardgate-provider"] == "local" and h["x-shardgate-attempts"] == "2"
    # A prompt that fits is served by the first target.
    r = c.chat.completions.with_raw_response.create(model="context", messages=MESSAGES)
    assert r.headers["x-shardgate-upstream-model"] == "mock-ctx-50"
    # No target with a larger window: the client gets the provider's error.
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="context-nowhere", messages=long)
    assert "maximum context length" in e.value.message
    assert e.value.response.headers["x-shardgate-attempts"] == "1"


def test_an_idle_gap_over_the_routes_limit_ends_the_stream(rgw):
    c = client(rgw)
    t = time.monotonic()
    with c.chat.completions.with_streaming_response.create(model="idle", messages=MESSAGES, stream=True) as r:
        with pytest.raises(openai.APIError):
            for _ in r.parse():
                pass
    # Events 500 ms apart, 200 ms allowed: cut at the first gap, not after
    # the 3 s the stream would take.
    assert time.monotonic() - t < 2.0


def test_nothing_moves_after_the_first_byte(rgw):
    c = client(rgw)
    with c.chat.completions.with_streaming_response.create(model="cut-first", messages=MESSAGES, stream=True) as r:
        assert r.headers["x-shardgate-upstream-model"] == "mock-tokens-10-cut-after-3"
        assert r.headers["x-shardgate-attempts"] == "1"
        with pytest.raises(openai.APIError):
            for _ in r.parse():
                pass


def test_which_failures_move_on_is_per_route(rgw):
    c = client(rgw)
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="only-connect", messages=MESSAGES)
    assert e.value.response.headers["x-shardgate-attempts"] == "1"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_retries_back_off_then_answer(tmp_path: Path, logs_dir: Path, mock_upstream: Upstream, upstream_key: str, stream):
    route = {
        "targets": [{"provider": "up", "model": f"mock-500-first-2-{tag()}"}],
        "retry": {"attempts": 3, "backoff": "200ms", "max_backoff": "1s"},
    }
    g = with_route(mock_upstream, upstream_key, tmp_path, logs_dir, "flaky", route)
    try:
        c = client(g)
        if stream:
            (text, h), took = timed(lambda: stream_text(c, "flaky"))
            assert text
        else:
            r, took = timed(lambda: c.chat.completions.with_raw_response.create(model="flaky", messages=MESSAGES))
            h = r.headers
        assert h["x-shardgate-attempts"] == "3"
        # Backoffs of 100-200 ms, then 200-400 ms, with jitter.
        assert took >= 0.3, took
    finally:
        assert g.stop() == 0


@pytest.mark.parametrize("provider", ["up", "anthropic"])
def test_a_rate_limit_wait_is_honoured_in_each_providers_words(tmp_path: Path, logs_dir: Path, mock_upstream: Upstream,
                                                               upstream_key: str, provider):
    """OpenAI says `retry-after-ms` and `x-ratelimit-reset-*`, Anthropic an
    `anthropic-ratelimit-*-reset` time: the retry waits that long, not the
    route's 10 ms backoff."""
    route = {
        "targets": [{"provider": provider, "model": f"mock-429-first-1-wait-700ms-{tag()}"}],
        "retry": {"attempts": 2, "backoff": "10ms"},
    }
    g = with_route(mock_upstream, upstream_key, tmp_path, logs_dir, "waits", route)
    try:
        c = client(g)
        r, took = timed(lambda: c.chat.completions.with_raw_response.create(model="waits", messages=MESSAGES))
        assert r.headers["x-shardgate-attempts"] == "2"
        assert took >= 0.6, took
    finally:
        assert g.stop() == 0


def test_a_wait_past_the_deadline_is_not_taken(tmp_path: Path, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    route = {
        "targets": [{"provider": "up", "model": "mock-429"}],
        "retry": {"attempts": 3},
        "timeouts": {"total": "500ms"},
    }
    g = with_route(mock_upstream, upstream_key, tmp_path, logs_dir, "impatient", route)
    try:
        c = client(g)
        t = time.monotonic()
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="impatient", messages=MESSAGES)
        # Retry-After: 1 does not fit in 500 ms: the client hears it at once.
        assert time.monotonic() - t < 0.45
        assert e.value.response.headers["x-shardgate-attempts"] == "1"
        assert e.value.response.headers["retry-after"] == "1"
    finally:
        assert g.stop() == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_hedge_answers_from_the_second_target_and_cancels_the_first(rgw, stream):
    c = client(rgw)
    if stream:
        (text, h), took = timed(lambda: stream_text(c, "hedged"))
        assert text
    else:
        r, took = timed(lambda: c.chat.completions.with_raw_response.create(model="hedged", messages=MESSAGES))
        h = r.headers
    assert h["x-shardgate-provider"] == "local" and h["x-shardgate-attempts"] == "2"
    assert took < 2.0, took


def test_a_request_with_tools_is_not_hedged(rgw):
    c = client(rgw)
    tools = [{"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}]
    r, took = timed(lambda: c.chat.completions.with_raw_response.create(
        model="hedged", messages=MESSAGES, tools=tools, tool_choice="none"))
    assert r.headers["x-shardgate-upstream-model"] == "mock-ttft-3s"
    assert r.headers["x-shardgate-attempts"] == "1"
    assert took >= 2.5


def test_health_checks_open_a_dead_targets_circuit_before_any_call(tmp_path: Path, logs_dir: Path,
                                                                   mock_upstream: Upstream, upstream_key: str):
    """A provider whose health check fails has its targets' circuits opened
    by the checks alone: the first call goes straight to the healthy
    target. A provider whose check answers keeps serving."""
    cfg = gateway_config(mock_upstream)
    cfg["upstream"] = {"breaker_failures": 2, "breaker_open_for": "60s"}
    check = {"path": "/models", "interval": "150ms", "timeout": "100ms"}
    cfg["providers"]["sick"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "k",
                                "health_check": check}
    cfg["providers"]["fine"] = {**cfg["providers"]["up"], "health_check": check}
    cfg["models"]["checked"] = {"targets": [{"provider": "sick", "model": "mock-1"}, {"provider": "local", "model": "mock-1"}]}
    cfg["models"]["checked-fine"] = {"targets": [{"provider": "fine", "model": "mock-1"}, {"provider": "local", "model": "mock-1"}]}
    path = write_config(tmp_path / "gateway.yaml", cfg)
    g = start_gateway("gateway-health", path, logs_dir / "gateway-health.log", upstream_key)
    try:
        time.sleep(1.0)  # a few checks
        c = client(g)
        for _ in range(6):
            r = c.chat.completions.with_raw_response.create(model="checked", messages=MESSAGES)
            assert r.headers["x-shardgate-provider"] == "local"
            assert r.headers["x-shardgate-attempts"] == "1"
            r = c.chat.completions.with_raw_response.create(model="checked-fine", messages=MESSAGES)
            assert r.headers["x-shardgate-provider"] == "fine"
        log = (logs_dir / "gateway-health.log").read_text()
        assert "health check of sick: cannot connect" in log
        assert "health check of fine" not in log
    finally:
        assert g.stop() == 0
