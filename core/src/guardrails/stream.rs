//! Output checks on a stream: the text each event adds, scanned with what
//! came just before it, so a match split across events is caught.
//!
//! Only the text deltas are read (chat `delta.content`, Anthropic
//! `text_delta`, Responses `response.output_text.delta`), straight from
//! the event's bytes: no event is parsed into a tree.
//!
//! **Holding back.** When a check blocks or redacts, text is released
//! only once it is `window` bytes behind the newest text (the largest
//! `stream_window` of the checks), so a match up to that long is found
//! before any of it reaches the client. Each text event then carries the
//! text released by it (possibly none: an empty delta), and what is held
//! goes out, redacted, in one more text event just before the first
//! non-text event (a block's end, a tool call, the finish) — its bytes
//! are the last text event's with the text replaced. A `block` match ends
//! the stream before its chunk: the client sees none of the match.
//! Responses events that repeat the whole text (`*.done`,
//! `response.completed`) are redacted as whole JSON.
//!
//! With only `log` checks nothing is held or rewritten: the events are
//! scanned as they pass.

use super::{label, GuardRecord};
use crate::error::GatewayError;
use crate::gateway::ClientDialect;
use serde_json::Value;
use shardgate_policy::guardrails::{redact, Finding, GuardAction, Guardrails, Stage};
use shardgate_proto::chunked::{encode_chunk_header, next_chunk, CHUNK_END};
use shardgate_proto::json::write_json_string;
use shardgate_proto::sse::SseFramer;
use std::borrow::Cow;
use std::time::Instant;

/// Events are at most this large here (they were framed before).
const MAX_EVENT: usize = 16 << 20;

pub struct StreamGuard {
    checks: Vec<usize>,
    client: ClientDialect,
    /// Legacy completions: chunks carry `choices[].text`.
    completions: bool,
    /// Bytes of text kept as context (and held back, when holding).
    window: usize,
    /// Not holding: the last `window` bytes of text relayed, as the
    /// provider wrote it.
    context: String,
    /// Set when a check blocks or redacts.
    hold: Option<Hold>,
    /// Per check: the kinds it found so far, and its time (ns).
    found: Vec<(Vec<&'static str>, u64)>,
    /// Scratch, kept across events.
    scan: String,
    findings: Vec<Finding>,
    held: Vec<Finding>,
    released: String,
}

struct Hold {
    /// Text received and not yet released.
    pending: String,
    /// The last text event, split around its text string (quotes
    /// included): the shape of the event that releases what is held.
    before: Vec<u8>,
    after: Vec<u8>,
    framer: SseFramer,
    /// A chunk's rewritten events.
    data: Vec<u8>,
    /// A read's chunks, set aside while rewritten.
    tail: Vec<u8>,
}

impl StreamGuard {
    pub fn new(
        rails: &Guardrails,
        checks: Vec<usize>,
        client: ClientDialect,
        completions: bool,
    ) -> Self {
        let found = vec![(Vec::new(), 0); checks.len()];
        let window = checks
            .iter()
            .map(|&c| rails.check(c).stream_window)
            .max()
            .unwrap_or(0);
        let holds = checks
            .iter()
            .any(|&c| rails.check(c).action != GuardAction::Log);
        StreamGuard {
            checks,
            client,
            completions,
            window,
            context: String::with_capacity(window * 2),
            hold: holds.then(|| Hold {
                pending: String::with_capacity(window * 2),
                before: Vec::new(),
                after: Vec::new(),
                framer: SseFramer::new(MAX_EVENT),
                data: Vec::new(),
                tail: Vec::new(),
            }),
            found,
            scan: String::new(),
            findings: Vec::new(),
            held: Vec::new(),
            released: String::new(),
        }
    }

