//! Glommio, kept behind one small module: spawning pinned shards, building
//! SO_REUSEPORT listeners, carrying control messages from the main thread to
//! shards, and resolving names off the shards.
//!
//! Invariants: a shard never blocks its core (DNS and file reads go through
//! `spawn_blocking`); cross-shard and main-to-shard communication is by
//! message passing over crossbeam channels, never by shared locks.

use atomic_waker::AtomicWaker;
use crossbeam::channel::{Receiver, Sender};
use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::task::Poll;
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
    /// A reloaded config, already checked and compiled.
    Reload(Box<Reload>),
}

/// A new config generation for every shard: the next requests use it,
/// those under way finish on theirs.
#[derive(Clone)]
pub struct Reload {
    pub number: u64,
    pub config: Arc<crate::config::Config>,
    pub policies: shardgate_policy::PolicySet,
    /// One per provider of `config`.
    pub upstream_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// Each shard sends its id once the generation is its current one.
    pub applied: crossbeam::channel::Sender<usize>,
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

/// The sending end of a channel into a shard from another thread (the
/// main thread's control messages, a stdio MCP server's replies). Each
/// send wakes the receiving task through glommio's cross-thread waker path
/// (an eventfd write only when the shard sleeps), so an idle shard sleeps
/// until a message comes instead of polling for one.
pub struct WakingSender<T> {
    /// `None` once dropped, so the wake in `drop` comes after the
    /// disconnect it announces.
    tx: Option<Sender<T>>,
    wake: Arc<AtomicWaker>,
}

impl<T> WakingSender<T> {
    pub fn send(&self, msg: T) -> Result<(), crossbeam::channel::SendError<T>> {
        let sent = match &self.tx {
            Some(tx) => tx.send(msg),
            None => Err(crossbeam::channel::SendError(msg)),
        };
        self.wake.wake();
        sent
    }
}

impl<T> Drop for WakingSender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.wake.wake();
    }
}

/// The shard's end: one task awaits it at a time.
pub struct WakingReceiver<T> {
    rx: Receiver<T>,
    wake: Arc<AtomicWaker>,
}

impl<T> WakingReceiver<T> {
    /// The next message; `None` when every sender is gone.
    pub async fn recv(&self) -> Option<T> {
        use crossbeam::channel::TryRecvError;
        std::future::poll_fn(|cx| {
            for attempt in 0..2 {
                match self.rx.try_recv() {
                    Ok(msg) => return Poll::Ready(Some(msg)),
                    Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                    // Registered before the second look, so a message sent
                    // in between still wakes this task.
                    Err(TryRecvError::Empty) if attempt == 0 => self.wake.register(cx.waker()),
                    Err(TryRecvError::Empty) => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// A channel from any thread into a shard's task (one sender).
pub fn waking_channel<T>() -> (WakingSender<T>, WakingReceiver<T>) {
    let (tx, rx) = crossbeam::channel::unbounded();
    let wake = Arc::new(AtomicWaker::new());
    (
        WakingSender {
            tx: Some(tx),
            wake: wake.clone(),
        },
        WakingReceiver { rx, wake },
    )
}

/// The main thread's end of one shard's control channel.
pub type ControlSender = WakingSender<Control>;
/// A shard's end of its control channel.
pub type ControlReceiver = WakingReceiver<Control>;

fn control_channel() -> (ControlSender, ControlReceiver) {
    waking_channel()
}

pub struct ShardHandle {
    pub control: ControlSender,
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
    /// Pin each shard to its CPU from [`crate::config::Config::placement`].
    pub pin: bool,
    pub spin_before_park: Option<Duration>,
}

/// Spawns shard `id`, pinned to `cpu` (from [`crate::placement`], inside the
/// process's allowed set) or, with `None`, left to the scheduler within
/// that set (`--no-pin`). Runs `main` with the control receiver.
pub fn spawn_shard<F, Fut>(
    id: usize,
    cpu: Option<usize>,
    settings: ExecutorSettings,
    main: F,
) -> io::Result<ShardHandle>
where
    F: FnOnce(ControlReceiver) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = control_channel();
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
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

/// Spawns the ops executor: unpinned (the scheduler keeps it within the
/// process's allowed CPUs, beside the shards it seldom disturbs) and never
/// spinning, since it idles between operators' requests. Runs `main` with
/// the control receiver.
pub fn spawn_ops<F, Fut>(main: F) -> io::Result<ShardHandle>
where
    F: FnOnce(ControlReceiver) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = control_channel();
    let join = LocalExecutorBuilder::new(Placement::Unbound)
        .name("ops")
        .io_memory(256 << 10)
        .spawn(move || main(rx))
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(ShardHandle { control: tx, join })
}

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
