//! The audit log: one JSON line per event (schema version `v`), sealed in
//! an HMAC chain ([`chain`]), written off the request path by one thread
//! ([`writer`]).
//!
//! Events: every request (`request`: who, which model and provider, every
//! attempt, status and the decision that made it, tokens, cost,
//! latencies), every tool call (`tool_call`, the MCP issue's records),
//! and admin changes (`admin`: config reloads, key changes). Credentials
//! never enter an event: actors are key ids, and arguments follow the
//! caller's `log_prompts` (see [`crate::record::ToolArguments`]).
//!
//! A shard appends its events to a buffer of its own and hands the buffer
//! to the writer at most [`SHARD_FLUSH`] after its first event: so
//! `kill -9` loses at most that much, plus what the writer holds before
//! its next `write()` (it writes as soon as it receives). A full queue
//! means the writer (the disk) is behind: `on_backpressure: drop` drops
//! the batch, counts it and logs; `block` keeps it and refuses new
//! requests with 503 until the queue has room again.

pub mod chain;
mod line;
pub mod writer;

use crate::config::audit::Backpressure;
use crate::handoff::Sender;
use crate::record::{RequestEnd, ToolCallRecord};
use crossbeam::channel::TrySendError;
use line::key;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use writer::{Msg, SCHEMA};

/// How long a shard holds its events before handing them to the writer:
/// the most `kill -9` can lose (with what the writer had not yet written).
pub const SHARD_FLUSH: Duration = Duration::from_millis(10);
/// A shard's buffer is handed over early past this size.
const FLUSH_AT: usize = 256 << 10;
/// How long a shard's audit buffer keeps its room with nothing to write.
const QUIET: Duration = Duration::from_secs(1);
/// A request event's usual size, with room to spare (about 650 bytes).
const EVENT_ROOM: usize = 1024;

/// A shard's end of the audit log. Shard-local: no locks.
pub struct ShardAudit {
    tx: Sender<Msg>,
    writer: std::sync::Arc<writer::WriterStats>,
    on_backpressure: Backpressure,
    buf: RefCell<Vec<u8>>,
    /// A batch kept for the writer (`block`), sent before anything newer.
    held: RefCell<Option<Vec<u8>>>,
    rung: Cell<bool>,
    waiter: Cell<Option<Waker>>,
    /// Batches dropped (`drop`), and their events.
    pub dropped_events: Cell<u64>,
    last_complaint: Cell<Option<Instant>>,
    /// Events' time to the second, formatted once a second.
    clock: line::SecondClock,
}

impl ShardAudit {
    pub fn new(
        tx: Sender<Msg>,
        writer: std::sync::Arc<writer::WriterStats>,
        on_backpressure: Backpressure,
    ) -> Self {
        ShardAudit {
            tx,
            writer,
            on_backpressure,
            buf: RefCell::new(Vec::new()),
            held: RefCell::new(None),
            clock: line::SecondClock::default(),
            rung: Cell::new(false),
            waiter: Cell::new(None),
            dropped_events: Cell::new(0),
            last_complaint: Cell::new(None),
        }
    }

    /// The writer's events, bytes and errors so far (for a scrape).
    pub fn writer_totals(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let w = &self.writer;
        (
            w.events.load(Relaxed),
            w.bytes.load(Relaxed),
            w.errors.load(Relaxed),
        )
    }

    /// True while the writer is behind and `on_backpressure: block`: new
    /// requests are refused.
    pub fn refusing(&self) -> bool {
        self.held.borrow().is_some()
    }

    fn push(&self, event: &Value) {
        self.push_serialize(event);
    }

