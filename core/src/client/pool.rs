use super::{UpstreamConn, UpstreamStream};
use crate::config::{BaseUrl, HttpProvider, UpstreamSettings};
use crate::deadline::coarse_now;
use crate::io::{with_timeout, MaybeTls, ReadBuf};
use crate::runtime;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resolved addresses by (host, port), with when they were resolved.
type DnsCache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

/// Where a provider lives, with what its connections need.
pub struct Endpoint {
    pub base: BaseUrl,
    /// Present for https upstreams.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Host` header value, computed once.
    pub authority: String,
    /// Its idle connections' stack in the shard's pool.
    pub slot: usize,
}

/// What makes two providers' connections interchangeable: the same scheme,
/// host and port, and the same trust for TLS. Not the path, not the key
/// (sent per request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EndpointKey {
    tls: bool,
    host: String,
    port: u16,
    ca_file: Option<PathBuf>,
}

/// A shard's idle upstream connections, one stack per endpoint (LIFO: the
/// most recently used connection is the least likely to have been closed).
/// Stacks are found by endpoint, not by provider index, so connections
/// outlive config reloads that add, remove or reorder providers.
/// Shard-local: no locks, no atomics.
pub struct Pool {
    idle: RefCell<Vec<Vec<UpstreamConn>>>,
    slots: RefCell<HashMap<EndpointKey, usize>>,
    dns: RefCell<DnsCache>,
    settings: UpstreamSettings,
}

impl Pool {
    pub fn new(settings: UpstreamSettings) -> Self {
        Self {
            idle: RefCell::new(Vec::new()),
            slots: RefCell::new(HashMap::new()),
            dns: RefCell::new(HashMap::new()),
            settings,
        }
    }

