//! Messages between shards, over glommio's channel mesh: one lock-free
//! single-producer ring per ordered pair of shards, each woken by an
//! eventfd. Cross-shard state moves only here, never through a lock:
//! quota leases (a `Want` when a shard's slice of a bucket runs low, the
//! owner's `Grant`, returns and usage reports) and metrics snapshots for a
//! scrape. Never a request: the request path at most enqueues a message.
//! Each shard runs one dispatcher (`serve.rs`) that hands every message
//! to the part of the shard it is for.
//!
//! With an admin listener the mesh has one more peer, the last: the ops
//! executor, which serves operators and merges scrapes but never serves
//! client traffic, so it never owns a bucket ([`Mesh::shards`] counts only
//! serving shards).

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use shardgate_policy::{Lease, Limits, Timestamp, ToOwner};
use std::rc::Rc;

/// Everything one shard tells another.
#[derive(Debug)]
pub enum ShardMsg {
    /// Budget leases (`admission`).
    Quota(QuotaMsg),
    /// A scrape on shard `from` wants this shard's metrics, as `seq`.
    MetricsAsk { from: usize, seq: u64 },
    /// This shard's metrics, answering `MetricsAsk` `seq`.
    MetricsReply {
        seq: u64,
        stats: Box<crate::metrics::ShardStats>,
    },
    /// A legacy MCP client cancelled its request `id` in the session
    /// `session` (a hash of its ID): the shard relaying that call stops it.
    McpCancel { session: u64, id: String },
    /// Keys the admin API changed: make them current, then say so to
    /// `from` as `seq`.
    Keys {
        keys: Box<shardgate_policy::KeyStore>,
        from: usize,
        seq: u64,
    },
    /// This shard has the keys of `Keys` `seq`.
    KeysApplied { seq: u64 },
    /// The admin API purges the response cache: drop what `purge` names,
    /// then say how many to `from` as `seq`.
    CachePurge {
        purge: crate::cache::Purge,
        from: usize,
        seq: u64,
    },
    /// This shard dropped `dropped` entries for `CachePurge` `seq`.
    CachePurged { seq: u64, dropped: usize },
    /// A readiness probe on the ops executor asks whether this shard takes
    /// new work; answer `from` as `seq`.
    ReadyAsk { from: usize, seq: u64 },
    /// This shard's answer to `ReadyAsk` `seq`: false once draining.
    ReadyReply { seq: u64, ready: bool },
    /// A target's circuit opened on another shard: avoid it until then.
    CircuitOpen {
        target: String,
        until: std::time::Instant,
    },
}

/// What one shard tells another about a bucket (named by its scope key).
#[derive(Debug, Clone)]
pub enum QuotaMsg {
    /// To the bucket's owner. `limits` travel along so an owner that has not
    /// seen the bucket yet can open its ledger.
    ToOwner {
        bucket: String,
        limits: Limits,
        msg: ToOwner,
    },
    /// From the owner, answering a `Want`.
    Grant { bucket: String, lease: Lease },
    /// From the owner to every shard: the month starting at `month` has
    /// `used` micro-dollars spent, at or past the bucket's monthly limit.
    Spent {
        bucket: String,
        month: Timestamp,
        used: u64,
    },
}

/// Capacity of each shard-to-shard ring. Messages are per lease, not per
/// request, so a full ring means a stalled peer; senders then wait on a task
/// of their own rather than on the request path.
pub const RING: usize = 1024;

pub type Builder = MeshBuilder<ShardMsg, Full>;

/// The mesh of `shards` serving shards, and the ops executor when `ops`.
pub fn builder(shards: usize, ops: bool) -> Builder {
    MeshBuilder::full(shards + usize::from(ops), RING)
}

/// This executor's senders. Peer ids are the mesh's (every peer agrees on
/// them, ordered as the executors were made: the serving shards, then the
/// ops executor), and they are what `owner_shard` indexes.
pub struct Mesh {
    senders: Senders<ShardMsg>,
    shards: usize,
}

impl Mesh {
    /// `senders` of a mesh whose first `shards` peers serve clients.
    pub fn new(senders: Senders<ShardMsg>, shards: usize) -> Rc<Self> {
        Rc::new(Self { senders, shards })
    }

    pub fn me(&self) -> usize {
        self.senders.peer_id()
    }

    /// Every peer, the ops executor included.
    pub fn peers(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// The serving shards: the peers that own buckets.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Enqueues `msg` for shard `to` without waiting: when the ring is full
    /// a detached task waits for room.
    pub fn send(self: &Rc<Self>, to: usize, msg: ShardMsg) {
        use glommio::{GlommioError, ResourceType};
        match self.senders.try_send_to(to, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                let mesh = self.clone();
                glommio::spawn_local(async move {
                    if mesh.senders.send_to(to, msg).await.is_err() {
                        log::warn!("message to shard {to} lost: its ring is closed");
                    }
                })
                .detach();
            }
            Err(e) => log::warn!("message to shard {to} lost: {e}"),
        }
    }
}
