//! Request heads: parsing on `httparse`, routing by path to a dialect, and
//! the per-dialect auth check.

use super::answer::ErrorStyle;
use super::gemini::Op;
use std::ops::Range;

/// The credentials each dialect must present, when a key is configured.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    /// The bare key (`x-api-key`, `x-goog-api-key`, `?key=`).
    pub(super) key: Option<Vec<u8>>,
    /// `Bearer KEY` (OpenAI, Bedrock API keys).
    pub(super) bearer: Option<Vec<u8>>,
}

impl Keys {
    pub(super) fn new(key: Option<&str>) -> Keys {
        Keys {
            key: key.map(|k| k.as_bytes().to_vec()),
            bearer: key.map(|k| format!("Bearer {k}").into_bytes()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
    Health,
    Messages,
    /// OpenAI's Responses API.
    Responses,
    Gemini(Op),
    Bedrock {
        stream: bool,
    },
    /// MCP over Streamable HTTP (both eras; see `mcp.rs`).
    Mcp,
    NotFound(ErrorStyle),
}

impl Route {
    pub(super) fn error_style(self) -> ErrorStyle {
        match self {
            Route::Messages => ErrorStyle::Anthropic,
            Route::Gemini(_) => ErrorStyle::Gemini,
            Route::Bedrock { .. } => ErrorStyle::Bedrock,
            Route::NotFound(style) => style,
            _ => ErrorStyle::OpenAi,
        }
    }
}

/// Routes a path (query removed). The model of Gemini and Bedrock paths is
/// returned as a sub-slice of `path`.
fn route<'a>(path: &'a str, query: &str) -> (Route, Option<&'a str>) {
    let r = match path {
        "/v1/chat/completions" | "/chat/completions" => Route::Chat,
        "/v1/completions" | "/completions" => Route::Completions,
        "/v1/embeddings" | "/embeddings" => Route::Embeddings,
        "/v1/models" | "/models" => Route::Models,
        "/healthz" | "/health" => Route::Health,
        "/v1/messages" | "/messages" => Route::Messages,
        "/v1/responses" | "/responses" => Route::Responses,
        "/mcp" => Route::Mcp,
        _ => {
            let gemini = path
                .strip_prefix("/v1beta")
                .or_else(|| path.strip_prefix("/v1"))
                .unwrap_or(path)
                .strip_prefix("/models/");
            if let Some(rest) = gemini {
                return match rest.rsplit_once(':') {
                    Some((model, op)) if !model.is_empty() => match Op::parse(op, query) {
                        Some(op) => (Route::Gemini(op), Some(model)),
                        None => (Route::NotFound(ErrorStyle::Gemini), None),
                    },
                    _ => (Route::NotFound(ErrorStyle::Gemini), None),
                };
            }
            // Azure OpenAI: the OpenAI dialect under a deployment, with an
            // api-version (the deployment picks the model; the body's is the
            // gateway's patch of it).
            if let Some(rest) = path.strip_prefix("/openai/deployments/") {
                let versioned = query.split('&').any(|kv| kv.starts_with("api-version="));
                return match rest.split_once('/') {
                    Some((d, op)) if !d.is_empty() && versioned => match op {
                        "chat/completions" => (Route::Chat, None),
                        "completions" => (Route::Completions, None),
                        "embeddings" => (Route::Embeddings, None),
                        _ => (Route::NotFound(ErrorStyle::OpenAi), None),
                    },
                    _ => (Route::NotFound(ErrorStyle::OpenAi), None),
                };
            }
            if let Some(rest) = path.strip_prefix("/model/") {
                return match rest.rsplit_once('/') {
                    Some((model, "converse")) if !model.is_empty() => {
                        (Route::Bedrock { stream: false }, Some(model))
                    }
                    Some((model, "converse-stream")) if !model.is_empty() => {
                        (Route::Bedrock { stream: true }, Some(model))
                    }
                    _ => (Route::NotFound(ErrorStyle::Bedrock), None),
                };
            }
            Route::NotFound(ErrorStyle::OpenAi)
        }
    };
    (r, None)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestHead {
    pub(super) route: Route,
    pub(super) method_ok: bool,
    pub(super) head_len: usize,
    pub(super) content_length: usize,
    pub(super) chunked: bool,
    pub(super) close: bool,
    pub(super) authorized: bool,
    /// Anthropic: the `anthropic-version` header is present.
    pub(super) anthropic_version: bool,
    pub(super) expect_continue: bool,
    /// The raw (still percent-encoded) model in the path, as a range of the
    /// request bytes.
    pub(super) path_model: Option<Range<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadError {
    Malformed,
    BadLength,
}

/// Where `part` (a sub-slice of `buf`) starts in `buf`.
fn offset_in(buf: &[u8], part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize)
}

/// Parses one request head at the start of `buf`; `Ok(None)` = need more.
pub(super) fn parse_request_head(
    buf: &[u8],
    keys: &Keys,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (route, model) = route(path, query);
    let path_model = model.map(|m| {
        let at = offset_in(buf, m);
        at..at + m.len()
    });
    let post = method == "POST";
    let method_ok = match route {
        Route::Models | Route::Health => method == "GET" || method == "HEAD",
        Route::NotFound(_) => true,
        _ => post,
    };
    let http10 = req.version == Some(0);
    let mut close = http10;
    let mut content_length = None;
    let mut chunked = false;
    let mut authorization: Option<&[u8]> = None;
    let mut x_api_key: Option<&[u8]> = None;
    let mut goog_key: Option<&[u8]> = None;
    let mut azure_key: Option<&[u8]> = None;
    let azure = path.starts_with("/openai/deployments/");
    let mut anthropic_version = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(HeadError::BadLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-api-key") {
            x_api_key = Some(h.value);
        } else if name.eq_ignore_ascii_case("api-key") {
            azure_key = Some(h.value);
        } else if name.eq_ignore_ascii_case("x-goog-api-key") {
            goog_key = Some(h.value);
        } else if name.eq_ignore_ascii_case("anthropic-version") {
            anthropic_version = true;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let authorized = match (&keys.key, &keys.bearer) {
        (Some(key), Some(bearer)) => match route {
            Route::Health | Route::NotFound(_) => true,
            _ if azure => azure_key == Some(key.as_slice()),
            Route::Messages => x_api_key == Some(key.as_slice()),
            Route::Gemini(_) => {
                let in_query = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("key="))
                    .any(|k| k.as_bytes() == key.as_slice());
                in_query || goog_key == Some(key.as_slice())
            }
            // SigV4 signatures are not verified: any signed request passes.
            Route::Bedrock { .. } => authorization
                .is_some_and(|a| a.starts_with(b"AWS4-HMAC-SHA256") || a == bearer.as_slice()),
            _ => authorization == Some(bearer.as_slice()),
        },
        _ => true,
    };
    Ok(Some(RequestHead {
        route,
        method_ok,
        head_len,
        content_length: content_length.unwrap_or(0),
        chunked,
        close,
        authorized,
        anthropic_version,
        expect_continue,
        path_model,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], key: Option<&str>) -> RequestHead {
        parse_request_head(raw, &Keys::new(key)).unwrap().unwrap()
    }

    #[test]
    fn request_heads() {
        let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nAuthorization: Bearer k\r\n\r\n";
        let h = head(raw, Some("k"));
        assert_eq!(h.route, Route::Chat);
        assert!(h.method_ok && h.authorized && !h.close && !h.chunked);
        assert_eq!(h.content_length, 12);
        assert_eq!(h.head_len, raw.len());
        assert!(!head(raw, Some("other")).authorized);
        for cut in 0..raw.len() {
            assert_eq!(parse_request_head(&raw[..cut], &Keys::default()), Ok(None));
        }

        // Azure: deployments with an api-version, keyed by `api-key`.
        let azure = b"POST /openai/deployments/gpt/chat/completions?api-version=2024-10-21 HTTP/1.1\r\napi-key: k\r\n\r\n";
        let h = head(azure, Some("k"));
        assert_eq!(h.route, Route::Chat);
        assert!(h.authorized);
        assert!(!head(azure, Some("other")).authorized);
        let unversioned = b"POST /openai/deployments/gpt/embeddings HTTP/1.1\r\napi-key: k\r\n\r\n";
        assert_eq!(
            head(unversioned, Some("k")).route,
            Route::NotFound(ErrorStyle::OpenAi)
        );

        let h = head(b"GET /healthz HTTP/1.0\r\n\r\n", Some("k"));
        assert_eq!(h.route, Route::Health);
        assert!(h.authorized && h.close && h.method_ok);
        let h = head(
            b"GET /v1/models?x=1 HTTP/1.1\r\nconnection: close\r\n\r\n",
            Some("k"),
        );
        assert_eq!(h.route, Route::Models);
        assert!(!h.authorized && h.close);
        let h = head(b"GET /v1/chat/completions HTTP/1.1\r\n\r\n", None);
        assert!(!h.method_ok);
        let h = head(
            b"POST /v1/embeddings HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
            None,
        );
        assert!(h.chunked && h.expect_continue);
        assert_eq!(
            head(b"GET /nope HTTP/1.1\r\n\r\n", None).route,
            Route::NotFound(ErrorStyle::OpenAi)
        );
        assert_eq!(
            parse_request_head(
                b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
                &Keys::default()
            ),
            Err(HeadError::BadLength)
        );
        assert_eq!(
            parse_request_head(b"\x01\x02 / HTTP/1.1\r\n\r\n", &Keys::default()),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn dialect_routes_and_keys() {
        let raw =
            b"POST /v1/messages HTTP/1.1\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n\r\n";
        let h = head(raw, Some("k"));
        assert_eq!(h.route, Route::Messages);
        assert!(h.authorized && h.anthropic_version);
        assert!(!head(raw, Some("j")).authorized);

        let raw = b"POST /v1beta/models/gemini-x:streamGenerateContent?alt=sse HTTP/1.1\r\nx-goog-api-key: k\r\n\r\n";
        let h = head(raw, Some("k"));
        assert_eq!(h.route, Route::Gemini(Op::Stream { sse: true }));
        assert!(h.authorized);
        assert_eq!(&raw[h.path_model.unwrap()], b"gemini-x");
        let raw = b"POST /models/g:generateContent?key=k HTTP/1.1\r\n\r\n";
        let h = head(raw, Some("k"));
        assert_eq!(h.route, Route::Gemini(Op::Generate));
        assert!(h.authorized);
        assert_eq!(
            head(b"POST /v1beta/models/g:nope HTTP/1.1\r\n\r\n", None).route,
            Route::NotFound(ErrorStyle::Gemini)
        );

        let raw = b"POST /model/anthropic.claude-v1%3A0/converse-stream HTTP/1.1\r\nauthorization: AWS4-HMAC-SHA256 Credential=x\r\n\r\n";
        let h = head(raw, Some("k"));
        assert_eq!(h.route, Route::Bedrock { stream: true });
        assert!(h.authorized);
        assert_eq!(&raw[h.path_model.unwrap()], b"anthropic.claude-v1%3A0");
        let raw = b"POST /model/m/converse HTTP/1.1\r\n\r\n";
        let h = head(raw, Some("k"));
        assert_eq!(h.route, Route::Bedrock { stream: false });
        assert!(!h.authorized);
        assert!(head(raw, None).authorized);
    }
}
