//! A JSON object written member by member into a byte buffer: the request
//! event, which every request writes. serde's derive escaped every key and
//! dispatched every field through the serializer (about 13,700
//! instructions an event); here keys are literals and only values are
//! escaped or formatted.
//!
//! Output is what serde_json writes for the same values: strings escaped
//! by [`write_json_string`], integers by `itoa`, and milliseconds as the
//! float serde_json would write for them.

use shardgate_proto::json::write_json_string;

/// A member's key as it is written, `,"name":`, made by [`key!`] at
/// compile time: one copy a member rather than a comma, quotes and the
/// name pushed one by one (a request event has about 40 members).
#[derive(Clone, Copy)]
pub struct Key(&'static [u8]);

impl Key {
    /// `text` is `,"name":` with a name that needs no escape.
    pub const fn new(text: &'static str) -> Self {
        let b = text.as_bytes();
        assert!(b.len() >= 4 && b[0] == b',' && b[1] == b'"');
        assert!(b[b.len() - 2] == b'"' && b[b.len() - 1] == b':');
        let mut i = 2;
        while i < b.len() - 2 {
            assert!(b[i] != b'"' && b[i] != b'\\' && b[i] >= 0x20);
            i += 1;
        }
        Key(b)
    }
}

/// The [`Key`] for member `name`, checked at compile time.
macro_rules! key {
    ($name:literal) => {{
        const K: $crate::audit::line::Key =
            $crate::audit::line::Key::new(concat!(",\"", $name, "\":"));
        K
    }};
}
pub(crate) use key;

/// One object being written; members go in the order written.
pub struct Object<'b> {
    out: &'b mut Vec<u8>,
    empty: bool,
}

impl<'b> Object<'b> {
    pub fn open(out: &'b mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// `,"key":`, without the comma for the first member.
    #[inline(always)]
    fn key(&mut self, key: Key) {
        let first = usize::from(std::mem::replace(&mut self.empty, false));
        self.out.extend_from_slice(&key.0[first..]);
    }

    #[inline(always)]
    pub fn str(&mut self, key: Key, v: &str) {
        self.key(key);
        write_json_string(self.out, v);
    }

    /// A string from the code (a kind, an outcome, a route's path): one
    /// that needs no escape, so it is copied without a scan.
    #[inline(always)]
    pub fn label(&mut self, key: Key, v: &'static str) {
        debug_assert!(!v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(v.as_bytes());
        self.out.push(b'"');
    }

    #[inline(always)]
    pub fn opt_str(&mut self, key: Key, v: Option<&str>) {
        match v {
            Some(v) => self.str(key, v),
            None => self.raw(key, b"null"),
        }
    }

    #[inline(always)]
    pub fn u64(&mut self, key: Key, v: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    #[inline(always)]
    pub fn opt_u64(&mut self, key: Key, v: Option<u64>) {
        match v {
            Some(v) => self.u64(key, v),
            None => self.raw(key, b"null"),
        }
    }

    #[inline(always)]
    pub fn opt_bool(&mut self, key: Key, v: Option<bool>) {
        let raw: &[u8] = match v {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        };
        self.raw(key, raw);
    }

    /// A member whose value is already JSON.
    #[inline(always)]
    pub fn raw(&mut self, key: Key, json: &[u8]) {
        self.key(key);
        self.out.extend_from_slice(json);
    }

    /// A member serialized by serde (the rare parts: guardrail verdicts,
    /// cache notes).
    pub fn serde(&mut self, key: Key, v: &impl serde::Serialize) {
        self.key(key);
        let at = self.out.len();
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            self.out.truncate(at);
            self.out.extend_from_slice(b"null");
        }
    }

    /// A member holding an object, written by `f`.
    pub fn object(&mut self, key: Key, f: impl FnOnce(&mut Object<'_>)) {
        self.key(key);
        let mut inner = Object::open(self.out);
        f(&mut inner);
        inner.close();
    }

    /// A member holding an array of objects, one per item, each written by
    /// `f`.
    pub fn objects<T>(
        &mut self,
        key: Key,
        items: impl IntoIterator<Item = T>,
        mut f: impl FnMut(&mut Object<'_>, T),
    ) {
        self.key(key);
        self.out.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            let mut inner = Object::open(self.out);
            f(&mut inner, item);
            inner.close();
        }
        self.out.push(b']');
    }

    /// Milliseconds to the microsecond (`1.093`), as serde_json writes
    /// the float `ms` made: the shortest decimal of a whole number of
    /// microseconds over 1,000 is that number's own digits, so it is
    /// written from integers rather than formatted as a float.
    #[inline(always)]
    pub fn millis(&mut self, key: Key, d: std::time::Duration) {
        self.key(key);
        write_millis(self.out, d);
    }

    #[inline(always)]
    pub fn opt_millis(&mut self, key: Key, d: Option<std::time::Duration>) {
        match d {
            Some(d) => self.millis(key, d),
            None => self.raw(key, b"null"),
        }
    }

    /// The time now, RFC 3339 in milliseconds (`"2026-12-05T13:56:11.529Z"`);
    /// the part to the second is formatted once a second (`clock`).
    pub fn now(&mut self, key: Key, clock: &SecondClock) {
        self.key(key);
        clock.write_now(self.out);
    }

    pub fn close(self) {
        self.out.push(b'}');
    }
}

fn write_millis(out: &mut Vec<u8>, d: std::time::Duration) {
    // Microseconds rounded half up; a duration past u64 microseconds
    // saturates.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from((d.subsec_nanos() + 500) / 1000));
    let (whole, frac) = (micros / 1000, (micros % 1000) as u32);
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    out.push(b'.');
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..len]);
}

/// The wall clock's RFC 3339 text to the second, kept for the second it
/// names: an event's time costs a clock read and four digits.
#[derive(Default)]
pub struct SecondClock {
    second: std::cell::Cell<u64>,
    text: std::cell::Cell<[u8; 19]>,
}

impl SecondClock {
    fn write_now(&self, out: &mut Vec<u8>) {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since.as_secs();
        if second != self.second.get() || second == 0 {
            self.text.set(second_text(second));
            self.second.set(second);
        }
        let millis = since.subsec_millis();
        out.push(b'"');
        out.extend_from_slice(&self.text.get());
        out.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
            b'"',
        ]);
    }
}

