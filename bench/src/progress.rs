//! The live progress line on stderr: shards bump per-shard atomic counters
//! (no locks, no shared cache line between shards), the main thread reads
//! them at most four times a second and redraws one line, only when stderr
//! is a terminal.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redraws at most this often.
pub const PERIOD: Duration = Duration::from_millis(250);

/// One shard's running counts (padded to its own cache line).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ShardProgress {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub tokens: AtomicU64,
}

impl ShardProgress {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }
}

/// The main thread's view of every shard.
pub struct Progress {
    shards: Vec<Arc<ShardProgress>>,
    begin: Instant,
    warmup: Duration,
    total: Duration,
    last: (Instant, u64),
    enabled: bool,
}

pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

impl Progress {
    pub fn new(
        shards: Vec<Arc<ShardProgress>>,
        begin: Instant,
        warmup: Duration,
        total: Duration,
        enabled: bool,
    ) -> Self {
        Progress {
            shards,
            begin,
            warmup,
            total,
            last: (begin, 0),
            enabled,
        }
    }

    fn sum(&self, f: impl Fn(&ShardProgress) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| f(s).load(Relaxed)).sum()
    }

    /// Redraws the line (when enabled).
    pub fn draw(&mut self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let done = self.sum(|s| &s.completed);
        let errors = self.sum(|s| &s.errors);
        let tokens = self.sum(|s| &s.tokens);
        let dt = now.duration_since(self.last.0).as_secs_f64().max(1e-6);
        let rps = (done - self.last.1) as f64 / dt;
        self.last = (now, done);
        let elapsed = now.duration_since(self.begin);
        let phase = if elapsed < self.warmup {
            "warmup"
        } else {
            "measure"
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{phase} {:.1}/{:.1}s] {done} done  {rps:.0} req/s  {tokens} tokens  {errors} errors",
            elapsed.as_secs_f64(),
            self.total.as_secs_f64()
        );
        let _ = err.flush();
    }

    /// Erases the line.
    pub fn clear(&self) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}