    /// Checks (and, when holding, rewrites) the events of the whole chunks
    /// in `out[from..]`. On a `block` match, `out` ends before the chunk
    /// that completed it and the error to end the stream with is returned.
    pub fn filter(
        &mut self,
        rails: &Guardrails,
        out: &mut Vec<u8>,
        from: usize,
    ) -> Result<(), GatewayError> {
        if self.hold.is_none() {
            let mut at = from;
            while let Some((data, next, last)) = next_chunk(out, at) {
                if last {
                    break;
                }
                if let Err(e) = self.passing_chunk(rails, data) {
                    out.truncate(at);
                    return Err(e);
                }
                at = next;
            }
            return Ok(());
        }
        let Some(mut hold) = self.hold.take() else {
            return Ok(());
        };
        // This read's chunks, copied aside (the buffer is kept) and
        // rewritten into `out`.
        let mut tail = std::mem::take(&mut hold.tail);
        tail.clear();
        tail.extend_from_slice(&out[from..]);
        out.truncate(from);
        let mut at = 0;
        let mut result = Ok(());
        while let Some((data, next, last)) = next_chunk(&tail, at) {
            hold.data.clear();
            if last {
                // The stream ends with text still held (it was cut, or
                // its last event was text): out it goes, judged.
                if !hold.pending.is_empty() {
                    result = self.flush(rails, &mut hold);
                }
            } else {
                let mut events = std::mem::replace(&mut hold.framer, SseFramer::new(0));
                let _ = events.feed(data, |e| {
                    if result.is_ok() {
                        result = self.held_event(rails, &mut hold, e.raw);
                    }
                });
                if let Some(rest) = events.finish() {
                    if result.is_ok() {
                        result = self.held_event(rails, &mut hold, rest);
                    }
                }
                hold.framer = events;
            }
            if result.is_err() {
                break;
            }
            if !hold.data.is_empty() {
                encode_chunk_header(hold.data.len(), out);
                out.extend_from_slice(&hold.data);
                out.extend_from_slice(CHUNK_END);
            }
            if last {
                break;
            }
            at = next;
        }
        if result.is_ok() {
            out.extend_from_slice(&tail[at..]);
        }
        hold.tail = tail;
        self.hold = Some(hold);
        result
    }

    /// Releases all held text, judged, as one more text event.
    fn flush(&mut self, rails: &Guardrails, hold: &mut Hold) -> Result<(), GatewayError> {
        self.release(rails, hold, true)?;
        if !self.released.is_empty() && !hold.before.is_empty() {
            hold.data.extend_from_slice(&hold.before);
            write_json_string(&mut hold.data, &self.released);
            hold.data.extend_from_slice(&hold.after);
        }
        Ok(())
    }

