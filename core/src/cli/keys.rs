//! `shardgate keys create | revoke | list`: manage virtual API keys in the
//! data directory's `keys.log`, offline or while a gateway runs (it picks
//! changes up within a second).
//!
//! A new key's secret is printed once and never stored: `keys.log` keeps
//! its SHA-256 only. `list` never prints hashes or secrets; it adds each
//! key's month-to-date usage from `usage.log`, read without changing it.
//!
//! Exit codes ([`CliError::exit_code`]): 0 ok, 1 not found or IO, 2 bad
//! arguments or config.

use crate::config::{Config, ConfigError, StoreConfig};
use crate::store::{read_keys, read_usage, DataDir, KeyLogRecord, KeysEditor, StoreError};
use shardgate_policy::{issue_key, IssuedKey, KeyOwner, KeyRecord, Timestamp, Usd};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
    /// Read `store.dir` from this gateway config.
    #[arg(long, short, global = true, conflicts_with = "data_dir")]
    pub config: Option<PathBuf>,
    /// The data directory (default: the config's `store.dir`, else
    /// ./shardgate-data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Issue a key; its secret is printed once and not stored.
    Create {
        /// Optional: a gateway for one team need not name one.
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        app: Option<String>,
        #[arg(long = "env")]
        environment: Option<String>,
        /// How long it is valid (`30d`, `12h`) or until when (RFC 3339,
        /// `2027-01-31T00:00:00Z`, or a date `2027-01-31`, UTC).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Revoke a key by its id (`sg-` + 8 characters).
    Revoke { key_id: String },
    /// List keys with their month-to-date usage.
    List,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    BadArgs(String),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot read randomness from the OS: {0}")]
    Random(getrandom::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BadArgs(_) | CliError::Config(_) => 2,
            CliError::NotFound(_) | CliError::Store(_) | CliError::Random(_) => 1,
        }
    }
}

/// Runs one `keys` command, printing to stdout.
pub fn run(args: KeysArgs) -> Result<(), CliError> {
    let store = match (&args.config, &args.data_dir) {
        (Some(c), _) => Config::load_store(c)?,
        (None, Some(d)) => StoreConfig {
            dir: d.clone(),
            ..StoreConfig::default()
        },
        (None, None) => StoreConfig::default(),
    };
    let dir = DataDir::new(store.dir);
    let now = now();
    match args.command {
        KeysCommand::Create {
            team,
            tenant,
            app,
            environment,
            expires,
        } => {
            let owner = KeyOwner {
                team: team.map(|t| non_empty("--team", t)).transpose()?,
                tenant: tenant.map(|t| non_empty("--tenant", t)).transpose()?,
                app: app.map(|a| non_empty("--app", a)).transpose()?,
                environment: environment.map(|e| non_empty("--env", e)).transpose()?,
            };
            let expires = expires.map(|e| parse_expires(&e, now)).transpose()?;
            create(&dir, owner, now, expires, args.json)
        }
        KeysCommand::Revoke { key_id } => revoke(&dir, &key_id, now, args.json),
        KeysCommand::List => list(&dir, now, args.json),
    }
}

pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_unix_ms(ms)
}

fn non_empty(flag: &str, v: String) -> Result<String, CliError> {
    let t = v.trim();
    if t.is_empty() {
        return Err(CliError::BadArgs(format!("{flag} is empty")));
    }
    Ok(t.to_owned())
}

/// `30d`-style durations from `now`, or an RFC 3339 instant (a bare date
/// means its midnight UTC). Must be in the future.
pub fn parse_expires(s: &str, now: Timestamp) -> Result<Timestamp, CliError> {
    let s = s.trim();
    let at = if let Ok(d) = humantime::parse_duration(s) {
        now.plus_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    } else {
        let full = if s.len() == 10 {
            format!("{s}T00:00:00Z")
        } else {
            s.to_owned()
        };
        let t = humantime::parse_rfc3339_weak(&full).map_err(|_| {
            CliError::BadArgs(format!(
                "--expires `{s}`: use a duration like 30d or a time like 2027-01-31T00:00:00Z"
            ))
        })?;
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp::from_unix_ms(u64::try_from(ms.as_millis()).unwrap_or(u64::MAX))
    };
    if at <= now {
        return Err(CliError::BadArgs(format!(
            "--expires `{s}` is not in the future"
        )));
    }
    Ok(at)
}

