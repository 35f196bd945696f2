//! Command-line values that clap can't parse alone: `http://` and
//! `https://` URLs resolved to socket addresses, and `compare` target specs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// An HTTP/1.1 target, plain or over TLS, resolved once on the main thread
/// before any shard starts (shards connect to the `SocketAddr`, never
/// resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub addr: SocketAddr,
    /// `https://`: TLS to `addr`, with SNI and verification for `server_name`.
    pub tls: bool,
    /// Value of the `Host` header: the authority as written.
    pub host: String,
    /// The host alone (no port, no IPv6 brackets): the TLS server name.
    pub server_name: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host, self.path)
    }
}

/// Parses `http[s]://HOST[:PORT][/PATH]` (default port 80 or 443). HOST is
/// an IP literal (`[::1]` for IPv6), `localhost`, or a name resolved here
/// (blocking, once, before any shard runs).
pub fn parse_url(s: &str) -> Result<HttpUrl, String> {
    let (tls, rest) = if let Some(rest) = s.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = s.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(format!(
            "{s:?}: only http:// and https:// URLs are supported"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{s:?}: missing host"));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) =
        split_host_port(authority, default_port).ok_or_else(|| format!("{s:?}: bad host:port"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: missing host"));
    }
    let addr = resolve(host, port).ok_or_else(|| format!("{s:?}: cannot resolve {host}"))?;
    Ok(HttpUrl {
        addr,
        tls,
        host: authority.to_string(),
        server_name: host.to_string(),
        path: path.to_string(),
    })
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => default_port,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, default_port)),
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    // Runs on the main thread while parsing arguments, before any shard.
    #[allow(clippy::disallowed_methods)]
    let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).ok()?;
    addrs.next()
}

/// One `compare --target NAME=URL[,pid=N][,model=M][,api-key=K]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub name: String,
    pub url: HttpUrl,
    /// Process whose CPU time is measured over each run.
    pub pid: Option<u32>,
    /// Overrides `--model` for this target.
    pub model: Option<String>,
    /// Overrides `--api-key` for this target.
    pub api_key: Option<String>,
}

pub fn parse_target(s: &str) -> Result<TargetSpec, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=URL[,pid=N][,model=M][,api-key=K]"))?;
    if name.is_empty() || name.contains(',') {
        return Err(format!("{s:?}: bad target name"));
    }
    let mut parts = rest.split(',');
    let url = parse_url(parts.next().unwrap_or(""))?;
    let mut target = TargetSpec {
        name: name.to_string(),
        url,
        pid: None,
        model: None,
        api_key: None,
    };
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: option {part:?} is not key=value"))?;
        match key {
            "pid" => {
                target.pid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("{s:?}: bad pid {value:?}"))?,
                )
            }
            "model" => target.model = Some(value.to_string()),
            "api-key" | "key" => target.api_key = Some(value.to_string()),
            _ => {
                return Err(format!(
                    "{s:?}: unknown target option {key:?} (pid, model, api-key)"
                ))
            }
        }
    }
    Ok(target)
}

/// `10s`, `500ms`, `1m` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs >= 0.0 && secs.is_finite() {
            return Ok(std::time::Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:8080/v1/chat/completions").unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.host, "127.0.0.1:8080");
        assert_eq!(u.path, "/v1/chat/completions");
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/v1/chat/completions");

        let u = parse_url("http://localhost:9").unwrap();
        assert_eq!(u.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(u.path, "/");
        let u = parse_url("http://[::1]:7/x?y=1").unwrap();
        assert_eq!(u.addr, "[::1]:7".parse().unwrap());
        assert_eq!(u.path, "/x?y=1");
        assert_eq!(parse_url("http://127.0.0.1/").unwrap().addr.port(), 80);
        assert!(!u.tls);

        let u = parse_url("https://localhost:8443/v1/messages").unwrap();
        assert!(u.tls);
        assert_eq!(u.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(u.host, "localhost:8443");
        assert_eq!(u.server_name, "localhost");
        assert_eq!(u.to_string(), "https://localhost:8443/v1/messages");
        let u = parse_url("https://[::1]/").unwrap();
        assert_eq!(u.addr, "[::1]:443".parse().unwrap());
        assert_eq!(u.server_name, "::1");
        assert_eq!(parse_url("https://127.0.0.1").unwrap().addr.port(), 443);

        assert!(parse_url("ftp://127.0.0.1/").is_err());
        assert!(parse_url("https://:443/").is_err());
        assert!(parse_url("http://").is_err());
        assert!(parse_url("http://127.0.0.1:x/").is_err());
        assert!(parse_url("http://[::1/").is_err());
    }

    #[test]
    fn targets() {
        let t = parse_target("gateway=http://127.0.0.1:5/v1/chat/completions,pid=1234,model=demo")
            .unwrap();
        assert_eq!(t.name, "gateway");
        assert_eq!(t.url.addr.port(), 5);
        assert_eq!(t.pid, Some(1234));
        assert_eq!(t.model.as_deref(), Some("demo"));
        assert_eq!(t.api_key, None);

        let t = parse_target("direct=http://127.0.0.1:6/v1/chat/completions").unwrap();
        assert_eq!((t.pid, t.model), (None, None));
        let t = parse_target("n=http://127.0.0.1:6/,api-key=sk-1").unwrap();
        assert_eq!(t.api_key.as_deref(), Some("sk-1"));

        assert!(parse_target("http://127.0.0.1:6/").is_err());
        assert!(parse_target("=http://127.0.0.1:6/").is_err());
        assert!(parse_target("x=http://127.0.0.1:6/,pid=abc").is_err());
        assert!(parse_target("x=http://127.0.0.1:6/,color=red").is_err());
        assert!(parse_target("x=http://127.0.0.1:6/,pid").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0ms").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
