//! How long an upstream that refused a request (429, 503) asked to be left
//! alone, from whichever of its headers says so. Providers say it in
//! different ways:
//!
//! - `retry-after-ms` (OpenAI, Azure): milliseconds, the most precise;
//! - `retry-after`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3);
//! - OpenAI's `x-ratelimit-reset-requests` / `-tokens`: a Go-style duration
//!   (`1s`, `6m0s`, `8.64s`, `20ms`) until that limit refills;
//! - Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,
//!   output-tokens}-reset`: an RFC 3339 time.
//!
//! A reset header names when one limit refills; the one that matters is
//! the limit that ran out (its `-remaining` is 0). When none says it ran
//! out, the soonest reset is taken: the refusal is about one of them.
//! Providers send reset headers on most answers, so they are read only on
//! a 429; a 503 or another 5xx says when to come back only by
//! `retry-after(-ms)`.

use std::time::{Duration, SystemTime};

/// Waits longer than this are not believed (a misread date, a clock far
/// off): the route's own backoff applies instead.
const MAX_HINT: Duration = Duration::from_secs(3600);

/// Seconds as a duration, when they are a sane one (never a panic on an
/// upstream's nonsense).
fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s >= 0.0 && s <= MAX_HINT.as_secs_f64()).then(|| Duration::from_secs_f64(s))
}

/// The wait asked for by the headers of an answer with `status` that
/// `header` looks up (case-insensitive names), at wall-clock time `now`.
pub fn wait_hint<'h>(
    status: u16,
    header: impl Fn(&str) -> Option<&'h [u8]>,
    now: SystemTime,
) -> Option<Duration> {
    if status != 429 && status < 500 {
        return None;
    }
    let text = |name: &str| {
        header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    };
    let hint = if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        secs(ms / 1000.0)
    } else if let Some(v) = text("retry-after") {
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => humantime::parse_rfc3339_weak(v)
                .ok()
                .or_else(|| httpdate(v))
                .map(|at| at.duration_since(now).unwrap_or_default()),
        }
    } else if status != 429 {
        None
    } else {
        let openai = [
            (
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ),
            ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
        ]
        .map(|(rem, reset)| (text(rem), text(reset).and_then(go_duration)));
        let anthropic = ["requests", "tokens", "input-tokens", "output-tokens"].map(|kind| {
            let at = |suffix: &str| text(&format!("anthropic-ratelimit-{kind}-{suffix}"));
            let reset = at("reset")
                .and_then(|v| humantime::parse_rfc3339_weak(v).ok())
                .map(|t| t.duration_since(now).unwrap_or_default());
            (at("remaining"), reset)
        });
        let resets = openai.into_iter().chain(anthropic);
        let mut ran_out: Option<Duration> = None;
        let mut soonest: Option<Duration> = None;
        for (remaining, reset) in resets {
            let Some(reset) = reset else { continue };
            if remaining == Some("0") {
                ran_out = Some(ran_out.map_or(reset, |r| r.max(reset)));
            }
            soonest = Some(soonest.map_or(reset, |s| s.min(reset)));
        }
        ran_out.or(soonest)
    };
    hint.filter(|d| *d <= MAX_HINT)
}

/// An IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`).
fn httpdate(v: &str) -> Option<SystemTime> {
    // `Wed, 21 Oct 2015 07:28:00 GMT` -> `2015-10-21T07:28:00Z`.
    let mut parts = v.split_whitespace();
    let (_, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if zone != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == month)? + 1;
    let day: u32 = day.parse().ok()?;
    humantime::parse_rfc3339(&format!("{year}-{m:02}-{day:02}T{time}Z")).ok()
}

/// A Go `time.Duration` string (`1h2m3.5s`, `20ms`, `6m0s`).
fn go_duration(v: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = v;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(headers: &[(&str, &str)]) -> Option<Duration> {
        hint_on(429, headers)
    }

    fn hint_on(status: u16, headers: &[(&str, &str)]) -> Option<Duration> {
        let now = humantime::parse_rfc3339("2026-12-05T10:00:00Z").unwrap();
        wait_hint(
            status,
            |name| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_bytes())
            },
            now,
        )
    }

    #[test]
    fn every_provider_form() {
        let ms = Duration::from_millis;
        assert_eq!(
            hint(&[("retry-after-ms", "1500"), ("retry-after", "9")]),
            Some(ms(1500))
        );
        assert_eq!(hint(&[("retry-after", "7")]), Some(ms(7000)));
        assert_eq!(
            hint(&[("retry-after", "Sat, 05 Dec 2026 10:00:30 GMT")]),
            Some(ms(30_000))
        );
        // OpenAI: the limit that ran out, not the other.
        assert_eq!(
            hint(&[
                ("x-ratelimit-remaining-requests", "12"),
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "6m0s"),
            ]),
            Some(ms(360_000))
        );
        assert_eq!(
            hint(&[("x-ratelimit-reset-requests", "8.64s")]),
            Some(ms(8640))
        );
        assert_eq!(
            hint(&[
                ("anthropic-ratelimit-requests-remaining", "0"),
                ("anthropic-ratelimit-requests-reset", "2026-12-05T10:00:02Z"),
                ("anthropic-ratelimit-tokens-reset", "2026-12-05T10:00:40Z"),
            ]),
            Some(ms(2000))
        );
        // A reset in the past: go now.
        assert_eq!(
            hint(&[("anthropic-ratelimit-tokens-reset", "2026-12-05T09:00:00Z")]),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn nonsense_is_no_hint() {
        assert_eq!(hint(&[]), None);
        assert_eq!(hint(&[("retry-after", "soon")]), None);
        assert_eq!(hint(&[("retry-after-ms", "-5")]), None);
        assert_eq!(hint(&[("x-ratelimit-reset-requests", "1 fortnight")]), None);
        assert_eq!(hint(&[("retry-after", "999999")]), None, "over an hour");
        assert_eq!(go_duration("2m3.5s"), Some(Duration::from_secs_f64(123.5)));
        assert_eq!(go_duration("1h2m3.5s"), None, "over an hour");
        // Nothing too large for a duration panics.
        assert_eq!(hint(&[("retry-after-ms", "1e300")]), None);
        assert_eq!(
            hint(&[("x-ratelimit-reset-requests", "99999999999999999999s")]),
            None
        );
        // Reset headers ride on most answers: only a 429's count; a 5xx says
        // when by retry-after alone, and other errors say nothing.
        let resets = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
        ];
        assert_eq!(hint_on(500, &resets), None);
        assert_eq!(
            hint_on(503, &[("retry-after", "2")]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(hint_on(400, &[("retry-after", "2")]), None);
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration(""), None);
    }
}