    /// Not holding: scans the text `data`'s events add.
    fn passing_chunk(&mut self, rails: &Guardrails, data: &[u8]) -> Result<(), GatewayError> {
        let before = self.context.len();
        for event in data
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"data:"))
        {
            if let Some((text, _)) = self.text_of(event) {
                self.context.push_str(&text);
            }
        }
        if self.context.len() == before {
            return Ok(());
        }
        self.scan.clear();
        self.scan.push_str(&self.context);
        let r = self.judge(rails, before);
        let cut = floor_boundary(
            &self.context,
            self.context.len().saturating_sub(self.window),
        );
        self.context.drain(..cut);
        r
    }

    /// Holding: one event, rewritten into `hold.data`. Only an event that
    /// ends a run of text (a finish, a block's end, a tool call, `[DONE]`)
    /// releases what is held; others (pings, empty deltas, comments) pass
    /// while it stays held, so a match split around them is still seen
    /// whole.
    fn held_event(
        &mut self,
        rails: &Guardrails,
        hold: &mut Hold,
        raw: &[u8],
    ) -> Result<(), GatewayError> {
        let ends = ends_text(raw, self.client);
        if let Some((text, span)) = self.text_of(raw) {
            hold.pending.push_str(&text);
            hold.before.clear();
            hold.before.extend_from_slice(&raw[..span.0]);
            hold.after.clear();
            hold.after.extend_from_slice(&raw[span.1..]);
            self.release(rails, hold, ends)?;
            hold.data.extend_from_slice(&raw[..span.0]);
            write_json_string(&mut hold.data, &self.released);
            hold.data.extend_from_slice(&raw[span.1..]);
            return Ok(());
        }
        if ends && !hold.pending.is_empty() {
            self.flush(rails, hold)?;
        }
        if self.client == ClientDialect::Responses && repeats_text(raw) {
            self.redact_whole(rails, raw, &mut hold.data);
        } else {
            hold.data.extend_from_slice(raw);
        }
        Ok(())
    }

    /// Scans the held text; releases (into `self.released`) what is older
    /// than the window (all of it when `all`), redacted, without cutting a
    /// match.
    fn release(
        &mut self,
        rails: &Guardrails,
        hold: &mut Hold,
        all: bool,
    ) -> Result<(), GatewayError> {
        // Held text alone: a match reaching back into released text would
        // be longer than the window, which holding cannot catch anyway.
        self.scan.clear();
        self.scan.push_str(&hold.pending);
        self.judge(rails, 0)?;
        let mut r = if all {
            hold.pending.len()
        } else {
            floor_boundary(
                &hold.pending,
                hold.pending.len().saturating_sub(self.window),
            )
        };
        // Redactable matches in the held text.
        self.held.clear();
        self.held.extend(
            self.findings
                .iter()
                .filter(|f| rails.check(f.check).action == GuardAction::Redact)
                .cloned(),
        );
        while let Some(f) = self
            .held
            .iter()
            .find(|f| f.range.start < r && r < f.range.end)
        {
            r = f.range.start;
        }
        self.released.clear();
        if self.held.iter().any(|f| f.range.end <= r) {
            let now: Vec<&Finding> = self.held.iter().filter(|f| f.range.end <= r).collect();
            self.released
                .push_str(&redact(&hold.pending[..r], &now, |f| label(rails, f)));
        } else {
            self.released.push_str(&hold.pending[..r]);
        }
        hold.pending.drain(..r);
        Ok(())
    }

    /// Runs every check over `self.scan`; findings ending past `new`
    /// (where the text not yet judged starts) count. Leaves the findings
    /// in `self.findings`; a new `block` match is the error.
    fn judge(&mut self, rails: &Guardrails, new: usize) -> Result<(), GatewayError> {
        self.findings.clear();
        let mut blocked = None;
        let mut started = Instant::now();
        for (n, &c) in self.checks.iter().enumerate() {
            let from = self.findings.len();
            rails.scan(c, &self.scan, &mut self.findings);
            let check = rails.check(c);
            for f in self.findings[from..].iter().filter(|f| f.range.end > new) {
                let what = f.what.label();
                if !self.found[n].0.contains(&what) {
                    self.found[n].0.push(what);
                }
                if check.action == GuardAction::Block && blocked.is_none() {
                    blocked = Some(GatewayError::Guardrail {
                        check: check.name.clone(),
                        stage: "answer",
                        found: what,
                    });
                }
            }
            let now = Instant::now();
            self.found[n].1 += now.duration_since(started).as_nanos() as u64;
            started = now;
        }
        blocked.map_or(Ok(()), Err)
    }

    /// The text a text event adds, and the span of its JSON string
    /// (quotes included) in `event`.
    fn text_of<'e>(&self, event: &'e [u8]) -> Option<(Cow<'e, str>, (usize, usize))> {
        let (marker, key): (&[u8], &[u8]) = match self.client {
            ClientDialect::OpenAi if self.completions => (b"\"text\"", b"\"text\""),
            ClientDialect::OpenAi => (b"\"content\"", b"\"content\""),
            ClientDialect::Anthropic => (b"\"text_delta\"", b"\"text\""),
            ClientDialect::Responses => (b"output_text.delta", b"\"delta\""),
        };
        memchr::memmem::find(event, marker)?;
        json_string_after(event, key)
    }

    /// A Responses event that repeats text, redacted as JSON (`raw` as it
    /// came when there is nothing to redact or it is not JSON).
    fn redact_whole(&mut self, rails: &Guardrails, raw: &[u8], dst: &mut Vec<u8>) {
        let Some(line_at) = memchr::memmem::find(raw, b"data:") else {
            dst.extend_from_slice(raw);
            return;
        };
        let line_end = raw[line_at..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(raw.len(), |p| line_at + p);
        let json = raw[line_at + 5..line_end].trim_ascii();
        let Ok(mut v) = serde_json::from_slice::<Value>(json) else {
            dst.extend_from_slice(raw);
            return;
        };
        let mut texts = Vec::new();
        super::collect(&mut v, &mut texts);
        let mut changed = false;
        for text in texts {
            self.findings.clear();
            for &c in &self.checks {
                if rails.check(c).action == GuardAction::Redact {
                    rails.scan(c, text, &mut self.findings);
                }
            }
            if !self.findings.is_empty() {
                let all: Vec<&Finding> = self.findings.iter().collect();
                *text = redact(text, &all, |f| label(rails, f));
                changed = true;
            }
        }
        if !changed {
            dst.extend_from_slice(raw);
            return;
        }
        dst.extend_from_slice(&raw[..line_at]);
        dst.extend_from_slice(b"data: ");
        dst.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
        dst.extend_from_slice(&raw[line_end..]);
    }

    /// Each check's record for the stream (at its end, or when it was cut).
    pub fn records(&self, rails: &Guardrails, records: &mut Vec<GuardRecord>) {
        for (n, &c) in self.checks.iter().enumerate() {
            let (kinds, ns) = &self.found[n];
            let check = rails.check(c);
            records.push(GuardRecord {
                check: check.name.clone(),
                stage: Stage::Output.as_str(),
                verdict: if kinds.is_empty() {
                    "pass"
                } else {
                    check.action.as_str()
                },
                found: kinds.clone(),
                latency_us: *ns / 1000,
            });
        }
    }
}

