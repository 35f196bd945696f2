//! Reusable simd-json parsing for the few fields the gateway reads from
//! request and response bodies.
//!
//! A tape (a flat array of nodes) instead of a value tree: reading `model`
//! or `usage` needs no per-object map, and the input copy, the parser's
//! buffers and the tape are all kept between parses, so a warm parser
//! allocates nothing. simd-json unescapes strings in place, which is why the
//! input is copied: the caller's bytes stay intact for pass-through.

use simd_json::{Buffers, Tape};

pub use simd_json::tape::{Array, Object, Value};

/// Buffers for one parse at a time; keep one per shard or per stream.
pub struct JsonParser {
    input: Vec<u8>,
    buffers: Buffers,
    /// Always empty between parses; its lifetime is re-bound on each use.
    tape: Option<Tape<'static>>,
}

impl Default for JsonParser {
    fn default() -> Self {
        JsonParser {
            input: Vec::new(),
            buffers: Buffers::new(0),
            tape: Some(Tape(Vec::new())),
        }
    }
}

impl JsonParser {
    /// Parses `json` and hands its root to `read`.
    pub fn parse<R>(
        &mut self,
        json: &[u8],
        read: impl FnOnce(Value<'_, '_>) -> R,
    ) -> Result<R, simd_json::Error> {
        self.input.clear();
        self.input.extend_from_slice(json);
        let mut tape = self.tape.take().unwrap_or(Tape(Vec::new())).reset();
        let result = simd_json::fill_tape(&mut self.input, &mut self.buffers, &mut tape)
            .map(|()| read(tape.as_value()));
        self.tape = Some(tape.reset());
        result
    }
}