    /// The endpoint of `http`, with its stack of idle connections (made
    /// when no provider of an earlier generation had the same endpoint).
    pub fn endpoint(
        &self,
        http: &HttpProvider,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Endpoint {
        self.endpoint_at(&http.base, http.ca_file.as_ref(), tls)
    }

    /// The endpoint at `base`, trusting `ca_file` besides the system's
    /// roots for TLS.
    pub fn endpoint_at(
        &self,
        base: &BaseUrl,
        ca_file: Option<&PathBuf>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Endpoint {
        let key = EndpointKey {
            tls: base.tls,
            host: base.host.clone(),
            port: base.port,
            ca_file: ca_file.cloned(),
        };
        let mut slots = self.slots.borrow_mut();
        let next = slots.len();
        let slot = *slots.entry(key).or_insert(next);
        if slot == next {
            self.idle.borrow_mut().push(Vec::new());
        }
        Endpoint {
            base: base.clone(),
            tls,
            authority: base.authority(),
            slot,
        }
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// An idle connection that still looks healthy, or a new one.
    pub async fn checkout(&self, ep: &Endpoint) -> io::Result<UpstreamConn> {
        self.checkout_within(ep, self.settings.connect_timeout)
            .await
    }

    /// [`Pool::checkout`], a new connection given `connect` to be made (a
    /// route's own connect timeout).
    pub async fn checkout_within(
        &self,
        ep: &Endpoint,
        connect: Duration,
    ) -> io::Result<UpstreamConn> {
        if let Some(conn) = self.take_idle(ep.slot) {
            return Ok(conn);
        }
        self.connect_within(ep, connect).await
    }

    fn take_idle(&self, slot: usize) -> Option<UpstreamConn> {
        let mut stacks = self.idle.borrow_mut();
        let idle = stacks.get_mut(slot)?;
        while let Some(conn) = idle.pop() {
            let idle_for = coarse_now().saturating_duration_since(conn.idle_since);
            if idle_for < self.settings.pool_idle_timeout && conn.looks_reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to its end.
    pub fn checkin(&self, slot: usize, mut conn: UpstreamConn) {
        let mut stacks = self.idle.borrow_mut();
        let Some(idle) = stacks.get_mut(slot) else {
            return;
        };
        if idle.len() >= self.settings.pool_max_idle_per_upstream {
            return;
        }
        conn.reused = true;
        conn.idle_since = coarse_now();
        conn.rbuf.shrink_idle(super::UPSTREAM_BUFFER);
        idle.push(conn);
    }

    /// A fresh connection, never from the pool. Boxed: resolving,
    /// connecting and a TLS handshake make a ~3 KiB future, which inline
    /// would size every request's future (moved into its box per request)
    /// for the rare request that opens a connection.
    pub async fn connect(&self, ep: &Endpoint) -> io::Result<UpstreamConn> {
        self.connect_within(ep, self.settings.connect_timeout).await
    }

    /// [`Pool::connect`] within `timeout` (TCP, then TLS, each).
    pub async fn connect_within(
        &self,
        ep: &Endpoint,
        timeout: Duration,
    ) -> io::Result<UpstreamConn> {
        Box::pin(self.open(ep, timeout)).await
    }

    async fn open(&self, ep: &Endpoint, timeout: Duration) -> io::Result<UpstreamConn> {
        let addrs = self.resolve(&ep.base.host, ep.base.port).await?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match runtime::connect(addr, timeout).await {
                Ok(tcp) => {
                    let stream: UpstreamStream = match &ep.tls {
                        None => MaybeTls::Plain(tcp),
                        Some(cfg) => {
                            let tls = with_timeout(
                                timeout,
                                crate::tls::connect_tls(cfg, &ep.base.host, tcp),
                            )
                            .await?;
                            MaybeTls::Tls(Box::new(tls))
                        }
                    };
                    return Ok(UpstreamConn::from(crate::client::Connection {
                        stream,
                        rbuf: ReadBuf::with_capacity(super::UPSTREAM_BUFFER),
                        reused: false,
                        idle_since: coarse_now(),
                    }));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let key = (host.to_owned(), port);
        if let Some((addrs, at)) = self.dns.borrow().get(&key) {
            if at.elapsed() < self.settings.dns_ttl {
                return Ok(addrs.clone());
            }
        }
        let addrs = runtime::resolve(host.to_owned(), port).await?;
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ));
        }
        self.dns
            .borrow_mut()
            .insert(key, (addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}

#[cfg(test)]
impl Pool {
    /// A pool with one empty stack, slot 0, for connections made by hand.
    fn with_slot(settings: UpstreamSettings) -> Self {
        let pool = Pool::new(settings);
        pool.idle.borrow_mut().push(Vec::new());
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use glommio::net::{TcpListener, TcpStream};
    use std::net::{Ipv4Addr, Shutdown};
    use std::time::Duration;

    /// The pool settings of a minimal config, with `max_idle` and
    /// `idle_timeout` set: the limits these tests are about.
    fn settings(max_idle: usize, idle_timeout: Duration) -> UpstreamSettings {
        let text = "listen: 127.0.0.1:0\nmodels: { demo: { targets: [ { provider: local, model: m } ] } }\nproviders: { local: { kind: mock } }\n";
        let mut s = Config::parse(text, &|_| None).unwrap().upstream;
        s.pool_max_idle_per_upstream = max_idle;
        s.pool_idle_timeout = idle_timeout;
        s
    }

    /// A fresh connection over loopback and its peer (kept open while the
    /// test holds it), as `Pool::open` would build one.
    async fn connected(listener: &TcpListener) -> (UpstreamConn, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let tcp = runtime::connect(addr, Duration::from_secs(5))
            .await
            .unwrap();
        let peer = listener.accept().await.unwrap();
        let conn = UpstreamConn::from(crate::client::Connection {
            stream: MaybeTls::Plain(tcp),
            rbuf: ReadBuf::with_capacity(super::super::UPSTREAM_BUFFER),
            reused: false,
            idle_since: coarse_now(),
        });
        (conn, peer)
    }

    fn local_port(conn: &UpstreamConn) -> u16 {
        conn.tcp().local_addr().unwrap().port()
    }

    fn listener() -> TcpListener {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap()
    }

    #[test]
    fn the_most_recently_returned_connection_serves_next_marked_reused() {
        glommio::LocalExecutor::default().run(async {
            let l = listener();
            let pool = Pool::with_slot(settings(8, Duration::from_secs(60)));
            let (a, _pa) = connected(&l).await;
            let (b, _pb) = connected(&l).await;
            let (port_a, port_b) = (local_port(&a), local_port(&b));
            pool.checkin(0, a);
            pool.checkin(0, b);
            let first = pool.take_idle(0).unwrap();
            assert_eq!(local_port(&first), port_b);
            assert!(first.reused);
            assert_eq!(local_port(&pool.take_idle(0).unwrap()), port_a);
            assert!(pool.take_idle(0).is_none());
            // An unknown provider index has no pool, and no panic.
            assert!(pool.take_idle(3).is_none());
        });
    }

    #[test]
    fn connections_beyond_the_idle_limit_are_closed_not_kept() {
        glommio::LocalExecutor::default().run(async {
            let l = listener();
            let pool = Pool::with_slot(settings(1, Duration::from_secs(60)));
            let (a, _pa) = connected(&l).await;
            let (b, _pb) = connected(&l).await;
            let port_a = local_port(&a);
            pool.checkin(0, a);
            pool.checkin(0, b);
            assert_eq!(local_port(&pool.take_idle(0).unwrap()), port_a);
            assert!(pool.take_idle(0).is_none());
        });
    }

    #[test]
    fn a_connection_idle_past_the_timeout_is_not_handed_out() {
        glommio::LocalExecutor::default().run(async {
            let l = listener();
            let pool = Pool::with_slot(settings(8, Duration::from_millis(50)));
            let (a, _pa) = connected(&l).await;
            pool.checkin(0, a);
            glommio::timer::sleep(Duration::from_millis(120)).await;
            assert!(pool.take_idle(0).is_none());
            let (b, _pb) = connected(&l).await;
            pool.checkin(0, b);
            assert!(pool.take_idle(0).is_some(), "a fresh one still is");
        });
    }

    #[test]
    fn a_connection_whose_peer_closed_or_spoke_unasked_is_skipped_for_a_live_one() {
        glommio::LocalExecutor::default().run(async {
            let l = listener();
            let pool = Pool::with_slot(settings(8, Duration::from_secs(60)));
            let (live, _p_live) = connected(&l).await;
            let (closed, p_closed) = connected(&l).await;
            let (chatty, mut p_chatty) = connected(&l).await;
            let port_live = local_port(&live);
            pool.checkin(0, live);
            pool.checkin(0, closed);
            pool.checkin(0, chatty);
            p_closed.shutdown(Shutdown::Write).await.unwrap();
            futures_lite::io::AsyncWriteExt::write_all(&mut p_chatty, b"HTTP/1.1 200 OK\r\n")
                .await
                .unwrap();
            // Let the bytes and the FIN reach the client sockets.
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert_eq!(local_port(&pool.take_idle(0).unwrap()), port_live);
        });
    }
}
