//! The connection to the cluster store (Redis), used only from the node
//! thread: blocking calls with a timeout on each, so a slow or lost store
//! costs the node thread at most that long and never a shard.

use super::scripts;
use crate::config::cluster::RedisConfig;
use crate::config::cluster::RedisMode;
use redis::cluster::ClusterConnection;
use redis::{Cmd, Connection, ConnectionLike, RedisResult, Script, Value};
use shardgate_policy::{Limits, Quota};

/// A grant as the store made it, in the store's clock.
#[derive(Debug, Clone, Copy)]
pub struct StoreGrant {
    pub got: Quota,
    /// The store's time when it granted (ms since the epoch).
    pub now_ms: u64,
    pub minute_start: u64,
    pub month_spend: u64,
    /// What the window has left after the grant (`u64::MAX`: no limit).
    pub left: Quota,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    pub now_ms: u64,
    pub live_nodes: u64,
    /// The store still had this node's marker: it kept what the node
    /// counted in it.
    pub kept_state: bool,
}

pub struct Store {
    con: Conn,
    prefix: String,
    node: String,
    grant: Script,
    release: Script,
    usage: Script,
    restore: Script,
    heartbeat: Script,
    /// Store calls made, for the metrics.
    pub calls: u64,
}

/// Tokens asked for at most per call (Lua numbers are doubles).
const MAX_ASK: u64 = 1 << 50;

fn limit_arg(l: Option<u64>) -> i64 {
    l.map_or(-1, |l| l.min(MAX_ASK) as i64)
}

fn left(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// One Redis, or a Redis Cluster (whose client follows each key to its
/// slot: a scope's keys share a hash tag, so each script runs on one node).
pub enum Conn {
    One(Connection),
    Cluster(Box<ClusterConnection>),
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::One(c) => c.req_command(cmd),
            Conn::Cluster(c) => c.req_command(cmd),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
    fn check_connection(&mut self) -> bool {
        match self {
            Conn::One(c) => c.check_connection(),
            Conn::Cluster(c) => c.check_connection(),
        }
    }
    fn is_open(&self) -> bool {
        match self {
            Conn::One(c) => c.is_open(),
            Conn::Cluster(c) => c.is_open(),
        }
    }
}

/// The store connection `cfg` describes.
pub(crate) fn connect(cfg: &RedisConfig) -> RedisResult<Conn> {
    match cfg.mode {
        RedisMode::Standalone => open(cfg).map(Conn::One),
        RedisMode::Cluster => {
            let mut b = redis::cluster::ClusterClient::builder(vec![cfg.url.expose()])
                .connection_timeout(cfg.timeout)
                .response_timeout(cfg.timeout);
            if let Some(p) = &cfg.password {
                b = b.password(p.expose());
            }
            let c = b.build()?.get_connection()?;
            Ok(Conn::Cluster(Box::new(c)))
        }
    }
}

/// A connection to one Redis (in cluster mode, the seed node: enough for
/// pub/sub, which a cluster relays to every node) with `cfg`'s password and
/// timeouts.
pub fn open(cfg: &RedisConfig) -> redis::RedisResult<Connection> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.url.expose())?;
    if let Some(p) = &cfg.password {
        let settings = info.redis_settings().clone().set_password(p.expose());
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info)?;
    let con = client.get_connection_with_timeout(cfg.timeout)?;
    con.set_read_timeout(Some(cfg.timeout))?;
    con.set_write_timeout(Some(cfg.timeout))?;
    Ok(con)
}

impl Store {
    pub fn connect(cfg: &RedisConfig, node: &str) -> redis::RedisResult<Store> {
        let con = connect(cfg)?;
        Ok(Store {
            con,
            prefix: cfg.prefix.clone(),
            node: node.to_owned(),
            grant: Script::new(&scripts::with_prelude(scripts::GRANT)),
            release: Script::new(&scripts::with_prelude(scripts::RELEASE)),
            usage: Script::new(&scripts::with_prelude(scripts::USAGE)),
            restore: Script::new(&scripts::with_prelude(scripts::RESTORE)),
            heartbeat: Script::new(scripts::HEARTBEAT),
            calls: 0,
        })
    }