pub fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Issues a key into `keys.log` (under its lock): the key, and every key
/// the log now holds. The CLI and the admin API both issue keys here.
pub fn issue(
    dir: &DataDir,
    owner: KeyOwner,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(IssuedKey, Vec<KeyRecord>), CliError> {
    let mut editor = KeysEditor::open(dir.clone())?;
    let mut issued = None;
    // A clash of 8-character key ids is rare (62^8); draw again if it happens.
    for _ in 0..8 {
        let mut random = [0u8; 32];
        getrandom::getrandom(&mut random).map_err(CliError::Random)?;
        let k = issue_key(&random, owner.clone(), now, expires);
        if editor.table().get(&k.record.key_id).is_none() {
            issued = Some(k);
            break;
        }
    }
    let Some(issued) = issued else {
        return Err(CliError::NotFound("no free key id after 8 draws".into()));
    };
    editor.append(&KeyLogRecord::KeyPut {
        key: issued.record.clone(),
    })?;
    Ok((issued, editor.table().records()))
}

/// Revokes `key_id` in `keys.log`: whether it already was, and every key
/// the log now holds.
pub fn revoke_key(
    dir: &DataDir,
    key_id: &str,
    now: Timestamp,
) -> Result<(bool, Vec<KeyRecord>), CliError> {
    if !dir.keys_log().exists() {
        return Err(CliError::NotFound(format!("no key `{key_id}`")));
    }
    let mut editor = KeysEditor::open(dir.clone())?;
    let already = match editor.table().get(key_id) {
        None => return Err(CliError::NotFound(format!("no key `{key_id}`"))),
        Some(k) => k.revoked,
    };
    if !already {
        editor.append(&KeyLogRecord::KeyRevoked {
            key_id: key_id.to_owned(),
            at_ms: now.as_unix_ms(),
        })?;
    }
    Ok((already, editor.table().records()))
}

fn create(
    dir: &DataDir,
    owner: KeyOwner,
    now: Timestamp,
    expires: Option<Timestamp>,
    json: bool,
) -> Result<(), CliError> {
    let (issued, _) = issue(dir, owner, now, expires)?;
    let r = &issued.record;
    const WARNING: &str = "This secret is shown once and is not stored; keep it now.";
    if json {
        let v = serde_json::json!({
            "key_id": r.key_id,
            "secret": issued.secret,
            "team": r.team,
            "tenant": r.tenant,
            "app": r.app,
            "environment": r.environment,
            "created": rfc3339(r.created_ms),
            "expires": r.expires_ms.map(rfc3339),
            "warning": WARNING,
        });
        println!("{v}");
    } else {
        println!("key id:  {}", r.key_id);
        println!("secret:  {}", issued.secret);
        println!(
            "owner:   team={} tenant={} app={} env={}",
            dash(&r.team),
            dash(&r.tenant),
            dash(&r.app),
            dash(&r.environment)
        );
        println!(
            "expires: {}",
            r.expires_ms.map_or_else(|| "never".to_owned(), rfc3339)
        );
        eprintln!("{WARNING}");
    }
    Ok(())
}

fn revoke(dir: &DataDir, key_id: &str, now: Timestamp, json: bool) -> Result<(), CliError> {
    let (already, _) = revoke_key(dir, key_id, now)?;
    if json {
        let v = serde_json::json!({"key_id": key_id, "revoked": true, "already_revoked": already});
        println!("{v}");
    } else if already {
        println!("{key_id} was already revoked");
    } else {
        println!("revoked {key_id}");
    }
    Ok(())
}

pub fn status(k: &KeyRecord, now: Timestamp) -> &'static str {
    if k.revoked {
        "revoked"
    } else if k.is_live(now) {
        "active"
    } else {
        "expired"
    }
}

fn dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn list(dir: &DataDir, now: Timestamp, json: bool) -> Result<(), CliError> {
    let keys = read_keys(dir)?.records();
    let usage = read_usage(dir)?;
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                let m = usage.month_to_date(&k.key_id, now);
                serde_json::json!({
                    "key_id": k.key_id,
                    "team": k.team,
                    "tenant": k.tenant,
                    "app": k.app,
                    "environment": k.environment,
                    "created": rfc3339(k.created_ms),
                    "expires": k.expires_ms.map(rfc3339),
                    "revoked": k.revoked,
                    "status": status(k, now),
                    "month_to_date": {
                        "requests": m.requests,
                        "input_tokens": m.input_tokens,
                        "output_tokens": m.output_tokens,
                        "spend_micros": m.spend_micros,
                        "spend_usd": Usd(m.spend_micros).to_string(),
                    },
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys in {}", dir.root().display());
        return Ok(());
    }
    let mut rows = vec![[
        "KEY ID",
        "TEAM",
        "TENANT",
        "APP",
        "ENV",
        "CREATED",
        "EXPIRES",
        "STATUS",
        "SPEND MTD ($)",
        "TOKENS MTD",
        "REQUESTS MTD",
    ]
    .map(str::to_owned)];
    for k in &keys {
        let m = usage.month_to_date(&k.key_id, now);
        rows.push([
            k.key_id.clone(),
            dash(&k.team).to_owned(),
            dash(&k.tenant).to_owned(),
            dash(&k.app).to_owned(),
            dash(&k.environment).to_owned(),
            rfc3339(k.created_ms),
            k.expires_ms.map_or_else(|| "never".to_owned(), rfc3339),
            status(k, now).to_owned(),
            Usd(m.spend_micros).to_string(),
            m.tokens().to_string(),
            m.requests.to_string(),
        ]);
    }
    let mut widths = [0usize; 11];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_795_500_000_000); // 2026-11-24T06:00:00Z

    #[test]
    fn expires_forms() {
        assert_eq!(
            parse_expires("30d", NOW).unwrap(),
            NOW.plus_ms(30 * 86_400_000)
        );
        assert_eq!(
            parse_expires("2027-01-31T00:00:00Z", NOW).unwrap(),
            Timestamp(1_801_353_600_000)
        );
        assert_eq!(
            parse_expires("2027-01-31", NOW).unwrap(),
            Timestamp(1_801_353_600_000)
        );
        for bad in ["soon", "2020-01-01", "0s", "31/01/2027"] {
            let e = parse_expires(bad, NOW).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(NOW.0), "2026-11-24T06:00:00Z");
    }
}