/// `second` (since 1970) as RFC 3339 to the second, without the zone.
/// A clock before 1970 reads as 1970 (the caller clamps it to 0), one past
/// what RFC 3339 can write (year 9999) as its last second: neither panics
/// on a shard.
fn second_text(second: u64) -> [u8; 19] {
    use std::io::Write;
    /// 9999-12-31T23:59:59: past it humantime's formatter fails, and std
    /// panics on a formatter that fails.
    const LAST: u64 = 253_402_300_799;
    let mut head = *b"9999-12-31T23:59:59";
    if second > LAST {
        return head;
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(second);
    let mut text = Vec::with_capacity(20);
    let written = write!(text, "{}", humantime::format_rfc3339_seconds(at)).is_ok();
    if let (true, Some(t)) = (written, text.get(..19)) {
        head.copy_from_slice(t);
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds read as serde_json writes the float the audit used
    /// to compute: `(secs * 1e6).round() / 1e3`.
    #[test]
    fn millis_are_the_floats_serde_json_wrote() {
        for nanos in [
            0u64,
            1,
            499,
            500,
            1_000,
            1_500,
            5_000,
            10_000,
            90_000,
            1_093_000,
            1_090_400,
            2_000_000,
            999_999_999,
            1_234_567_890_123,
            86_400_000_000_000,
            7_654_321,
        ] {
            let d = std::time::Duration::from_nanos(nanos);
            let mut out = Vec::new();
            write_millis(&mut out, d);
            let float = (d.as_secs_f64() * 1e6).round() / 1e3;
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&float).unwrap(),
                "{nanos} ns"
            );
        }
    }

    #[test]
    fn half_microseconds_round_up_and_huge_durations_saturate() {
        let text = |d| {
            let mut out = Vec::new();
            write_millis(&mut out, d);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(std::time::Duration::from_nanos(124_500)), "0.125");
        assert_eq!(text(std::time::Duration::new(1, 2_500)), "1000.003");
        assert_eq!(text(std::time::Duration::MAX), "18446744073709551.615");
    }

    #[test]
    fn any_clock_gives_a_time() {
        assert_eq!(&second_text(0), b"1970-01-01T00:00:00");
        assert_eq!(&second_text(1_796_477_771), b"2026-12-05T13:36:11");
        assert_eq!(&second_text(253_402_300_799), b"9999-12-31T23:59:59");
        assert_eq!(&second_text(253_402_300_800), b"9999-12-31T23:59:59");
        assert_eq!(&second_text(u64::MAX), b"9999-12-31T23:59:59");
    }

    #[test]
    fn the_time_is_rfc3339_in_milliseconds() {
        let clock = SecondClock::default();
        for _ in 0..2 {
            let mut out = Vec::new();
            clock.write_now(&mut out);
            let text: String = serde_json::from_slice(&out).unwrap();
            let parsed = humantime::parse_rfc3339(&text).unwrap();
            let drift = std::time::SystemTime::now().duration_since(parsed).unwrap();
            assert!(drift < std::time::Duration::from_secs(2), "{text}");
            assert_eq!(text.len(), 24, "{text}");
        }
    }

    /// The same values through serde_json give the same bytes.
    #[test]
    fn members_are_written_as_serde_json_writes_them() {
        let mut out = Vec::new();
        let mut o = Object::open(&mut out);
        o.str(key!("s"), "a \"quoted\"\n\u{1}é");
        o.label(key!("l"), "/v1/chat");
        o.opt_str(key!("none"), None);
        o.u64(key!("n"), u64::MAX);
        o.opt_u64(key!("m"), Some(0));
        o.millis(key!("f"), std::time::Duration::from_micros(1093));
        o.millis(key!("whole"), std::time::Duration::from_secs(2) / 1000);
        o.opt_millis(key!("g"), None);
        o.opt_bool(key!("b"), Some(false));
        o.object(key!("inner"), |i| {
            i.u64(key!("x"), 1);
            i.opt_str(key!("y"), Some("z"));
        });
        o.objects(key!("list"), [1u64, 2], |i, n| i.u64(key!("n"), n));
        o.objects(key!("empty"), std::iter::empty::<u64>(), |i, n| {
            i.u64(key!("n"), n)
        });
        o.serde(key!("tags"), &["a", "b"]);
        o.close();
        let expected = serde_json::json!({
            "s": "a \"quoted\"\n\u{1}é", "l": "/v1/chat", "none": null, "n": u64::MAX, "m": 0, "f": 1.093,
            "whole": 2.0, "g": null, "b": false,
            "inner": {"x": 1, "y": "z"}, "list": [{"n": 1}, {"n": 2}], "empty": [], "tags": ["a", "b"],
        });
        let mut want = Vec::new();
        // serde_json's own writer, member order kept (preserve_order is
        // not on, so compare as text built in the same order).
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, expected);
        for (k, val) in expected.as_object().unwrap() {
            want.push(format!("{}:{}", serde_json::to_string(k).unwrap(), val));
        }
        let text = String::from_utf8(out).unwrap();
        for member in want {
            assert!(text.contains(&member), "{member} in {text}");
        }
    }
}
