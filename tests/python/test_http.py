"""Raw HTTP against the real gateway, for what the SDK hides: health
endpoints, bodies the SDK would never send, headers, the SSE bytes."""

from __future__ import annotations

import json

import httpx2

import mocktext
from conftest import CLIENT_KEY, UPSTREAM_TOKENS

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


def error_of(r: httpx2.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"], err
    assert isinstance(err.get("type"), str) and err["type"], err
    return err


def sse_data(lines) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[len("data:"):].strip() for line in lines if line.startswith("data:")]


def test_healthz(http: httpx2.Client):
    r = http.get("/healthz")
    assert r.status_code == 200
    assert r.headers.get("x-request-id")


def test_readyz(http: httpx2.Client):
    assert http.get("/readyz").status_code == 200


def test_models_endpoint_shape(http: httpx2.Client):
    r = http.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert all(m["object"] == "model" for m in body["data"])


def test_invalid_json_is_a_400(http: httpx2.Client):
    r = http.post(
        "/v1/chat/completions",
        headers={**AUTH, "content-type": "application/json"},
        content=b'{"model": "demo", "messages": [',
    )
    assert r.status_code == 400
    assert r.headers.get("x-request-id")
    assert error_of(r)["type"] == "invalid_request_error"


def test_unknown_path_is_a_json_404(http: httpx2.Client):
    r = http.get("/v1/no-such-endpoint", headers=AUTH)
    assert r.status_code == 404
    error_of(r)


def test_unknown_model_body(http: httpx2.Client):
    r = http.post("/v1/chat/completions", headers=AUTH, json={"model": "x", "messages": []})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `x` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_body_over_the_limit_is_a_413(http: httpx2.Client):
    body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]})
    r = http.post("/v1/chat/completions", headers={**AUTH, "content-type": "application/json"}, content=body)
    assert r.status_code == 413
    error_of(r)


def test_same_client_works_after_errors(http: httpx2.Client):
    # A 404 and a 400, then a success, all from one client.
    assert http.get("/v1/nope").status_code == 404
    assert http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    r = http.post("/v1/chat/completions", headers=AUTH, json={"model": "demo", "messages": []})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == mocktext.text(UPSTREAM_TOKENS)


def test_stream_bytes_end_with_done(http: httpx2.Client):
    payload = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", headers=AUTH, json=payload) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-shardgate-target"] == "up/mock-1"
        assert r.headers.get("x-request-id")
        data = sse_data(r.iter_lines())
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == mocktext.text(UPSTREAM_TOKENS)


def test_cut_stream_ends_with_an_error_event(http: httpx2.Client):
    payload = {"model": "cut", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    # The response must end cleanly (no protocol error reading it to the end).
    with http.stream("POST", "/v1/chat/completions", headers=AUTH, json=payload) as r:
        assert r.status_code == 200
        data = sse_data(r.iter_lines())
    assert "[DONE]" not in data
    last = json.loads(data[-1])
    assert set(last) == {"error"}, last
    assert last["error"]["message"]
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]]
    assert "".join(c or "" for c in contents) == mocktext.text(3)
