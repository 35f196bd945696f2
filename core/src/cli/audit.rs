//! `shardgate audit verify | tail | query`: reading the audit log, while
//! the gateway runs or not. A torn last line (a crash mid-write) is
//! tolerated and reported, never taken for tampering.

use crate::audit::chain::{self, Chain, GENESIS};
use crate::audit::writer::{key_for, rotated_files, CURRENT};
use crate::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
    /// Read `audit.dir` (and `audit.key`) from this gateway config.
    #[arg(long, short, global = true, conflicts_with = "dir")]
    pub config: Option<PathBuf>,
    /// The audit directory (its key is read from `audit.key` there).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Checks every line's MAC and the chain across files; names the first
    /// file and line that was edited, removed, inserted or reordered.
    Verify,
    /// Prints the last lines of the current file.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Prints the events that match, oldest first.
    Query {
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// `request`, `tool_call`, `admin`.
        #[arg(long)]
        kind: Option<String>,
        /// `allow`, `deny` (any refusal), or an exact decision
        /// (`deny_auth`, `deny_policy`, `deny_budget`, `refused`, ...).
        #[arg(long)]
        decision: Option<String>,
        /// Only events of the last DURATION (`1h`, `30m`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Print whole JSON lines (default: a short line per event).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
    /// The chain is broken: tampering, or files from elsewhere.
    #[error("{0}")]
    Broken(String),
}

impl AuditCliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AuditCliError::Usage(_) => 2,
            AuditCliError::Io(_) | AuditCliError::Broken(_) => 1,
        }
    }
}

pub fn run(args: AuditArgs) -> Result<(), AuditCliError> {
    let (dir, key) = match (&args.config, &args.dir) {
        (Some(c), _) => {
            let audit = Config::load_audit(c)
                .map_err(|e| AuditCliError::Usage(format!("{}: {e}", c.display())))?;
            let Some(a) = audit else {
                return Err(AuditCliError::Usage(format!(
                    "{}: no `audit:` section",
                    c.display()
                )));
            };
            let key = a.key.as_ref().map(|k| k.expose().to_owned());
            (a.dir, key)
        }
        (None, Some(d)) => (d.clone(), None),
        (None, None) => {
            return Err(AuditCliError::Usage(
                "give --config FILE or --dir DIR".into(),
            ))
        }
    };
    match args.command {
        AuditCommand::Verify => verify(&dir, key.as_deref()),
        AuditCommand::Tail { lines } => tail(&dir, lines),
        AuditCommand::Query {
            team,
            key: key_id,
            kind,
            decision,
            since,
            json,
        } => query(
            &dir,
            &Filter {
                team,
                key_id,
                kind,
                decision,
                since,
            },
            json,
        ),
    }
}

/// Every file of the log, oldest first.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v = rotated_files(dir);
    let current = dir.join(CURRENT);
    if current.exists() {
        v.push(current);
    }
    v
}

fn read(path: &Path) -> Result<Vec<u8>, AuditCliError> {
    std::fs::read(path).map_err(|e| AuditCliError::Io(format!("{}: {e}", path.display())))
}

/// Splits a file into whole lines and reports a torn tail.
fn lines(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = bytes[..whole]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    (lines, whole < bytes.len())
}

/// Verifies the chain. The log may be live: a rotation while it is read
/// (the current file renamed, a new one started, the oldest removed past
/// `keep_files`) makes what was listed no longer one chain, so a failure
/// with the rotated files changed underneath is read again, from a new
/// listing.
pub(crate) fn verify(dir: &Path, configured: Option<&str>) -> Result<(), AuditCliError> {
    let key = key_for(dir, configured)
        .map_err(|e| AuditCliError::Io(format!("the audit key in {}: {e}", dir.display())))?;
    for _ in 0..5 {
        let listed = rotated_files(dir);
        match verify_once(dir, &key) {
            Err(_) if rotated_files(dir) != listed => continue,
            done => return done,
        }
    }
    verify_once(dir, &key)
}