    /// Hands what is buffered to the writer.
    pub fn flush(&self) {
        if let Some(held) = self.held.borrow_mut().take() {
            if let Err(e) = self.tx.try_send(Msg::Batch(held)) {
                *self.held.borrow_mut() = Some(match e {
                    TrySendError::Full(Msg::Batch(b))
                    | TrySendError::Disconnected(Msg::Batch(b)) => b,
                    _ => Vec::new(),
                });
                return;
            }
        }
        let batch = {
            let mut buf = self.buf.borrow_mut();
            if buf.is_empty() {
                return;
            }
            // The next batch starts with room for as much as this one
            // held: a buffer grown by doubling from nothing would be
            // copied a dozen times a batch.
            let room = (buf.len() + buf.len() / 4).min(FLUSH_AT + EVENT_ROOM);
            std::mem::replace(&mut *buf, Vec::with_capacity(room))
        };
        match self.tx.try_send(Msg::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Batch(b)) | TrySendError::Disconnected(Msg::Batch(b))) => {
                match self.on_backpressure {
                    Backpressure::Block => *self.held.borrow_mut() = Some(b),
                    Backpressure::Drop => {
                        let n = b.iter().filter(|&&c| c == b'\n').count() as u64;
                        self.dropped_events.set(self.dropped_events.get() + n);
                        self.complain(n);
                    }
                }
            }
            Err(_) => {}
        }
    }

    fn complain(&self, n: u64) {
        let now = crate::deadline::coarse_now();
        if self
            .last_complaint
            .get()
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.last_complaint.set(Some(now));
            log::error!(
                "audit: the writer is behind (disk full or slow?): dropped {n} events ({} so far on this shard)",
                self.dropped_events.get()
            );
        }
    }

    /// The shard's flush task: sleeps while there is nothing to write.
    pub async fn run(&self, shard: &crate::shard::Shard) {
        while !shard.draining() {
            if self.buf.borrow().is_empty() && !self.refusing() {
                let rung = std::future::poll_fn(|cx| {
                    if self.rung.replace(false) {
                        Poll::Ready(())
                    } else {
                        self.waiter.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                });
                if self.buf.borrow().capacity() == 0 {
                    futures_lite::future::or(rung, shard.wait_shutdown()).await;
                } else {
                    // A quiet shard lets its batch's room go.
                    let quiet = async {
                        glommio::timer::sleep(QUIET).await;
                        let mut buf = self.buf.borrow_mut();
                        if buf.is_empty() {
                            *buf = Vec::new();
                        }
                    };
                    futures_lite::future::or(
                        futures_lite::future::or(rung, quiet),
                        shard.wait_shutdown(),
                    )
                    .await;
                }
                continue;
            }
            glommio::timer::sleep(SHARD_FLUSH).await;
            self.flush();
        }
        self.drain().await;
    }

    /// Hands over everything buffered; a batch held for a full queue waits
    /// for room, briefly (draining: the writer stops after the shards).
    pub async fn drain(&self) {
        self.flush();
        for _ in 0..100 {
            if !self.refusing() {
                break;
            }
            glommio::timer::sleep(SHARD_FLUSH).await;
            self.flush();
        }
    }

    /// The request's summary event, written member by member straight from
    /// borrowed fields ([`line`]: no JSON tree, no serializer per field;
    /// this runs once per request).
    pub fn request(&self, end: &RequestEnd<'_, '_>, trace_id: Option<&str>) {
        let t = end.trail;
        let (mut input, mut output, mut cached) = (0u64, 0u64, 0u64);
        let mut upstream = Duration::ZERO;
        for a in &t.attempts {
            upstream += a.ended.saturating_duration_since(a.started);
            let u = a.metered.as_ref().and_then(|m| m.usage).unwrap_or_default();
            input += u.prompt_tokens.unwrap_or(0);
            output += u.completion_tokens.unwrap_or(0);
            cached += u.cached_tokens.unwrap_or(0);
        }
        // A cache hit made no attempt: its answer names the target that
        // made it.
        let served = t
            .attempts
            .last()
            .map(|a| a.target.served_by.as_str())
            .or_else(|| t.cache.as_ref().and_then(|c| c.served_by.as_deref()));
        let (provider, upstream_model) = served
            .and_then(|s| s.split_once('/'))
            .map_or((None, None), |(p, m)| (Some(p), Some(m)));
        let total = end.ended.saturating_duration_since(end.started);
        // The policy's word on it, from the error the client got (labels
        // from a fixed set).
        let decision = match (end.status, end.error) {
            (Some(401), _) | (_, Some("unauthorized")) => "deny_auth",
            (_, Some("model_not_allowed" | "tool_not_allowed" | "tool_denied")) => "deny_policy",
            (_, Some("rate_limit_exceeded" | "insufficient_quota")) => "deny_budget",
            (_, Some("guardrail_blocked" | "guardrail_unavailable")) => "deny_guardrail",
            _ => "allow",
        };
        let mut buf = self.buf.borrow_mut();
        let was_empty = buf.is_empty();
        // Room for a usual event up front, not grown member by member.
        buf.reserve(EVENT_ROOM);
        let mut e = line::Object::open(&mut buf);
        e.u64(key!("v"), u64::from(SCHEMA));
        e.now(key!("time"), &self.clock);
        e.label(key!("kind"), "request");
        e.str(key!("request_id"), end.rid);
        e.opt_str(key!("trace_id"), trace_id);
        e.label(key!("endpoint"), t.endpoint);
        // Escaped once, when the key was loaded.
        let actor = t
            .actor
            .as_ref()
            .map_or(&b"null"[..], |a| a.json().as_bytes());
        e.raw(key!("actor"), actor);
        e.opt_str(key!("model"), t.alias.as_deref());
        e.opt_str(key!("provider"), provider);
        e.opt_str(key!("upstream_model"), upstream_model);
        e.opt_u64(key!("status"), end.status.map(u64::from));
        e.opt_str(key!("error"), end.error);
        e.label(key!("decision"), decision);
        e.objects(key!("attempts"), t.attempts.iter(), |o, a| {
            let u = a.metered.as_ref().and_then(|m| m.usage).unwrap_or_default();
            o.str(key!("target"), &a.target.served_by);
            o.label(key!("outcome"), a.outcome.label());
            o.millis(key!("ms"), a.ended.saturating_duration_since(a.started));
            o.opt_millis(
                key!("first_byte_ms"),
                a.head_at.map(|h| h.saturating_duration_since(a.started)),
            );
            o.opt_u64(key!("input_tokens"), u.prompt_tokens);
            o.opt_u64(key!("output_tokens"), u.completion_tokens);
            o.opt_u64(key!("cached_tokens"), u.cached_tokens);
            if let Some(w) = u.cache_write_tokens {
                o.u64(key!("cache_write_tokens"), w);
            }
            o.opt_bool(key!("estimated"), a.metered.as_ref().map(|m| m.estimated));
            // Read on to its usage after the client left.
            if a.metered.as_ref().is_some_and(|m| m.drained) {
                o.raw(key!("drained"), b"true");
            }
        });
        e.object(key!("tokens"), |o| {
            o.u64(key!("input"), input);
            o.u64(key!("output"), output);
            o.u64(key!("cached"), cached);
        });
        e.u64(key!("cost_micros"), t.cost_micros);
        e.object(key!("latency_ms"), |o| {
            o.millis(key!("total"), total);
            o.opt_millis(
                key!("first_byte"),
                end.first_byte
                    .map(|f| f.saturating_duration_since(end.started)),
            );
            o.millis(key!("upstream"), upstream);
            o.millis(key!("overhead"), total.saturating_sub(upstream));
        });
        // Each guardrail check's verdict; absent for callers with none.
        if !t.guardrails.is_empty() {
            e.serde(key!("guardrails"), &t.guardrails);
        }
        // How the response cache served it; absent on routes without one.
        if let Some(c) = &t.cache {
            e.serde(
                key!("cache"),
                &events::Cache {
                    result: c.result,
                    shared: c.shared,
                    saved_tokens: c.saved.map(|u| events::Tokens {
                        input: u.prompt_tokens.unwrap_or(0),
                        output: u.completion_tokens.unwrap_or(0),
                        cached: u.cached_tokens.unwrap_or(0),
                    }),
                },
            );
        }
        e.close();
        buf.push(b'\n');
        self.pushed(buf, was_empty);
    }

    /// After an event went into the buffer: hand it over when full, else
    /// wake the flush task when it was empty.
    fn pushed(&self, buf: std::cell::RefMut<'_, Vec<u8>>, was_empty: bool) {
        let full = buf.len() >= FLUSH_AT;
        drop(buf);
        if full {
            self.flush();
        } else if was_empty {
            self.rung.set(true);
            if let Some(w) = self.waiter.take() {
                w.wake();
            }
        }
    }

    fn push_serialize<T: serde::Serialize>(&self, event: &T) {
        let mut buf = self.buf.borrow_mut();
        let was_empty = buf.is_empty();
        let start = buf.len();
        if serde_json::to_writer(&mut *buf, event).is_ok() {
            buf.push(b'\n');
        } else {
            buf.truncate(start);
        }
        self.pushed(buf, was_empty);
    }

    /// An admin change made through this shard (the admin API).
    pub fn admin(&self, action: &str, by: &str, detail: Value) {
        self.push(&admin_json(action, by, detail));
    }

    /// A tool call's record.
    pub fn tool_call(&self, rec: &ToolCallRecord<'_>) {
        let mut v = rec.to_json();
        if let Some(m) = v.as_object_mut() {
            m.insert("v".into(), SCHEMA.into());
            m.insert("time".into(), writer::now_rfc3339().into());
            m.insert("kind".into(), "tool_call".into());
        }
        self.push(&v);
    }
}

/// An admin change, for the writer directly (from the main thread).
pub fn admin_event(action: &str, by: &str, detail: Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&admin_json(action, by, detail)).unwrap_or_default();
    line.push(b'\n');
    line
}

fn admin_json(action: &str, by: &str, detail: Value) -> Value {
    json!({
        "v": SCHEMA,
        "time": writer::now_rfc3339(),
        "kind": "admin",
        "action": action,
        "by": by,
        "detail": detail,
    })
}

/// The parts of the request event written by serde (rare: only on routes
/// with a response cache).
mod events {
    use serde::Serialize;

    /// A hit's `saved_tokens`: what the kept answer used when it was made.
    #[derive(Serialize)]
    pub struct Cache {
        pub result: &'static str,
        /// What the shared tier answered, when it was asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub shared: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub saved_tokens: Option<Tokens>,
    }

    #[derive(Serialize)]
    pub struct Tokens {
        pub input: u64,
        pub output: u64,
        pub cached: u64,
    }
}
