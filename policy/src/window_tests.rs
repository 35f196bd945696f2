use super::*;

const DAY: u64 = 86_400_000;

fn ts(secs: u64) -> Timestamp {
    Timestamp(secs * 1000)
}

#[test]
fn civil_round_trip_and_known_dates() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2024, 1, 1), 19_723); // 1704067200 s
    assert_eq!(days_from_civil(2024, 3, 1), 19_783); // 1709251200 s
    assert_eq!(days_from_civil(2025, 1, 1), 20_089); // 1735689600 s
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    for d in 0..200_000 {
        let (y, m, dd) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, dd), d, "day {d}");
    }
}

#[test]
fn minute_window_boundaries() {
    let p = Period::Minute;
    let t = Timestamp(1_704_067_259_999); // 2024-01-01T00:00:59.999Z
    assert_eq!(p.start(t), ts(1_704_067_200));
    assert_eq!(p.end(p.start(t)), ts(1_704_067_260));
    let mut w = Window::new(p, t);
    w.add(5, t);
    assert_eq!(w.used_at(t), 5);
    assert_eq!(w.reset_in_ms(t), 1);
    let next = t.plus_ms(1);
    assert_eq!(w.used_at(next), 0);
    assert!(w.rollover(next));
    assert_eq!(w.start(), ts(1_704_067_260));
    assert_eq!(w.reset_in_ms(next), 60_000);
}

#[test]
fn day_window_boundaries() {
    let p = Period::Day;
    let last_ms_of_2024 = Timestamp(1_735_689_600_000 - 1);
    assert_eq!(p.start(last_ms_of_2024), ts(1_735_689_600 - 86_400));
    let mut w = Window::new(p, last_ms_of_2024);
    w.add(7, last_ms_of_2024);
    assert!(!w.rollover(last_ms_of_2024));
    assert!(w.rollover(ts(1_735_689_600)));
    assert_eq!(w.start(), ts(1_735_689_600));
    assert_eq!(w.end(), Timestamp(1_735_689_600_000 + DAY));
}

#[test]
fn month_window_dec_to_jan() {
    let p = Period::Month;
    let dec_mid = ts(1_735_000_000); // 2024-12-24
    assert_eq!(
        p.start(dec_mid),
        Timestamp(days_from_civil(2024, 12, 1) * DAY)
    );
    assert_eq!(p.end(p.start(dec_mid)), ts(1_735_689_600)); // 2025-01-01
    let mut w = Window::new(p, dec_mid);
    w.add(1_000_000, dec_mid);
    assert!(!w.rollover(Timestamp(1_735_689_600_000 - 1)));
    assert!(w.rollover(ts(1_735_689_600)));
    assert_eq!(w.used_at(ts(1_735_689_600)), 0);
    assert_eq!(civil_from_days(w.end().0 / DAY), (2025, 2, 1));
}

#[test]
fn month_window_leap_february() {
    let p = Period::Month;
    let feb_2024 = Timestamp(days_from_civil(2024, 2, 10) * DAY);
    let start = p.start(feb_2024);
    assert_eq!(start, Timestamp(days_from_civil(2024, 2, 1) * DAY));
    assert_eq!(p.end(start).0 - start.0, 29 * DAY);
    assert_eq!(p.end(start), ts(1_709_251_200)); // 2024-03-01
                                                 // The last millisecond of Feb 29 is still February.
    assert_eq!(p.start(Timestamp(1_709_251_200_000 - 1)), start);
    let feb_2023 = Timestamp(days_from_civil(2023, 2, 10) * DAY);
    let s23 = p.start(feb_2023);
    assert_eq!(p.end(s23).0 - s23.0, 28 * DAY);
    // 2100 is not a leap year, 2000 is.
    let s2100 = p.start(Timestamp(days_from_civil(2100, 2, 3) * DAY));
    assert_eq!(p.end(s2100).0 - s2100.0, 28 * DAY);
    let s2000 = p.start(Timestamp(days_from_civil(2000, 2, 3) * DAY));
    assert_eq!(p.end(s2000).0 - s2000.0, 29 * DAY);
}

#[test]
fn clock_going_back_keeps_window() {
    let t = ts(1_704_067_230);
    let mut w = Window::new(Period::Minute, t);
    w.add(3, t);
    assert!(!w.rollover(ts(1_704_067_100)));
    assert_eq!(w.used_at(ts(1_704_067_100)), 3);
}

#[test]
fn release_only_in_same_window_and_never_negative() {
    let t = ts(1_704_067_230);
    let mut w = Window::new(Period::Minute, t);
    w.add(10, t);
    w.release(25, w.start(), t);
    assert_eq!(w.used_at(t), 0);
    w.add(10, t);
    let old = w.start();
    let later = ts(1_704_067_290);
    w.add(4, later);
    w.release(10, old, later);
    assert_eq!(w.used_at(later), 4);
}

#[test]
fn reset_strings_like_openai() {
    assert_eq!(format_reset(0), "0ms");
    assert_eq!(format_reset(17), "17ms");
    assert_eq!(format_reset(1000), "1s");
    assert_eq!(format_reset(1500), "1.5s");
    assert_eq!(format_reset(1250), "1.25s");
    assert_eq!(format_reset(360_000), "6m0s");
    assert_eq!(format_reset(59_999), "59.999s");
    assert_eq!(format_reset(1_010), "1.01s");
    assert_eq!(format_reset(60_000), "1m0s");
    assert_eq!(format_reset(61_200), "1m1.2s");
    assert_eq!(format_reset(3_600_000), "1h0m0s");
    assert_eq!(format_reset(86_399_000), "23h59m59s");
    assert_eq!(format_reset(90_061_001), "25h1m1.001s");
    assert_eq!(format_reset(86_399_000), "23h59m59s");
    assert_eq!(format_reset(3_600_000), "1h0m0s");
}

#[test]
fn limit_kind_names_round_trip() {
    use crate::counters::LimitKind;
    for k in LimitKind::ALL {
        assert_eq!(LimitKind::parse(k.as_str()), Some(k));
    }
    assert_eq!(LimitKind::parse("nope"), None);
}