/// Responses events that carry the whole text again: the `*.done`
/// events and those with the whole response (completed, incomplete,
/// failed).
fn repeats_text(raw: &[u8]) -> bool {
    let has = |n: &[u8]| memchr::memmem::find(raw, n).is_some();
    has(b"\"text\"")
        && (has(b".done\"")
            || has(b"response.completed")
            || has(b"response.incomplete")
            || has(b"response.failed"))
}

/// Whether an event ends a run of text in `client`'s dialect: what held
/// text must go out before.
fn ends_text(raw: &[u8], client: ClientDialect) -> bool {
    let has = |n: &[u8]| memchr::memmem::find(raw, n).is_some();
    // `"key"` with a value starting with `first` (spacing allowed).
    let set = |key: &[u8], first: u8| {
        memchr::memmem::find_iter(raw, key).any(|at| {
            let rest = raw[at + key.len()..].trim_ascii_start();
            let rest = rest.strip_prefix(b":").unwrap_or(rest);
            rest.trim_ascii_start().first() == Some(&first)
        })
    };
    match client {
        ClientDialect::OpenAi => {
            set(b"\"finish_reason\"", b'"')
                || set(b"\"tool_calls\"", b'[')
                || has(b"[DONE]")
                || has(b"\"error\"")
        }
        ClientDialect::Anthropic => {
            has(b"content_block_stop")
                || has(b"content_block_start")
                || has(b"message_delta")
                || has(b"message_stop")
                || has(b"\"error\"")
        }
        ClientDialect::Responses => {
            has(b".done\"")
                || has(b"output_item.")
                || has(b"response.completed")
                || has(b"response.incomplete")
                || has(b"response.failed")
                || has(b"function_call")
                || has(b"\"error\"")
        }
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor_boundary(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The JSON string value of the first member `key` (quoted, as
/// `"content"`) that has one, with any spacing around its colon: decoded
/// (borrowed when it has no escapes), and its span in `event`, quotes
/// included.
fn json_string_after<'e>(event: &'e [u8], key: &[u8]) -> Option<(Cow<'e, str>, (usize, usize))> {
    let mut from = 0;
    loop {
        let at = from + memchr::memmem::find(&event[from..], key)? + key.len();
        from = at;
        let mut i = at;
        while event.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if event.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while event.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if event.get(i) != Some(&b'"') {
            continue;
        }
        let start = i + 1;
        let mut j = start;
        let mut escaped = false;
        loop {
            match event.get(j)? {
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                b'"' => break,
                _ => j += 1,
            }
        }
        let span = (start - 1, j + 1);
        let text = if escaped {
            Cow::Owned(serde_json::from_slice::<String>(&event[span.0..span.1]).ok()?)
        } else {
            Cow::Borrowed(std::str::from_utf8(&event[start..j]).ok()?)
        };
        return Some((text, span));
    }
}
