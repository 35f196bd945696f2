//! Time as a value, and fixed windows aligned to UTC minute, day and
//! calendar month.
//!
//! Nothing here reads a clock: every function takes `now`. Month boundaries
//! are computed from unix milliseconds with the proleptic Gregorian
//! calendar (Howard Hinnant's `days_from_civil` / `civil_from_days`), so no
//! date crate is needed and leap years fall out of the arithmetic.

const MS_PER_MINUTE: u64 = 60_000;
const MS_PER_DAY: u64 = 86_400_000;

/// A point in time: milliseconds since the unix epoch, UTC. The caller reads
/// the clock once per request and passes it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_unix_ms(ms: u64) -> Self {
        Timestamp(ms)
    }

    pub const fn as_unix_ms(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating.
    pub const fn plus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `self` until `later`; 0 if `later` is not later.
    pub const fn ms_until(self, later: Timestamp) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

/// The length of a fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// `[hh:mm:00.000, hh:mm+1:00.000)` UTC.
    Minute,
    /// `[00:00 UTC, next 00:00 UTC)`.
    Day,
    /// From 00:00 UTC on the 1st to 00:00 UTC on the 1st of the next month.
    Month,
}

impl Period {
    /// Start of the window of this period that contains `now`.
    pub fn start(self, now: Timestamp) -> Timestamp {
        let ms = now.0;
        match self {
            Period::Minute => Timestamp(ms - ms % MS_PER_MINUTE),
            Period::Day => Timestamp(ms - ms % MS_PER_DAY),
            Period::Month => {
                let (y, m, _) = civil_from_days(ms / MS_PER_DAY);
                Timestamp(days_from_civil(y, m, 1) * MS_PER_DAY)
            }
        }
    }

    /// End (exclusive) of the window that starts at `start`, i.e. the start
    /// of the next window.
    pub fn end(self, start: Timestamp) -> Timestamp {
        match self {
            Period::Minute => start.plus_ms(MS_PER_MINUTE),
            Period::Day => start.plus_ms(MS_PER_DAY),
            Period::Month => {
                let (y, m, _) = civil_from_days(start.0 / MS_PER_DAY);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Timestamp(days_from_civil(ny, nm, 1) * MS_PER_DAY)
            }
        }
    }
}

/// A fixed window: a period, where the current one started, and how much of
/// it has been used.
///
/// A clock that steps backwards (`now < start`) keeps the current window:
/// counts are never reset by going back in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    period: Period,
    start: Timestamp,
    end: Timestamp,
    used: u64,
}

impl Window {
    pub fn new(period: Period, now: Timestamp) -> Self {
        let start = period.start(now);
        Window {
            period,
            start,
            end: period.end(start),
            used: 0,
        }
    }

    /// Moves to the window containing `now` if the current one has ended,
    /// resetting `used`. Returns true if it rolled over.
    pub fn rollover(&mut self, now: Timestamp) -> bool {
        if now < self.end {
            return false;
        }
        *self = Window::new(self.period, now);
        true
    }

    pub fn period(&self) -> Period {
        self.period
    }

    pub fn start(&self) -> Timestamp {
        self.start
    }

    pub fn end(&self) -> Timestamp {
        self.end
    }

    /// Used amount as seen at `now`: 0 if the window has ended (without
    /// mutating; call `rollover` to make it so).
    pub fn used_at(&self, now: Timestamp) -> u64 {
        if now >= self.end {
            0
        } else {
            self.used
        }
    }

    /// Start of the window that is current at `now`.
    pub fn start_at(&self, now: Timestamp) -> Timestamp {
        if now >= self.end {
            self.period.start(now)
        } else {
            self.start
        }
    }

    /// Milliseconds from `now` until the window current at `now` ends.
    pub fn reset_in_ms(&self, now: Timestamp) -> u64 {
        let start = self.start_at(now);
        now.ms_until(self.period.end(start))
    }

    /// Adds `n` to the current window (after rolling over to `now`).
    pub fn add(&mut self, n: u64, now: Timestamp) {
        self.rollover(now);
        self.used = self.used.saturating_add(n);
    }

    /// Removes up to `n` from the window that started at `start`; a no-op
    /// if that window is no longer current. Never goes below zero.
    pub fn release(&mut self, n: u64, start: Timestamp, now: Timestamp) {
        self.rollover(now);
        if self.start == start {
            self.used = self.used.saturating_sub(n);
        }
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (`month` 1..=12).
/// Valid for years >= 1970, which is all a `u64` unix timestamp can name.
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Hinnant, "chrono-Compatible Low-Level Date Algorithms", with the era
    // shifted so that all intermediate values stay unsigned for y >= 0.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400; // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
                                                     // 719_468 = days from 0000-03-01 to 1970-01-01.
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// `(year, month 1..=12, day 1..=31)` for days since 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A duration in the style of OpenAI's `x-ratelimit-reset-*` headers (Go's
/// `time.Duration` format at millisecond precision): `20ms`, `1s`, `1.5s`,
/// `6m0s`, `23h59m59s`.
pub fn format_reset(ms: u64) -> String {
    // Written digit group by digit group: every admitted request carries
    // these headers, and `format!` per group cost ~1,300 instructions a
    // request.
    let mut out = String::with_capacity(16);
    let mut num = itoa::Buffer::new();
    if ms < 1000 {
        out.push_str(num.format(ms));
        out.push_str("ms");
        return out;
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s = (ms / 1000) % 60;
    let frac = ms % 1000;
    if h > 0 {
        out.push_str(num.format(h));
        out.push('h');
    }
    if h > 0 || m > 0 {
        out.push_str(num.format(m));
        out.push('m');
    }
    out.push_str(num.format(s));
    if frac != 0 {
        // Three digits, trailing zeros dropped: 0.5s, 0.25s, 0.125s.
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let used = 3 - digits.iter().rev().take_while(|&&d| d == 0).count();
        out.push('.');
        for d in &digits[..used] {
            out.push(char::from(b'0' + *d as u8));
        }
    }
    out.push('s');
    out
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