fn verify_once(dir: &Path, key: &[u8]) -> Result<(), AuditCliError> {
    let files = files(dir);
    if files.is_empty() {
        return Err(AuditCliError::Io(format!(
            "no audit log in {}",
            dir.display()
        )));
    }
    let mut chain = Chain::new(key, GENESIS);
    let mut total = 0usize;
    let last = files.len() - 1;
    for (fi, path) in files.iter().enumerate() {
        let bytes = read(path)?;
        let (lines, torn) = lines(&bytes);
        let name = path.display();
        for (li, line) in lines.iter().enumerate() {
            if li == 0 {
                let prev = serde_json::from_slice::<Value>(line)
                    .ok()
                    .filter(|v| v["kind"] == "file_start")
                    .and_then(|v| v["prev"].as_str().and_then(|p| chain::unhex(p.as_bytes())));
                let Some(prev) = prev else {
                    return Err(AuditCliError::Broken(format!(
                        "{name}: line 1 is not the file's start (lines removed at the head?)"
                    )));
                };
                if fi > 0 && prev != chain.prev() {
                    return Err(AuditCliError::Broken(format!(
                        "{name}: line 1 does not continue the previous file (a file removed or replaced?)"
                    )));
                }
                chain.restart_at(prev);
            }
            if let Err(why) = chain.check(line) {
                return Err(AuditCliError::Broken(format!(
                    "{name}: line {}: {why}",
                    li + 1
                )));
            }
            total += 1;
        }
        if torn {
            if fi == last {
                println!("{name}: a torn last line (an unfinished write) was ignored");
            } else {
                return Err(AuditCliError::Broken(format!(
                    "{name}: ends in a partial line"
                )));
            }
        }
    }
    println!(
        "ok: {total} lines in {} file(s), the chain is whole",
        files.len()
    );
    Ok(())
}

fn tail(dir: &Path, n: usize) -> Result<(), AuditCliError> {
    let bytes = read(&dir.join(CURRENT))?;
    let (lines, _) = lines(&bytes);
    for l in &lines[lines.len().saturating_sub(n)..] {
        println!("{}", String::from_utf8_lossy(l));
    }
    Ok(())
}

struct Filter {
    team: Option<String>,
    key_id: Option<String>,
    kind: Option<String>,
    decision: Option<String>,
    since: Option<std::time::Duration>,
}

impl Filter {
    fn matches(&self, v: &Value, since: Option<std::time::SystemTime>) -> bool {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str);
        if let Some(t) = &self.team {
            if s("/actor/team") != Some(t) {
                return false;
            }
        }
        if let Some(k) = &self.key_id {
            if s("/actor/key_id") != Some(k) {
                return false;
            }
        }
        if let Some(k) = &self.kind {
            if s("/kind") != Some(k) {
                return false;
            }
        }
        if let Some(d) = &self.decision {
            let got = s("/decision").unwrap_or("");
            let ok = match d.as_str() {
                "deny" => {
                    got.starts_with("deny")
                        || matches!(got, "refused" | "stripped" | "rate_limited")
                }
                "allow" => matches!(got, "allow" | "allowed"),
                exact => got == exact,
            };
            if !ok {
                return false;
            }
        }
        if let Some(since) = since {
            let t = s("/time").and_then(|t| humantime::parse_rfc3339(t).ok());
            if t.is_none_or(|t| t < since) {
                return false;
            }
        }
        true
    }
}

fn query(dir: &Path, f: &Filter, json: bool) -> Result<(), AuditCliError> {
    let since = f
        .since
        .and_then(|d| std::time::SystemTime::now().checked_sub(d));
    for path in files(dir) {
        let bytes = read(&path)?;
        let (lines, _) = lines(&bytes);
        for l in lines {
            let Ok(v) = serde_json::from_slice::<Value>(l) else {
                continue;
            };
            if v["kind"] == "file_start" || !f.matches(&v, since) {
                continue;
            }
            if json {
                println!("{}", String::from_utf8_lossy(l));
            } else {
                let s = |p: &str| {
                    v.pointer(p).map_or_else(
                        || "-".to_owned(),
                        |x| x.as_str().map_or_else(|| x.to_string(), str::to_owned),
                    )
                };
                println!(
                    "{} {} {} key={} team={} status={} decision={} model={} tool={}",
                    s("/time"),
                    s("/kind"),
                    s("/request_id"),
                    s("/actor/key_id"),
                    s("/actor/team"),
                    s("/status"),
                    s("/decision"),
                    s("/model"),
                    s("/tool"),
                );
            }
        }
    }
    Ok(())
}
