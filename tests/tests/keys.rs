//! `shardgate keys` as an operator uses it: create shows the secret once,
//! list never shows it (nor its hash) and adds month-to-date usage from
//! `usage.log`, revoke takes effect, and exit codes say what went wrong.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::bin;
use std::path::Path;
use std::process::{Command, Output};

fn keys(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("shardgate"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn create_list_revoke() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");

    let created = ok_json(keys(
        &dir,
        &[
            "create",
            "--team",
            "ml",
            "--tenant",
            "acme",
            "--app",
            "chat",
            "--env",
            "prod",
            "--expires",
            "30d",
            "--json",
        ],
    ));
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sg-") && secret.len() == 35, "{secret}");
    assert!(secret.starts_with(&key_id) && key_id.len() == 11);
    assert!(created["warning"].as_str().unwrap().contains("shown once"));
    assert!(created["expires"].is_string());

    // Text output of create: the secret once, and the warning on stderr.
    let out = keys(&dir, &["create", "--team", "ml", "--tenant", "beta"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("secret:  sg-"));
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(warning.contains("shown once"));
    assert!(warning.ends_with('\n'), "stderr ends its line: {warning:?}");

    // The secret is stored nowhere.
    for f in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&secret));
    }

    let list = ok_json(keys(&dir, &["list", "--json"]));
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let row = rows
        .iter()
        .find(|r| r["key_id"] == key_id.as_str())
        .unwrap();
    assert_eq!(row["team"], "ml");
    assert_eq!(row["tenant"], "acme");
    assert_eq!(row["app"], "chat");
    assert_eq!(row["environment"], "prod");
    assert_eq!(row["revoked"], false);
    assert_eq!(row["status"], "active");
    assert_eq!(row["month_to_date"]["spend_micros"], 0);
    let text = list.to_string();
    assert!(!text.contains(&secret[11..]), "no secret in list");
    assert!(!text.contains("hash"), "no hash in list");

    let table = keys(&dir, &["list"]);
    assert!(table.status.success());
    let table = stdout(&table);
    assert!(
        table.contains(&key_id) && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(&secret[11..]));

    let out = keys(&dir, &["revoke", &key_id]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("revoked"));
    // Again: still fine, says so.
    let out = keys(&dir, &["revoke", &key_id]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("already"));

    let list = ok_json(keys(&dir, &["list", "--json"]));
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["revoked"], true);
    assert_eq!(row["status"], "revoked");
}

#[test]
fn exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Nothing there yet: an empty list, not an error.
    assert_eq!(
        ok_json(keys(&dir, &["list", "--json"])),
        serde_json::json!([])
    );
    assert_eq!(
        keys(&dir, &["revoke", "sg-nothere0"]).status.code(),
        Some(1)
    );
    // An expiry in the past, or not a date.
    for expires in ["2001-01-01", "soon"] {
        let args = [
            "create",
            "--team",
            "a",
            "--tenant",
            "b",
            "--expires",
            expires,
        ];
        assert_eq!(keys(&dir, &args).status.code(), Some(2), "{expires}");
    }
    // No team is fine (a gateway for one team need not name it); an empty
    // one is not.
    assert_eq!(
        keys(&dir, &["create", "--team", "", "--tenant", "b"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(keys(&dir, &["frobnicate"]).status.code(), Some(2));
    ok_json(keys(
        &dir,
        &["create", "--team", "a", "--tenant", "b", "--json"],
    ));
    assert_eq!(
        keys(&dir, &["revoke", "sg-nothere0"]).status.code(),
        Some(1)
    );
}

#[test]
fn data_dir_from_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("from-config");
    let cfg = tmp.path().join("gw.yaml");
    // The providers' secrets are not needed to manage keys.
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\nproviders: {{ o: {{ kind: openai, base_url: 'https://x/v1', api_key: '${{SG_KEYS_TEST_UNSET}}' }} }}\nmodels: {{ m: {{ targets: [ {{ provider: o, model: m }} ] }} }}\nstore: {{ dir: '{}' }}\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin("shardgate"))
        .args([
            "keys", "create", "--team", "t", "--tenant", "x", "--json", "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let created = ok_json(out);
    let list = ok_json(keys(&dir, &["list", "--json"]));
    assert_eq!(list[0]["key_id"], created["key_id"]);

    std::fs::write(&cfg, "store: { fsync: sometimes }\n").unwrap();
    let out = Command::new(bin("shardgate"))
        .args(["keys", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.fsync"));
}

/// Days since 1970-01-01 (Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One frame as the gateway's writer writes it: length and CRC-32 (of the
/// length bytes and the payload), both little-endian, then JSON.
fn frame(payload: &serde_json::Value) -> Vec<u8> {
    let body = payload.to_string().into_bytes();
    let len = (body.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&body);
    let mut out = len.to_vec();
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn list_shows_month_to_date_usage_from_the_usage_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let created = ok_json(keys(
        &dir,
        &["create", "--team", "t", "--tenant", "x", "--json"],
    ));
    let key_id = created["key_id"].as_str().unwrap();
    // The month of `created` (YYYY-MM-...), as the gateway would record it.
    let date = created["created"].as_str().unwrap();
    let (y, m) = (date[0..4].parse().unwrap(), date[5..7].parse().unwrap());
    let month = days_from_civil(y, m, 1) * 86_400_000;
    let prev = days_from_civil(
        if m == 1 { y - 1 } else { y },
        if m == 1 { 12 } else { m - 1 },
        1,
    ) * 86_400_000;
    let usage = |month: i64, spend: u64| {
        frame(&serde_json::json!({
            "t": "usage", "key_id": key_id, "month_start_ms": month,
            "requests": 1, "input_tokens": 100, "output_tokens": 20, "spend_micros": spend
        }))
    };
    let mut log = Vec::new();
    log.extend(usage(prev, 9_000_000));
    log.extend(usage(month, 1_250_000));
    log.extend(usage(month, 250_000));
    log.extend(&usage(month, 7)[..10]); // a torn tail: ignored, and left alone
    std::fs::write(dir.join("usage.log"), &log).unwrap();

    let list = ok_json(keys(&dir, &["list", "--json"]));
    let mtd = &list[0]["month_to_date"];
    assert_eq!(mtd["requests"], 2);
    assert_eq!(mtd["input_tokens"], 200);
    assert_eq!(mtd["output_tokens"], 40);
    assert_eq!(mtd["spend_micros"], 1_500_000);
    assert_eq!(mtd["spend_usd"], "1.5");
    assert_eq!(std::fs::read(dir.join("usage.log")).unwrap(), log);

    let table = stdout(&keys(&dir, &["list"]));
    assert!(table.contains("1.5") && table.contains("240"), "{table}");
}
