"""Routes: a strategy per alias, fallback routes, and the response naming
what served it (`x-shardgate-model`, `-provider`, `-upstream-model`,
`-attempts`), through the official `openai` SDK. Config errors name their
field."""

from __future__ import annotations

import collections
import subprocess
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
    # Power of two choices with replacement: about 3 in 4 once both are
    # known (45 of 60 expected; 30 is over 4 standard deviations below).
    assert fast >= 30, fast


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
    ],
    ids=["unknown-strategy", "zero-weights", "fallback-cycle", "unknown-fallback"],
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
