//! `GET /admin/usage?by=key|team|tenant&month=YYYY-MM`: requests, tokens and
//! spend per key, team or tenant in one calendar month (UTC; the current one
//! by default), from the store's usage log, which is what budgets and
//! `shardgate keys list` read. The logs are read on glommio's blocking pool.

use super::keys::{dir, fail};
use super::reply;
use crate::cli::keys::CliError;
use crate::generation::Generation;
use crate::server::{ClientConn, Outcome, Request};
use crate::store::UsageTotals;
use serde_json::json;
use shardgate_policy::Timestamp;
use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    Key,
    Team,
    Tenant,
}

/// `by` and the month's first millisecond, from the query string.
fn parse(query: &str) -> Result<(By, Timestamp, String), CliError> {
    let mut by = By::Key;
    let mut month: Option<String> = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "by" => {
                by = match v {
                    "key" => By::Key,
                    "team" => By::Team,
                    "tenant" => By::Tenant,
                    _ => {
                        return Err(CliError::BadArgs(format!(
                            "by: `{v}`: use key, team or tenant"
                        )))
                    }
                }
            }
            "month" => month = Some(v.to_owned()),
            _ => return Err(CliError::BadArgs(format!("unknown parameter `{k}`"))),
        }
    }
    let month = month.unwrap_or_else(|| {
        let rfc = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
        rfc[..7].to_owned()
    });
    let bad = || CliError::BadArgs(format!("month: `{month}`: use YYYY-MM"));
    if month.len() != 7 || month.as_bytes()[4] != b'-' {
        return Err(bad());
    }
    let start = humantime::parse_rfc3339(&format!("{month}-01T00:00:00Z")).map_err(|_| bad())?;
    let ms = start
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis() as u64;
    Ok((by, Timestamp::from_unix_ms(ms), month))
}

pub async fn usage(
    generation: &Generation,
    conn: &mut ClientConn,
    req: &Request<'_>,
    rid: &str,
) -> Outcome {
    let query = req.query();
    let (by, month, label) = match std::str::from_utf8(query)
        .map_err(|_| CliError::BadArgs("the query is not UTF-8".into()))
        .and_then(parse)
    {
        Ok(p) => p,
        Err(e) => return fail(conn, &e, rid).await,
    };
    let d = dir(generation);
    let read = glommio::executor()
        .spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((
                crate::store::read_keys(&d)?,
                crate::store::read_usage(&d)?,
            ))
        })
        .await;
    let (keys, usage) = match read {
        Ok(r) => r,
        Err(e) => return fail(conn, &CliError::Store(e), rid).await,
    };
    let mut rows: BTreeMap<String, (UsageTotals, Option<String>, Option<String>)> = BTreeMap::new();
    for k in keys.records() {
        let u = usage.in_month(&k.key_id, month);
        if u.requests == 0 && u.spend_micros == 0 {
            continue;
        }
        let name = match by {
            By::Key => k.key_id.clone(),
            By::Team => k.team.clone().unwrap_or_default(),
            By::Tenant => k.tenant.clone().unwrap_or_default(),
        };
        let row = rows
            .entry(name)
            .or_insert_with(|| (UsageTotals::default(), k.team.clone(), k.tenant.clone()));
        row.0.add(&u);
    }
    let field = match by {
        By::Key => "key_id",
        By::Team => "team",
        By::Tenant => "tenant",
    };
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(name, (u, team, tenant))| {
            let mut row = json!({
                field: if name.is_empty() { serde_json::Value::Null } else { name.into() },
                "requests": u.requests,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "spend_micros": u.spend_micros,
                "spend_usd": u.spend_micros as f64 / 1e6,
            });
            if by == By::Key {
                row["team"] = json!(team);
                row["tenant"] = json!(tenant);
            }
            row
        })
        .collect();
    reply(
        conn,
        200,
        &json!({"month": label, "by": field, "usage": rows}),
        rid,
    )
    .await
}
