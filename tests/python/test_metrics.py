"""`/metrics` as Prometheus reads it: parsed by `prometheus_client`'s text
parser, its counters and histogram counts equal the requests the test
sent, by alias, provider, status and team, with tokens and cost by model
and team, and the OpenTelemetry GenAI server histograms."""

from __future__ import annotations

from pathlib import Path

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import GATEWAY_LINE, REQUEST_TIMEOUT, Upstream, create_key, gateway_config, start_gateway, write_config

TOKEN = "metrics-admin-token-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
# $1 per million input tokens, $2 per million output: 1 and 2 micro-dollars a token.
PRICING = [{"model": "mock-*", "input_per_million_usd": 1, "output_per_million_usd": 2}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    cfg = gateway_config(mock_upstream)
    del cfg["auth"]
    del cfg["listen"]
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    cfg["admin"] = {"token": TOKEN}
    cfg["pricing"] = PRICING
    path = write_config(tmp_path_factory.mktemp("metrics") / "gateway.yaml", cfg)
    gw = start_gateway("gateway-metrics", path, logs_dir / "gateway-metrics.log", upstream_key)
    m = gw.proc.wait_line(GATEWAY_LINE)
    yield gw, f"http://{m.group(1)}:{m.group(2)}", path
    assert gw.stop() == 0


def scrape(admin: str) -> dict[tuple[str, frozenset], float]:
    r = httpx2.get(f"{admin}/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_and_histograms_equal_the_requests_sent(setup):
    gw, admin, path = setup
    key = create_key(path, "ml")
    c = openai.OpenAI(api_key=key["secret"], base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                      http_client=httpx2.Client(trust_env=False))
    tokens_in = tokens_out = 0
    for _ in range(3):
        u = c.chat.completions.create(model="demo", messages=MESSAGES).usage
        tokens_in, tokens_out = tokens_in + u.prompt_tokens, tokens_out + u.completion_tokens
    for _ in range(2):
        chunks = list(c.chat.completions.create(model="demo", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}))
        u = chunks[-1].usage
        tokens_in, tokens_out = tokens_in + u.prompt_tokens, tokens_out + u.completion_tokens
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=MESSAGES)

    s = scrape(admin)
    assert value(s, "shardgate_model_requests_total", alias="demo", provider="up", status="200", team="ml") == 5
    # An unknown model never reached a route: no alias series for it.
    assert not any(n == "shardgate_model_requests_total" and ("alias", "no-such-model") in l for n, l in s)
    assert value(s, "shardgate_requests_total", endpoint="/v1/chat/completions", code="200") == 5
    assert value(s, "shardgate_requests_total", endpoint="/v1/chat/completions", code="404") == 1
    assert value(s, "shardgate_tokens_total", model="mock-1", team="ml", type="input") == tokens_in
    assert value(s, "shardgate_tokens_total", model="mock-1", team="ml", type="output") == tokens_out
    assert value(s, "shardgate_cost_micros_total", model="mock-1", team="ml") == tokens_in * 1 + tokens_out * 2
    # The team's spend is the same charge, summed over its models.
    assert value(s, "shardgate_spend_micros_total", team="ml") == tokens_in * 1 + tokens_out * 2
    genai = dict(gen_ai_operation_name="chat", gen_ai_provider_name="up", gen_ai_request_model="demo",
                 gen_ai_response_model="mock-1")
    for name in ("gen_ai_server_request_duration_seconds", "gen_ai_server_time_to_first_token_seconds",
                 "gen_ai_server_time_per_output_token_seconds"):
        assert value(s, name + "_count", **genai) == 5, name
        assert value(s, name + "_bucket", **genai, le="+Inf") == 5, name
    assert value(s, "shardgate_gateway_overhead_seconds_count") == 5
    # One gauge per serving shard, and none counts the scrape: the admin
    # listener is served by the ops executor, apart from client traffic.
    in_flight = {dict(l)["shard"]: v for (n, l), v in s.items() if n == "shardgate_requests_in_flight"}
    assert sorted(in_flight) == ["0", "1"] and sum(in_flight.values()) == 0, in_flight
