//! Secrets in config: written as `${ENV_VAR}` or `${file:/path}` (or, for
//! local testing, a literal), resolved once at load time, and impossible to
//! print: `Secret` has no `Display`, its `Debug` is redacted, and it does not
//! implement `Serialize`.

use serde::de::Deserializer;
use serde::Deserialize;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret from somewhere other than the config file (the encrypted
    /// provider key store).
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret's value, for the one place that must send it (an upstream
    /// request header). Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A secret as written in the file, before resolution, so that resolution
/// errors can name the field.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRef(String);

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source() {
            SecretSource::Literal(_) => f.write_str("SecretRef([literal, redacted])"),
            other => write!(f, "SecretRef({other:?})"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum SecretSource<'a> {
    Env(&'a str),
    File(&'a str),
    Literal(&'a str),
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretRef)
    }
}

impl SecretRef {
    /// A config value (`${ENV}`, `${file:PATH}` or a literal) read by a
    /// section that deserializes it as a plain string.
    pub fn from_config(value: &str) -> Self {
        SecretRef(value.to_owned())
    }

    /// A reference to the environment variable `var`.
    pub fn env(var: &str) -> Self {
        SecretRef(format!("${{{var}}}"))
    }

    pub fn source(&self) -> SecretSource<'_> {
        let s = self.0.trim();
        match s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(inner) => match inner.strip_prefix("file:") {
                Some(path) => SecretSource::File(path.trim()),
                None => SecretSource::Env(inner.trim()),
            },
            None => SecretSource::Literal(s),
        }
    }

    /// Resolves the reference. `env` is passed in so tests need not mutate the
    /// process environment. Errors never contain the secret itself.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        match self.source() {
            SecretSource::Literal(v) => Ok(Secret(v.to_owned())),
            SecretSource::Env(var) => match env(var) {
                Some(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_owned())),
                Some(_) => Err(format!("environment variable {var} is empty")),
                None => Err(format!("environment variable {var} is not set")),
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_owned())),
                Ok(_) => Err(format!("secret file {path} is empty")),
                Err(e) => Err(format!("cannot read secret file {path}: {e}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_literal() {
        let env = |k: &str| (k == "K").then(|| "sk-123\n".to_owned());
        let r = SecretRef("${K}".into());
        assert_eq!(r.resolve(&env).unwrap().expose(), "sk-123");
        let missing = SecretRef("${NOPE}".into());
        assert_eq!(
            missing.resolve(&env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        let lit = SecretRef("abc".into());
        assert_eq!(lit.resolve(&env).unwrap().expose(), "abc");
        assert!(!format!("{:?}", lit.resolve(&env).unwrap()).contains("abc"));
        assert!(!format!("{lit:?}").contains("abc"));
    }
}
