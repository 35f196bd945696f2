//! Glommio, kept behind one small module: spawning pinned shards, building
//! SO_REUSEPORT listeners, carrying control messages from the main thread to
//! shards, and resolving names off the shards.
//!
//! Invariants: a shard never blocks its core (DNS and file reads go through
//! `spawn_blocking`); cross-shard and main-to-shard communication is by
//! message passing over crossbeam channels, never by shared locks.

use crossbeam::channel::{Receiver, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

/// Messages from the main thread to every shard.
#[derive(Clone)]
pub enum Control {
    /// Stop accepting, finish in-flight work within the drain timeout, exit.
    Shutdown,
    /// New TLS certificates for listener `listener`.
    TlsReload {
        listener: usize,
        config: Arc<rustls::ServerConfig>,
    },
    /// The key table changed (a key created, revoked or expired elsewhere):
    /// each shard gets its own copy.
    Keys(Box<shardgate_policy::KeyStore>),
}

/// One listening socket per shard per listener, all bound to the same address
/// with SO_REUSEPORT so the kernel spreads connections across shards.
pub fn bind_listeners(
    addr: SocketAddr,
    shards: usize,
    backlog: i32,
) -> io::Result<Vec<StdListener>> {
    let mut out = Vec::with_capacity(shards);
    let mut bound = addr;
    for _ in 0..shards {
        let domain = socket2::Domain::for_address(bound);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nodelay(true)?;
        if bound.is_ipv6() {
            sock.set_only_v6(false).ok();
        }
        sock.bind(&bound.into())?;
        sock.listen(backlog)?;
        sock.set_nonblocking(true)?;
        let l: StdListener = sock.into();
        // With port 0 the first bind picks the port; the rest must share it.
        bound = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Turns a socket built on the main thread into a glommio listener on the
/// current shard.
pub fn adopt_listener(l: StdListener) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = l.into_raw_fd();
    // SAFETY: `fd` comes from `into_raw_fd`, so it is an open listening
    // socket whose ownership moves into the glommio listener exactly once.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}

pub struct ShardHandle {
    pub control: Sender<Control>,
    join: glommio::ExecutorJoinHandle<()>,
}

impl ShardHandle {
    pub fn join(self) -> Result<(), String> {
        self.join.join().map_err(|e| e.to_string())
    }
}

/// Settings for the executors, from config.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorSettings {
    pub pin: bool,
    pub spin_before_park: Option<Duration>,
}

/// Spawns shard `id`, pinned to a core when possible, running `main` with the
/// control receiver.
pub fn spawn_shard<F, Fut>(
    id: usize,
    settings: ExecutorSettings,
    main: F,
) -> io::Result<ShardHandle>
where
    F: FnOnce(Receiver<Control>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = crossbeam::channel::unbounded();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = if settings.pin {
        Placement::Fixed(id % cores)
    } else {
        Placement::Unbound
    };
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&format!("shard-{id}"))
        // Glommio registers this much memory with io_uring for file IO, which
        // the gateway does not do; keep it small so locked-memory limits and
        // per-shard footprint stay low.
        .io_memory(256 << 10);
    if let Some(spin) = settings.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    let join = builder
        .spawn(move || main(rx))
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(ShardHandle { control: tx, join })
}

/// Waits for the next control message without blocking the shard. The
/// channel is polled on a timer rather than waited on from glommio's blocking
/// pool: a receive parked there forever would hold the pool's thread that
/// name resolution needs. `None` when the main thread is gone.
pub async fn recv_control(rx: &Receiver<Control>) -> Option<Control> {
    loop {
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(crossbeam::channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam::channel::TryRecvError::Empty) => {
                glommio::timer::sleep(CONTROL_POLL).await;
            }
        }
    }
}

/// How often shards look for control messages: bounds how late a shutdown or
/// certificate reload is noticed.
const CONTROL_POLL: Duration = Duration::from_millis(25);

/// Resolves `host:port` on a helper thread, so a slow DNS server never stalls
/// a shard.
pub async fn resolve(host: String, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    glommio::executor()
        .spawn_blocking(move || {
            #[allow(clippy::disallowed_methods)] // runs on the blocking pool, not a shard
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .map(|it| it.collect::<Vec<_>>())
        })
        .await
}

/// Connects to an already resolved address within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<glommio::net::TcpStream> {
    let s = glommio::net::TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)?;
    s.set_nodelay(true).map_err(io::Error::from)?;
    Ok(s)
}
