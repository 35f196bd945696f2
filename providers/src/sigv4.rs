//! AWS Signature Version 4 (header form), pure: every input, the time
//! included, is an argument.
//!
//! Steps, as AWS documents them ("Create a signed AWS API request"):
//! canonical request -> string to sign (`AWS4-HMAC-SHA256`, timestamp,
//! scope, hash of the canonical request) -> signing key
//! (`HMAC("AWS4"+secret, date)` -> region -> service -> `aws4_request`)
//! -> signature. Services other than S3 sign the path URI-encoded twice:
//! the path is given as sent (already encoded) and encoded once more here.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// SHA-256 of the empty payload.
pub const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What is signed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path as sent (already URI-encoded).
    pub path: &'a str,
    /// The query as sent (`a=1&b=2`, encoded), may be empty.
    pub query: &'a str,
    /// Extra headers to sign (besides host, x-amz-date and the token).
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
    /// Unix seconds.
    pub now_unix: u64,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `YYYYMMDDTHHMMSSZ` for unix seconds (UTC, proleptic Gregorian; civil
/// date from days after H. Hinnant's algorithm).
pub fn amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// RFC 3986 unreserved characters stay, everything else is `%XX`
/// (uppercase); `/` stays when `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The derived signing key for a date (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The canonical request and its signed-headers list, for headers that
/// already include host and x-amz-date.
pub fn canonical_request(req: &Request<'_>, headers: &[(String, String)]) -> (String, String) {
    let mut sorted: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    sorted.sort();
    let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = sorted.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let mut query: Vec<&str> = req.query.split('&').filter(|p| !p.is_empty()).collect();
    query.sort_unstable();
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri_encode(path, true),
        query.join("&"),
        canonical_headers,
        signed,
        req.payload_sha256
    );
    (canonical, signed)
}

/// The headers to add to `req`: `x-amz-date`, `x-amz-security-token` (with
/// a session token) and `authorization`.
pub fn sign(req: &Request<'_>, scope: &Scope<'_>, creds: &Credentials) -> Vec<(String, String)> {
    let timestamp = amz_date(scope.now_unix);
    let date = &timestamp[..8];
    let mut added = vec![("x-amz-date".to_owned(), timestamp.clone())];
    if let Some(token) = &creds.session_token {
        added.push(("x-amz-security-token".to_owned(), token.clone()));
    }
    let mut all: Vec<(String, String)> = req.headers.to_vec();
    all.push(("host".to_owned(), req.host.to_owned()));
    all.extend(added.iter().cloned());
    let (canonical, signed) = canonical_request(req, &all);
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{timestamp}\n{credential_scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = signing_key(&creds.secret_access_key, date, scope.region, scope.service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    added.push((
        "authorization".to_owned(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example (IAM ListUsers, 2015-08-30T12:36:00Z).
    const EXAMPLE_TIME: u64 = 1_440_938_160;

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(EXAMPLE_TIME), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn aws_documented_signing_key() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn aws_documented_example_request() {
        let headers = vec![(
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        )];
        let req = Request {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let scope = Scope {
            region: "us-east-1",
            service: "iam",
            now_unix: EXAMPLE_TIME,
        };
        let mut all = headers.clone();
        all.push(("host".into(), "iam.amazonaws.com".into()));
        all.push(("x-amz-date".into(), "20150830T123600Z".into()));
        let (canonical, _) = canonical_request(&req, &all);
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let signed = sign(&req, &scope, &example_creds());
        assert_eq!(
            signed[0],
            ("x-amz-date".to_owned(), "20150830T123600Z".to_owned())
        );
        assert_eq!(
            signed[1].1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn session_token_is_signed_and_path_double_encoded() {
        let creds = Credentials {
            session_token: Some("TOKEN".into()),
            ..example_creds()
        };
        let req = Request {
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path: "/model/anthropic.claude-v2%3A1/converse",
            query: "",
            headers: &[],
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let signed = sign(
            &req,
            &Scope {
                region: "us-east-1",
                service: "bedrock",
                now_unix: EXAMPLE_TIME,
            },
            &creds,
        );
        assert_eq!(
            signed[1],
            ("x-amz-security-token".to_owned(), "TOKEN".to_owned())
        );
        assert!(signed[2]
            .1
            .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"));
        let (canonical, _) = canonical_request(&req, &[]);
        assert!(canonical.contains("/model/anthropic.claude-v2%253A1/converse"));
        assert!(!format!("{creds:?}").contains("wJalr"));
    }
}