    /// The scope's hash; the braces make it a Redis Cluster hash tag, so
    /// one scope's calls go to one slot.
    fn scope_key(&self, scope: &str) -> String {
        format!("{}{{{}}}", self.prefix, scope)
    }

    pub fn grant(
        &mut self,
        scope: &str,
        limits: &Limits,
        want: Quota,
    ) -> redis::RedisResult<StoreGrant> {
        self.calls += 1;
        let key = self.scope_key(scope);
        let v: Vec<i64> = self
            .grant
            .key(key)
            .arg(limit_arg(limits.requests_per_minute))
            .arg(limit_arg(limits.tokens_per_minute))
            .arg(limit_arg(limits.tokens_per_day))
            .arg(want.requests.min(MAX_ASK))
            .arg(want.tokens.min(MAX_ASK))
            .invoke(&mut self.con)?;
        let [gr, gt, now, m, ms, lr, lt] = v[..] else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "grant script answered an unexpected shape",
            )));
        };
        Ok(StoreGrant {
            got: Quota {
                requests: left(gr),
                tokens: left(gt),
            },
            now_ms: left(now),
            minute_start: left(m),
            month_spend: left(ms),
            left: Quota {
                requests: left(lr),
                tokens: left(lt),
            },
        })
    }

    pub fn release(
        &mut self,
        scope: &str,
        minute: u64,
        day: u64,
        unused: Quota,
    ) -> redis::RedisResult<()> {
        self.calls += 1;
        let key = self.scope_key(scope);
        self.release
            .key(key)
            .arg(minute)
            .arg(day)
            .arg(unused.requests.min(MAX_ASK))
            .arg(unused.tokens.min(MAX_ASK))
            .invoke::<i64>(&mut self.con)
            .map(drop)
    }

    /// Returns the month's spend.
    pub fn usage(&mut self, scope: &str, extra_tokens: u64, spend: u64) -> redis::RedisResult<u64> {
        self.calls += 1;
        let key = self.scope_key(scope);
        self.usage
            .key(key)
            .arg(extra_tokens.min(MAX_ASK))
            .arg(spend.min(MAX_ASK))
            .invoke::<i64>(&mut self.con)
            .map(left)
    }

    pub fn restore(&mut self, scope: &str, a: &super::ledger::Share) -> redis::RedisResult<()> {
        self.calls += 1;
        let key = self.scope_key(scope);
        self.restore
            .key(key)
            .arg(a.minute)
            .arg(a.requests.min(MAX_ASK))
            .arg(a.tokens.min(MAX_ASK))
            .arg(a.day)
            .arg(a.day_tokens.min(MAX_ASK))
            .arg(a.month)
            .arg(a.spend.min(MAX_ASK))
            .invoke::<i64>(&mut self.con)
            .map(drop)
    }

    pub fn heartbeat(&mut self) -> redis::RedisResult<Beat> {
        self.calls += 1;
        // One hash tag, so a Redis Cluster runs the script on one node.
        let nodes = format!("{}{{nodes}}", self.prefix);
        let marker = format!("{}{{nodes}}:{}", self.prefix, self.node);
        let v: Vec<i64> = self
            .heartbeat
            .key(nodes)
            .key(marker)
            .arg(&self.node)
            .invoke(&mut self.con)?;
        let [now, live, had] = v[..] else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "heartbeat script answered an unexpected shape",
            )));
        };
        Ok(Beat {
            now_ms: left(now),
            live_nodes: left(live).max(1),
            kept_state: had == 1,
        })
    }

    /// The raw connection, for the key table's calls.
    pub fn con(&mut self) -> &mut Conn {
        self.calls += 1;
        &mut self.con
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}
