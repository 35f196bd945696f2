//! Money: integer micro-dollars (1 USD = 1_000_000), never floats.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-dollars per dollar.
pub const MICROS_PER_USD: u64 = 1_000_000;

/// An amount of US dollars held as integer micro-dollars.
///
/// Deserializes from an integer (`5000`), a decimal string (`"5000.50"`), or
/// a YAML/JSON float (`5000.50`). A float is turned back into the shortest
/// decimal text that reads as the same float (Rust's `{}` formatting), and
/// that text is parsed exactly, so `0.1` means 100_000 micro-dollars, not
/// 0.1000000000000000055…. More than 6 decimal places, negatives, and
/// amounts past u64 micro-dollars are errors, never rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usd(pub u64);

impl Usd {
    pub const fn from_micros(micros: u64) -> Self {
        Usd(micros)
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Parses `123`, `123.4`, `0.000001`, `1e3`-free decimal text exactly.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let s = s.trim();
        let s = s.strip_prefix('$').unwrap_or(s);
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !digits_ok(int) || !digits_ok(frac) {
            return Err(MoneyError::NotADecimal(s.to_owned()));
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > 6 {
            return Err(MoneyError::TooPrecise(s.to_owned()));
        }
        let mut micros: u64 = 0;
        for b in int.bytes() {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| MoneyError::TooLarge(s.to_owned()))?;
        }
        micros = micros
            .checked_mul(MICROS_PER_USD)
            .ok_or_else(|| MoneyError::TooLarge(s.to_owned()))?;
        let mut scale = MICROS_PER_USD / 10;
        for b in frac.bytes() {
            micros += u64::from(b - b'0') * scale;
            scale /= 10;
        }
        Ok(Usd(micros))
    }
}

impl fmt::Display for Usd {
    /// `5000`, `5000.5`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_USD;
        let frac = self.0 % MICROS_PER_USD;
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not a non-negative decimal amount of USD")]
    NotADecimal(String),
    #[error("`{0}` has more than 6 decimal places (micro-dollar precision)")]
    TooPrecise(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Usd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative USD amount like 5000 or \"5000.50\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Usd, E> {
                v.checked_mul(MICROS_PER_USD)
                    .map(Usd)
                    .ok_or_else(|| E::custom(MoneyError::TooLarge(v.to_string())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Usd, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(MoneyError::NotADecimal(v.to_string()))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Usd, E> {
                // Shortest round-trip decimal text, then exact parsing.
                let text = format!("{v}");
                Usd::parse(&text).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Usd, E> {
                Usd::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(Usd::parse("5000"), Ok(Usd(5_000_000_000)));
        assert_eq!(Usd::parse("5000.50"), Ok(Usd(5_000_500_000)));
        assert_eq!(Usd::parse("0.1"), Ok(Usd(100_000)));
        assert_eq!(Usd::parse("0.000001"), Ok(Usd(1)));
        assert_eq!(Usd::parse(".5"), Ok(Usd(500_000)));
        assert_eq!(Usd::parse("2.50000000"), Ok(Usd(2_500_000)));
        assert_eq!(Usd::parse("$3"), Ok(Usd(3_000_000)));
        assert!(matches!(
            Usd::parse("0.0000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(Usd::parse("-1"), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(Usd::parse("1e3"), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(Usd::parse(""), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(Usd::parse("."), Err(MoneyError::NotADecimal(_))));
        assert!(matches!(
            Usd::parse("99999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
    }

    #[test]
    fn deserializes_ints_strings_and_floats() {
        let v: Usd = serde_json::from_str("5000").unwrap();
        assert_eq!(v, Usd(5_000_000_000));
        let v: Usd = serde_json::from_str("5000.50").unwrap();
        assert_eq!(v, Usd(5_000_500_000));
        let v: Usd = serde_json::from_str("0.1").unwrap();
        assert_eq!(v, Usd(100_000));
        let v: Usd = serde_json::from_str("\"1234.567891\"").unwrap();
        assert_eq!(v, Usd(1_234_567_891));
        let v: Usd = serde_yaml_ng::from_str("5000.50").unwrap();
        assert_eq!(v, Usd(5_000_500_000));
        assert!(serde_json::from_str::<Usd>("-5").is_err());
    }

    #[test]
    fn displays() {
        assert_eq!(Usd(5_000_500_000).to_string(), "5000.5");
        assert_eq!(Usd(1).to_string(), "0.000001");
        assert_eq!(Usd(7_000_000).to_string(), "7");
    }
}
