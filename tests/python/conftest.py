"""Fixtures that run the REAL binaries: `shardgate-bench mock` as the upstream
and `shardgate serve` in front of it, each on an ephemeral port read from its
stdout.

Synchronisation is always on something the process says (its `listening on`
line, its exit), never on a sleep. Every process's stderr goes to a log file
under pytest's tmp dir; when a test fails, the logs of the processes involved
are attached to the failure report.

Binaries come from `$SHARDGATE_BIN_DIR` (default `<repo>/target/debug`).
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, Iterator

import httpx2
import openai
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("SHARDGATE_BIN_DIR") or REPO / "target" / "debug")

# Bounded waits; none of them is an assertion about speed.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
REQUEST_TIMEOUT = 30.0

# The key the SDK sends to the gateway. The mock upstream rejects it, so any
# success proves the gateway swapped in the provider key.
CLIENT_KEY = "sk-client-not-forwarded"
UPSTREAM_KEY_ENV = "SG_TEST_UPSTREAM_KEY"
# Completion length of the mock upstream for models that don't say
# (`mock-1`); passed explicitly so the suite doesn't rely on a default.
UPSTREAM_TOKENS = 16
# Completion length of the gateway's built-in mock provider `local`.
LOCAL_TOKENS = 12

GATEWAY_LINE = re.compile(r"shardgate listening on (\S+):(\d+) \((\d+) shards\)")
MOCK_LINE = re.compile(r"mock listening on (\S+):(\d+)")

# Aliases whose upstream speaks another dialect (translated by the gateway).
DIALECT_ALIASES: tuple[str, ...] = ("bedrock", "claude", "gemini")
# Same dialect, another wire: Azure OpenAI deployments.
AZURE_ALIASES: tuple[str, ...] = ("azure-chat", "azure-embed")

# Model aliases served by the standard test config.
ALIASES = (
    "broken",
    "cut",
    "demo",
    "failover",
    "limited",
    "local",
    "short",
    *DIALECT_ALIASES,
    *(f"{d}-limited" for d in DIALECT_ALIASES),
    *(f"{d}-cut" for d in DIALECT_ALIASES),
    "gemini-embed",
    *AZURE_ALIASES,
)


def stream_text_until_error(stream) -> tuple[str, openai.APIError]:
    """Content of a chat stream the gateway ends with an error event; fails
    the test if it ended cleanly or by a dropped connection."""
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    # An error event in the stream, not a dropped connection.
    assert not isinstance(info.value, openai.APIConnectionError), repr(info.value)
    return "".join(received), info.value


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        pytest.fail(
            f"{path} not found: build with `cargo build --workspace --bins` "
            "or set SHARDGATE_BIN_DIR",
            pytrace=False,
        )
    return path


# ---------------------------------------------------------------- processes

_ALL: list["Proc"] = []
_CURRENT_TEST: list[str] = [""]


class Proc:
    """One child process: stdout read line by line on a thread (so the pipe
    never fills), stderr straight to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.touched_in = {_CURRENT_TEST[0]}
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        self.stdout: list[str] = []
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        full_env = dict(os.environ)
        full_env.setdefault("RUST_BACKTRACE", "1")
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._pump, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        _ALL.append(self)

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout.append(line)
            self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_line(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first stdout line matching `pattern`, waiting at most `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                rc = self.popen.wait()
                raise AssertionError(
                    f"{self.name} exited with {rc} before printing {pattern.pattern!r}\n"
                    f"stdout: {self.stdout}\n{self.log_tail()}"
                )
            m = pattern.search(line)
            if m:
                return m
        raise AssertionError(
            f"{self.name} printed no {pattern.pattern!r} within {timeout}s\n"
            f"stdout: {self.stdout}\n{self.log_tail()}"
        )

    def signal(self, sig: int) -> None:
        self.touched_in.add(_CURRENT_TEST[0])
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Exit status; kills the process (and fails) if it outlives `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} (pid {self.pid}) still running after {timeout}s; killed\n{self.log_tail()}")
        finally:
            self._reader.join(timeout=5)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (if still running) and the exit status."""
        if self.alive():
            self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        self._log.close()
        return rc

    def log_tail(self, max_bytes: int = 20_000) -> str:
        try:
            self._log.flush()
            data = self.log_path.read_bytes()
        except (OSError, ValueError):
            return f"({self.log_path}: unreadable)"
        cut = len(data) > max_bytes
        text = data[-max_bytes:].decode("utf-8", "replace")
        return f"--- {self.name} stderr ({self.log_path}){' (tail)' if cut else ''} ---\n{text}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT_TEST[0] = item.nodeid
    try:
        return (yield)
    finally:
        _CURRENT_TEST[0] = ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for p in _ALL:
            if p.alive() or item.nodeid in p.touched_in:
                report.sections.append((f"{p.name} log", p.log_tail()))
    return report


# ------------------------------------------------------------ mock upstream


@dataclass
class Upstream:
    proc: Proc
    host: str
    port: int
    key: str

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


@pytest.fixture(scope="session")
def upstream_key() -> str:
    return "sk-upstream-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def mock_upstream(logs_dir: Path, upstream_key: str) -> Iterator[Upstream]:
    argv = [
        str(binary("shardgate-bench")),
        "mock",
        "--listen",
        "127.0.0.1:0",
        "--require-key",
        upstream_key,
        "--output-tokens",
        str(UPSTREAM_TOKENS),
    ]
    proc = Proc("mock-upstream", argv, logs_dir / "mock-upstream.log")
    try:
        m = proc.wait_line(MOCK_LINE)
    except BaseException:
        proc.stop()
        raise
    yield Upstream(proc, m.group(1), int(m.group(2)), upstream_key)
    rc = proc.stop()
    # The mock serves until killed: SIGTERM's default action is fine too.
    assert rc in (0, -signal.SIGTERM), f"mock upstream exited with {rc}\n{proc.log_tail()}"


# ------------------------------------------------------------------ gateway


def gateway_config(upstream: Upstream, extra_models: dict | None = None, extra_limits: dict | None = None) -> dict:
    """The standard test config (see tests/python/README.md)."""
    models = {
        "demo": [("up", "mock-1")],
        "short": [("up", "mock-tokens-5")],
        "local": [("local", "mock-1")],
        "failover": [("up", "mock-503"), ("up", "mock-1")],
        "broken": [("up", "mock-500")],
        "limited": [("up", "mock-429")],
        "cut": [("up", "mock-cut-after-3")],
        # The same mock fleet speaking other dialects, translated by the gateway.
        "claude": [("anthropic", "mock-1")],
        "gemini": [("gemini", "mock-1")],
        "bedrock": [("bedrock", "mock-1")],
        "claude-limited": [("anthropic", "mock-429")],
        "gemini-limited": [("gemini", "mock-429")],
        "bedrock-limited": [("bedrock", "mock-429")],
        "gemini-embed": [("gemini", "mock-embed")],
        "claude-cut": [("anthropic", "mock-cut-after-3")],
        "gemini-cut": [("gemini", "mock-cut-after-3")],
        "bedrock-cut": [("bedrock", "mock-cut-after-3")],
        "azure-chat": [("azure", "mock-1")],
        "azure-embed": [("azure", "mock-embed")],
    }
    models.update(extra_models or {})
    limits = {"max_body_bytes": "1MiB"}
    limits.update(extra_limits or {})
    return {
        "listen": "127.0.0.1:0",
        "auth": "none",
        "shards": 2,
        "limits": limits,
        "providers": {
            "up": {"kind": "openai", "base_url": upstream.base_url, "api_key": "${" + UPSTREAM_KEY_ENV + "}"},
            "local": {"kind": "mock", "output_tokens": LOCAL_TOKENS},
            "anthropic": {
                "kind": "anthropic",
                "base_url": upstream.base_url,
                "api_key": "${" + UPSTREAM_KEY_ENV + "}",
            },
            "gemini": {
                "kind": "gemini",
                "base_url": f"http://{upstream.host}:{upstream.port}/v1beta",
                "api_key": "${" + UPSTREAM_KEY_ENV + "}",
            },
            "azure": {
                "kind": "azure",
                "base_url": f"http://{upstream.host}:{upstream.port}",
                "api_key": "${" + UPSTREAM_KEY_ENV + "}",
            },
            "bedrock": {
                "kind": "bedrock",
                "region": "us-east-1",
                "base_url": f"http://{upstream.host}:{upstream.port}",
                "aws_access_key_id": "AKIDSHARDGATETEST",
                "aws_secret_access_key": "${" + UPSTREAM_KEY_ENV + "}",
            },
        },
        "models": {
            alias: {"targets": [{"provider": p, "model": m} for p, m in targets]}
            for alias, targets in models.items()
        },
    }


def write_config(path: Path, config: dict) -> Path:
    """Writes `config` to `path`. A gateway config without a `store` gets a
    data directory of its own beside the file, so gateways never share one."""
    if "providers" in config and "store" not in config:
        config = {**config, "store": {"dir": str(path.with_suffix("")) + "-data"}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Gateway:
    proc: Proc
    host: str
    port: int
    shards: int
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kw) -> openai.OpenAI:
        return sdk_client(self, **kw)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        return self.proc.stop(timeout)


def start_gateway(name: str, config_path: Path, log_path: Path, upstream_key: str) -> Gateway:
    argv = [str(binary("shardgate")), "serve", "--config", str(config_path), "--no-pin"]
    proc = Proc(name, argv, log_path, env={UPSTREAM_KEY_ENV: upstream_key})
    try:
        m = proc.wait_line(GATEWAY_LINE)
    except BaseException:
        if proc.alive():
            proc.popen.kill()
            proc.popen.wait()
        raise
    return Gateway(proc, m.group(1), int(m.group(2)), int(m.group(3)), config_path)


def sdk_client(gw: Gateway, **kw) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)  # the SDK would retry 429/5xx
    kw.setdefault("timeout", REQUEST_TIMEOUT)
    return openai.OpenAI(
        api_key=CLIENT_KEY,
        base_url=gw.base_url,
        http_client=httpx2.Client(trust_env=False),  # no proxy for 127.0.0.1
        **kw,
    )


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str) -> Iterator[Gateway]:
    cfg = write_config(tmp_path_factory.mktemp("gateway") / "gateway.yaml", gateway_config(mock_upstream))
    gw = start_gateway("gateway", cfg, logs_dir / "gateway.log", upstream_key)
    yield gw
    rc = gw.stop()
    assert rc == 0, f"gateway exited with {rc} after SIGTERM\n{gw.proc.log_tail()}"


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with sdk_client(gateway) as c:
        yield c


@pytest.fixture(scope="session")
def async_client_factory(gateway: Gateway) -> Callable[[], openai.AsyncOpenAI]:
    def make() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=CLIENT_KEY,
            base_url=gateway.base_url,
            max_retries=0,
            timeout=REQUEST_TIMEOUT,
            http_client=httpx2.AsyncClient(trust_env=False),
        )

    return make


@pytest.fixture(scope="session")
def http(gateway: Gateway) -> Iterator[httpx2.Client]:
    """A raw HTTP client for what the SDK hides (headers, bad bodies)."""
    with httpx2.Client(base_url=gateway.url, timeout=REQUEST_TIMEOUT, trust_env=False) as c:
        yield c


@pytest.fixture
def private_gateway(tmp_path: Path, mock_upstream: Upstream, upstream_key: str) -> Iterator[Callable[..., Gateway]]:
    """A factory for gateways of this test alone: `private_gateway(extra_models=...,
    extra_limits=...)`. Whatever the test leaves running is stopped after it
    (the test asserts on exit itself when that's the point)."""
    started: list[Gateway] = []

    def start(extra_models: dict | None = None, extra_limits: dict | None = None) -> Gateway:
        n = len(started)
        cfg = write_config(tmp_path / f"gateway-{n}.yaml", gateway_config(mock_upstream, extra_models, extra_limits))
        gw = start_gateway(f"private-gateway-{n}", cfg, tmp_path / f"gateway-{n}.log", upstream_key)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.proc.alive():
            gw.stop()


def create_key(config: Path, team: str, env: str | None = None) -> dict:
    """`shardgate keys create --json` for `team` of tenant `acme`, as an
    operator would: its record, with the secret."""
    import json

    args = [str(binary("shardgate")), "keys", "create", "--team", team, "--tenant", "acme", "--json", "--config", str(config)]
    if env:
        args += ["--env", env]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class UpstreamHandler(BaseHTTPRequestHandler):
    """A quiet keep-alive handler for upstreams a test writes itself."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
