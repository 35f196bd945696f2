"""Virtual keys and policy, as the official SDKs see them.

A gateway with `auth: keys` (the default) and policies in the seed article's
`ai_runtime_policy` shape. Keys come from `shardgate keys create`, exactly as
an operator makes them. Every refusal must arrive as the SDK's own exception
type carrying the gateway's message; spend must equal the pricing table's
figure to the micro-dollar; keys, spend and windows must survive kill -9.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

import mocktext
from conftest import create_key as conftest_create_key
from conftest import (
    REQUEST_TIMEOUT,
    UPSTREAM_TOKENS,
    Gateway,
    Upstream,
    binary,
    gateway_config,
    start_gateway,
    stream_text_until_error,
    write_config,
)

MESSAGES = [{"role": "user", "content": "Say something deterministic."}]

POLICIES = [
    {
        "ai_runtime_policy": {
            "actor_scope": {"team": "support-platform", "environment": "production"},
            "model_access": {"allowed_models": ["demo", "short"], "fallback_model": "short"},
            "budgets": {"requests_per_minute": 1000, "tokens_per_day": 2_000_000, "monthly_spend_usd": 5000},
            "tools": {"allowed": ["search_*"], "denied": ["search_internal"]},
            "audit": {"log_prompts": "metadata_only"},
        }
    },
    {"ai_runtime_policy": {"actor_scope": {"team": "tiny"}, "budgets": {"requests_per_minute": 3}}},
    {"ai_runtime_policy": {"actor_scope": {"team": "burst"}, "budgets": {"requests_per_minute": 100}}},
]
# $1 per million input tokens, $2 per million output: 1 and 2 micro-dollars a token.
PRICING = [{"model": "mock-*", "input_per_million_usd": 1, "output_per_million_usd": 2}]


def policy_config(upstream: Upstream, shards: int = 2) -> dict:
    cfg = gateway_config(upstream)
    del cfg["auth"]  # the default: keys required
    cfg["shards"] = shards
    cfg["policies"] = POLICIES
    cfg["pricing"] = PRICING
    return cfg


def keys_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary("shardgate")), "keys", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def create_key(config: Path, team: str, env: str = "production") -> dict:
    return conftest_create_key(config, team, env)


def month_to_date(config: Path, key_id: str) -> dict:
    r = keys_cli(config, "list", "--json")
    assert r.returncode == 0, r.stderr
    [row] = [k for k in json.loads(r.stdout) if k["key_id"] == key_id]
    return row["month_to_date"]


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key,
        base_url=gw.base_url,
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
        http_client=httpx2.Client(trust_env=False),
    )


def fresh_minute(margin: float = 8.0) -> None:
    """Per-minute windows are aligned to UTC minutes: a test that counts
    within one window starts early enough in a minute to finish in it."""
    left = 60 - (time.time() % 60)
    if left < margin:
        time.sleep(left + 0.05)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    d = tmp_path_factory.mktemp("policy")
    cfg = write_config(d / "gateway.yaml", policy_config(mock_upstream))
    keys = {team: create_key(cfg, team) for team in ("support-platform", "tiny", "meter")}
    gw = start_gateway("policy-gateway", cfg, logs_dir / "policy-gateway.log", upstream_key)
    yield gw, cfg, keys
    assert gw.stop() == 0


def test_missing_unknown_and_malformed_keys_are_the_same_401(setup):
    gw, _, keys = setup
    messages = set()
    real = keys["tiny"]["secret"]
    near_miss = real[:-1] + ("A" if real[-1] != "A" else "B")  # one character off, never equal
    for key in ("sk-not-a-gateway-key", "sg-" + "x" * 32, near_miss):
        with sdk(gw, key) as c:
            with pytest.raises(openai.AuthenticationError) as e:
                c.chat.completions.create(model="demo", messages=MESSAGES)
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key"
        messages.add(e.value.body["message"])
    with httpx2.Client(base_url=gw.url, timeout=REQUEST_TIMEOUT, trust_env=False) as h:
        r = h.post("/v1/chat/completions", json={"model": "demo", "messages": MESSAGES})
        assert r.status_code == 401
        messages.add(r.json()["error"]["message"])
        # Two different keys in the two headers are refused, not guessed at.
        r = h.post(
            "/v1/chat/completions",
            json={"model": "demo", "messages": MESSAGES},
            headers={"authorization": f"Bearer {keys['tiny']['secret']}", "x-api-key": keys["meter"]["secret"]},
        )
        assert r.status_code == 401
    assert len(messages) == 1, messages  # nothing hints at which keys exist


def test_allowed_request_carries_rate_limit_headers(setup):
    gw, _, keys = setup
    # Fresh connections land on either shard: the bucket's owner reports its
    # own counters, the other shard its lease-based view; both must be right.
    for _ in range(8):
        with sdk(gw, keys["support-platform"]["secret"]) as c:
            raw = c.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)
        assert raw.status_code == 200
        assert raw.parse().choices[0].message.content == mocktext.text(UPSTREAM_TOKENS)
        h = raw.headers
        assert h["x-ratelimit-limit-requests"] == "1000"
        assert 0 <= int(h["x-ratelimit-remaining-requests"]) < 1000
        assert h["x-ratelimit-reset-requests"].endswith("s")
        assert h["x-ratelimit-limit-tokens"] == "2000000"
        assert int(h["x-ratelimit-remaining-tokens"]) < 2_000_000


def test_models_list_needs_a_key_and_shows_what_it_may_use(setup):
    gw, _, keys = setup
    with sdk(gw, keys["support-platform"]["secret"]) as c:
        assert sorted(m.id for m in c.models.list()) == ["demo", "short"]
    with sdk(gw, keys["tiny"]["secret"]) as c:  # no model_access: every alias
        assert "demo" in [m.id for m in c.models.list()] and len(c.models.list().data) > 2
    with sdk(gw, "sg-" + "x" * 32) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()


def test_anthropic_sdk_with_x_api_key(setup):
    gw, _, keys = setup
    with anthropic.Anthropic(
        api_key=keys["support-platform"]["secret"],
        base_url=gw.url,
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
        http_client=httpx2.Client(trust_env=False),
    ) as c:
        msg = c.messages.create(model="demo", max_tokens=64, messages=MESSAGES)
        assert msg.content[0].text == mocktext.text(UPSTREAM_TOKENS)
    with anthropic.Anthropic(
        api_key="sg-wrong", base_url=gw.url, max_retries=0, http_client=httpx2.Client(trust_env=False)
    ) as c:
        with pytest.raises(anthropic.AuthenticationError) as e:
            c.messages.create(model="demo", max_tokens=64, messages=MESSAGES)
        assert e.value.body["type"] == "error"


def test_model_outside_allowed_models_falls_back(setup):
    gw, _, keys = setup
    with sdk(gw, keys["support-platform"]["secret"]) as c:
        raw = c.chat.completions.with_raw_response.create(model="local", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["x-shardgate-fallback-model"] == "short"
    assert raw.headers["x-shardgate-requested-model"] == "local"
    assert raw.headers["x-shardgate-target"] == "up/mock-tokens-5"
    assert raw.parse().choices[0].message.content == mocktext.text(5)


def test_denied_tool_is_403(setup):
    gw, _, keys = setup
    tool = lambda name: {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}  # noqa: E731
    with sdk(gw, keys["support-platform"]["secret"]) as c:
        ok = c.chat.completions.create(model="demo", messages=MESSAGES, tools=[tool("search_docs")])
        assert ok.choices[0].finish_reason == "tool_calls"
        for name in ("search_internal", "delete_everything"):
            with pytest.raises(openai.PermissionDeniedError) as e:
                c.chat.completions.create(model="demo", messages=MESSAGES, tools=[tool(name)])
            assert e.value.status_code == 403
            assert name in e.value.body["message"]
            assert e.value.body["code"] == "tool_not_allowed"


def test_model_not_allowed_without_fallback_is_403(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    cfg = policy_config(mock_upstream, shards=1)
    cfg["policies"] = [
        {"ai_runtime_policy": {"actor_scope": {"team": "narrow"}, "model_access": {"allowed_models": ["demo"]}}}
    ]
    path = write_config(tmp_path / "narrow.yaml", cfg)
    key = create_key(path, "narrow")["secret"]
    gw = start_gateway("narrow-gateway", path, tmp_path / "narrow.log", upstream_key)
    try:
        with sdk(gw, key) as c:
            assert c.chat.completions.create(model="demo", messages=MESSAGES).choices
            with pytest.raises(openai.PermissionDeniedError) as e:
                c.chat.completions.create(model="short", messages=MESSAGES)
        assert e.value.status_code == 403
        assert "`short` is not allowed" in e.value.body["message"]
        assert e.value.body["code"] == "model_not_allowed"
    finally:
        assert gw.stop() == 0


def test_over_the_request_limit_is_429_with_retry_after(setup):
    gw, _, keys = setup
    fresh_minute()
    with sdk(gw, keys["tiny"]["secret"]) as c:
        remaining = []
        for _ in range(3):
            raw = c.chat.completions.with_raw_response.create(model="short", messages=MESSAGES)
            remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0, remaining
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="short", messages=MESSAGES)
    assert e.value.status_code == 429
    assert e.value.body["code"] == "rate_limit_exceeded"
    assert "requests_per_minute" in e.value.body["message"]
    h = e.value.response.headers
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-ratelimit-limit-requests"] == "3"
    assert h["x-ratelimit-remaining-requests"] == "0"


def wait_requests(cfg: Path, key_id: str, n: int) -> dict:
    """Month-to-date usage once `n` requests are recorded (the writer thread
    lands them within milliseconds; the wait is bounded)."""
    deadline = time.monotonic() + 10
    while True:
        m = month_to_date(cfg, key_id)
        if m["requests"] >= n or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_spend_equals_the_pricing_table_to_the_micro_dollar(setup):
    gw, cfg, keys = setup
    key = keys["meter"]
    prompt = completion = 0
    with sdk(gw, key["secret"]) as c:
        for i in range(4):
            r = c.chat.completions.create(model="demo", messages=[{"role": "user", "content": "x" * (10 + 7 * i)}])
            prompt += r.usage.prompt_tokens
            completion += r.usage.completion_tokens
        for _ in range(2):
            chunks = list(
                c.chat.completions.create(
                    model="demo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
            )
            prompt += chunks[-1].usage.prompt_tokens
            completion += chunks[-1].usage.completion_tokens
        m = wait_requests(cfg, key["key_id"], 6)
        assert m["requests"] == 6
        assert (m["input_tokens"], m["output_tokens"]) == (prompt, completion)
        assert m["spend_micros"] == prompt * 1 + completion * 2

        # A stream whose client did not ask for usage is metered from the
        # provider's figures too (the gateway asked for them): exactly the
        # 5 output tokens of `short`, not an estimate.
        before = m
        list(c.chat.completions.create(model="short", messages=MESSAGES, stream=True))
        m = wait_requests(cfg, key["key_id"], 7)
        assert m["output_tokens"] - before["output_tokens"] == 5
        added_in = m["input_tokens"] - before["input_tokens"]
        assert added_in > 0
        assert m["spend_micros"] - before["spend_micros"] == added_in * 1 + 5 * 2


@pytest.mark.parametrize("alias", ["claude-cut", "bedrock-cut"])
def test_a_translated_stream_cut_by_the_upstream_is_billed_what_was_relayed(setup, alias: str):
    gw, cfg, keys = setup
    key = keys["meter"]
    before = month_to_date(cfg, key["key_id"])
    with sdk(gw, key["secret"]) as c:
        stream = c.chat.completions.create(model=alias, messages=MESSAGES, stream=True)
        text, _ = stream_text_until_error(stream)
    assert text == mocktext.text(3)
    m = wait_requests(cfg, key["key_id"], before["requests"] + 1)
    out = m["output_tokens"] - before["output_tokens"]
    added_in = m["input_tokens"] - before["input_tokens"]
    # Estimated from the text relayed (no usage came): not zero.
    assert out > 0
    assert m["spend_micros"] - before["spend_micros"] == added_in * 1 + out * 2


def test_key_created_and_revoked_while_serving(setup):
    gw, cfg, _ = setup
    key = create_key(cfg, "support-platform")
    with sdk(gw, key["secret"]) as c:
        deadline = time.monotonic() + 10
        while True:  # the gateway picks up keys.log changes within ~0.5 s
            try:
                c.chat.completions.create(model="demo", messages=MESSAGES)
                break
            except openai.AuthenticationError:
                assert time.monotonic() < deadline, "new key never accepted"
                time.sleep(0.1)
        r = keys_cli(cfg, "revoke", key["key_id"])
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10
        while True:
            try:
                c.chat.completions.create(model="demo", messages=MESSAGES)
                assert time.monotonic() < deadline, "revoked key still accepted"
                time.sleep(0.1)
            except openai.AuthenticationError:
                break


def test_two_shards_64_clients_never_exceed_100_rpm(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    path = write_config(tmp_path / "burst.yaml", policy_config(mock_upstream, shards=2))
    secret = create_key(path, "burst")["secret"]
    gw = start_gateway("burst-gateway", path, tmp_path / "burst.log", upstream_key)
    assert gw.shards == 2

    async def run() -> list[int]:
        sem = asyncio.Semaphore(64)
        async with httpx2.AsyncClient(
            base_url=gw.url,
            timeout=REQUEST_TIMEOUT,
            trust_env=False,
            limits=httpx2.Limits(max_connections=64),
            headers={"authorization": f"Bearer {secret}"},
        ) as h:

            async def one() -> int:
                async with sem:
                    r = await h.post("/v1/chat/completions", json={"model": "short", "messages": MESSAGES})
                    return r.status_code

            return await asyncio.gather(*(one() for _ in range(240)))

    try:
        fresh_minute(margin=20)
        statuses = asyncio.run(run())
    finally:
        assert gw.stop() == 0
    ok, limited = statuses.count(200), statuses.count(429)
    print(f"admitted {ok} of {len(statuses)} at 100 rpm over 2 shards")
    assert ok + limited == len(statuses), statuses
    # The documented bound is zero over the limit; quota leased to a shard
    # and unused by the window's end is the only under-admission.
    assert ok <= 100, ok
    assert ok >= 75, ok


def test_a_spent_budget_is_refused_on_every_shard_within_the_minute(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    # A budget with no request limit: a shard's lease then covers the whole
    # minute, so nothing but the owner's word tells the other shard that
    # the month's money is gone.
    cfg = policy_config(mock_upstream, shards=2)
    cfg["policies"] = [{"ai_runtime_policy": {"actor_scope": {"team": "spender"}, "budgets": {"monthly_spend_usd": 0.002}}}]
    path = write_config(tmp_path / "spent.yaml", cfg)
    secret = create_key(path, "spender")["secret"]
    gw = start_gateway("spent-gateway", path, tmp_path / "spent.log", upstream_key)
    assert gw.shards == 2

    def one() -> tuple[int, str, httpx2.Response]:
        # A connection per request, so both shards serve.
        r = httpx2.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "short", "messages": MESSAGES},
            headers={"authorization": f"Bearer {secret}", "connection": "close"},
            timeout=REQUEST_TIMEOUT,
            trust_env=False,
        )
        return r.status_code, r.headers["x-request-id"].split("-")[1], r

    try:
        fresh_minute(margin=20)
        served: set[str] = set()
        statuses: list[int] = []
        while len(served) < 2 or 429 not in statuses:
            status, shard, r = one()
            assert status in (200, 429), r.text
            assert len(statuses) < 500, "the budget was never reached"
            if status == 200:
                served.add(shard)
            statuses.append(status)
        # Both shards held a lease before the budget ran out; the refusals
        # after it are the budget's, on both, well inside the minute.
        time.sleep(0.2)
        refused_on: set[str] = set()
        for _ in range(24):
            status, shard, r = one()
            assert status == 429 and r.json()["error"]["type"] == "insufficient_quota", (shard, r.text)
            refused_on.add(shard)
        assert refused_on == {"0", "1"}
    finally:
        assert gw.stop() == 0


def test_keys_spend_and_windows_survive_kill_9(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    path = write_config(tmp_path / "crash.yaml", policy_config(mock_upstream, shards=2))
    tiny = create_key(path, "tiny")
    meter = create_key(path, "meter")
    fresh_minute(margin=15)
    gw = start_gateway("crash-gateway", path, tmp_path / "crash-1.log", upstream_key)
    with sdk(gw, tiny["secret"]) as c:
        for _ in range(3):
            c.chat.completions.create(model="short", messages=MESSAGES)
    with sdk(gw, meter["secret"]) as c:
        for _ in range(5):
            c.chat.completions.create(model="demo", messages=MESSAGES)
    before = wait_requests(path, meter["key_id"], 5)
    assert before["requests"] == 5
    time.sleep(0.5)  # owners persist changed windows every 200 ms
    gw.proc.signal(signal.SIGKILL)
    gw.proc.wait(10)

    gw = start_gateway("crash-gateway-2", path, tmp_path / "crash-2.log", upstream_key)
    try:
        assert month_to_date(path, meter["key_id"]) == before
        with sdk(gw, tiny["secret"]) as c:
            # Same minute, same window: the 3 requests before the crash count.
            with pytest.raises(openai.RateLimitError):
                c.chat.completions.create(model="short", messages=MESSAGES)
        with sdk(gw, meter["secret"]) as c:
            assert c.chat.completions.create(model="demo", messages=MESSAGES).choices
        assert wait_requests(path, meter["key_id"], 6)["requests"] == 6
    finally:
        assert gw.stop() == 0


def test_token_counts_need_a_key_and_an_allowed_model(setup):
    gw, _, keys = setup
    with sdk(gw, keys["support-platform"]["secret"]) as c:
        assert c.responses.input_tokens.count(model="demo", input="hi").input_tokens > 0
        with pytest.raises(openai.PermissionDeniedError):
            c.responses.input_tokens.count(model="local", input="hi")
    with sdk(gw, "sk-not-a-key-000000000000000000000000") as c:
        with pytest.raises(openai.AuthenticationError):
            c.responses.input_tokens.count(model="demo", input="hi")
