"""`shardgate check` and `shardgate serve` on good and bad config files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import UPSTREAM_KEY_ENV, Upstream, binary, gateway_config, write_config


def run_shardgate(*args: str, env_extra: dict | None = None, drop_env: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    env.update(env_extra or {})
    return subprocess.run(
        [str(binary("shardgate")), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def test_check_accepts_the_test_config(tmp_path: Path, mock_upstream: Upstream):
    cfg = write_config(tmp_path / "ok.yaml", gateway_config(mock_upstream))
    r = run_shardgate("check", "--config", str(cfg), env_extra={UPSTREAM_KEY_ENV: "k"})
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def _broken(cfg: dict, how: str) -> dict:
    if how == "unknown provider":
        cfg["models"]["ghost"] = {"targets": [{"provider": "nowhere", "model": "m"}]}
    elif how == "zero shards":
        cfg["shards"] = 0
    elif how == "bad base_url":
        cfg["providers"]["up"]["base_url"] = "ftp://127.0.0.1/v1"
    elif how == "unknown field":
        cfg["limits"]["max_bodyy_bytes"] = "1MiB"
    elif how == "bad size":
        cfg["limits"]["max_body_bytes"] = "lots"
    elif how == "bad guardrail regex":
        cfg["guardrails"] = [{"name": "codes", "regex": ["(unclosed"]}]
    elif how == "unknown guardrail":
        cfg["guardrails"] = [{"name": "codes", "regex": ["x"]}]
        cfg["policies"] = [{"ai_runtime_policy": {"name": "p", "actor_scope": {}, "guardrails": {"input": ["nope"]}}}]
    elif how == "unknown pii kind":
        cfg["guardrails"] = [{"name": "pii", "pii": ["passport"]}]
    return cfg


@pytest.mark.parametrize(
    "how, field",
    [
        ("unknown provider", "models.ghost.targets[0].provider"),
        ("zero shards", "shards"),
        ("bad base_url", "providers.up.base_url"),
        ("unknown field", "max_bodyy_bytes"),
        ("bad size", "limits.max_body_bytes"),
        ("bad guardrail regex", "guardrails: guardrail `codes`: regex"),
        ("unknown guardrail", "p: guardrails.input names `nope`"),
        ("unknown pii kind", "guardrails"),
    ],
)
def test_check_rejects_bad_config_naming_the_field(tmp_path: Path, mock_upstream: Upstream, how: str, field: str):
    cfg = write_config(tmp_path / "bad.yaml", _broken(gateway_config(mock_upstream), how))
    r = run_shardgate("check", "--config", str(cfg), env_extra={UPSTREAM_KEY_ENV: "k"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert field in r.stderr


def test_missing_secret_env_var_is_a_config_error(tmp_path: Path, mock_upstream: Upstream):
    cfg = write_config(tmp_path / "nokey.yaml", gateway_config(mock_upstream))
    r = run_shardgate("check", "--config", str(cfg), drop_env=(UPSTREAM_KEY_ENV,))
    assert r.returncode == 2, (r.stdout, r.stderr)
    # Providers are checked in name order; the first using the variable is named.
    assert "providers.anthropic.api_key: environment variable" in r.stderr
    assert UPSTREAM_KEY_ENV in r.stderr


def test_serve_refuses_bad_config(tmp_path: Path, mock_upstream: Upstream):
    cfg = write_config(tmp_path / "bad.yaml", _broken(gateway_config(mock_upstream), "zero shards"))
    r = run_shardgate("serve", "--config", str(cfg), "--no-pin", env_extra={UPSTREAM_KEY_ENV: "k"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "shards" in r.stderr
    assert "listening" not in r.stdout


def test_secret_value_never_reaches_the_output(tmp_path: Path, mock_upstream: Upstream):
    secret = "sk-super-secret-value-123"
    cfg = _broken(gateway_config(mock_upstream), "unknown provider")
    cfg["providers"]["up"]["api_key"] = secret  # a literal, in a config that fails
    path = write_config(tmp_path / "lit.yaml", cfg)
    r = run_shardgate("check", "--config", str(path))
    assert r.returncode == 2
    assert secret not in r.stdout + r.stderr


def test_a_key_needs_no_team_or_tenant(tmp_path: Path):
    """A gateway for one team should not make its operator invent one."""
    import json

    r = run_shardgate("keys", "create", "--json", "--data-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["secret"].startswith("sg-") and made["team"] is None and made["tenant"] is None
    r = run_shardgate("keys", "list", "--data-dir", str(tmp_path))
    assert r.returncode == 0 and made["key_id"] in r.stdout
    r = run_shardgate("keys", "create", "--team", "", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "--team" in r.stderr


def test_json_logs_are_one_object_per_line_without_secrets(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    """`--log-format json` (or SHARDGATE_LOG_FORMAT=json): every line a log
    shipper reads is a JSON object with a level and a message, and the
    provider key is in none of them."""
    import json
    import signal
    import time

    cfg = gateway_config(mock_upstream)
    cfg["models"]["broken"] = {"targets": [{"provider": "up", "model": "mock-500"}]}
    path = write_config(tmp_path / "gw.yaml", cfg)
    for args, env in ((["--log-format", "json"], {}), ([], {"SHARDGATE_LOG_FORMAT": "json"})):
        env = {**os.environ, UPSTREAM_KEY_ENV: upstream_key, **env}
        p = subprocess.Popen([str(binary("shardgate")), *args, "serve", "--config", str(path), "--no-pin"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = p.stdout.readline()
            assert "listening on" in line, line
            port = int(line.split(":")[1].split()[0])
            import httpx2
            r = httpx2.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                            json={"model": "broken", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
            assert r.status_code == 500
            time.sleep(0.2)
        finally:
            p.send_signal(signal.SIGTERM)
            _, err = p.communicate(timeout=30)
        lines = [l for l in err.splitlines() if l.strip()]
        assert len(lines) >= 2, err
        for l in lines:
            obj = json.loads(l)
            assert obj["level"] in ("ERROR", "WARN", "INFO", "DEBUG", "TRACE") and obj["msg"] and obj["ts"]
        assert any("upstream_status" in json.loads(l)["msg"] for l in lines), err
        assert upstream_key not in err
