//! Inbound HTTP/1.1: each shard accepts on its own SO_REUSEPORT socket and
//! serves every connection it accepted for that connection's whole life.

mod conn;
mod request;
mod request_id;
pub mod respond;

pub use conn::{ClientConn, Outcome};
pub use request::{header_text, Request};
pub use request_id::{RequestId, RequestIds};

use crate::error::GatewayError;
use crate::generation::Generation;
use crate::record::Trail;

/// What a listener serves. The server reads requests (heads, bodies, their
/// limits and deadlines, keep-alive) and makes each one's record; the
/// listener's router answers them. Each listener role has its own (the
/// model API, admin), so the server knows no route and no error shape.
///
/// `async fn` here is deliberate: every future runs on the shard that made
/// it (thread per core), so none needs to be `Send`.
#[allow(async_fn_in_trait)]
pub trait Router: 'static {
    /// The shape errors are written in (the client's dialect); the default
    /// is for a request whose head could not even be read.
    type Dialect: Copy + Default;

    /// The endpoint label of a request to `path`, for its record (one of a
    /// fixed set, never the client's text), and the dialect of errors about
    /// it written before it is routed.
    fn classify(&self, path: &[u8]) -> (&'static str, Self::Dialect);

    /// Answers a request refused before it was routed (its head or body
    /// could not be read) with `err`, and closes the connection: the
    /// request stream is in an unknown state.
    async fn refuse(
        &self,
        conn: &mut ClientConn,
        dialect: Self::Dialect,
        err: &GatewayError,
        rid: &str,
    );

    /// Answers one request on `generation` (the config current when it
    /// started); what it learns on the way goes into `trail`.
    async fn handle<'g>(
        &self,
        shard: &Rc<Shard>,
        generation: &'g Generation,
        conn: &mut ClientConn,
        req: Request<'_>,
        rid: &str,
        trail: &mut Trail<'g>,
    ) -> Outcome;
}

use crate::io::{with_timeout, MaybeTls};
use crate::shard::Shard;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Accepts on `listener` until shutdown begins; each connection runs as a
/// task inside `gate`, so shutdown can wait for them to finish.
///
/// A connection the shard cannot take is answered, not dropped: over the
/// per-shard limit, or with the process out of descriptors, the client
/// reads a 503 at once instead of hanging in the backlog. For the latter a
/// reserve descriptor is released to accept it, and taken back once that
/// connection is closed, so the shard keeps answering and serves again as
/// soon as descriptors free up.
pub async fn accept_loop<R: Router>(
    shard: Rc<Shard>,
    index: usize,
    listener: TcpListener,
    gate: Rc<Gate>,
    router: Rc<R>,
) {
    let max_conns = shard.config.limits.max_connections_per_shard;
    let mut reserve = Reserve::open();
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.wait_shutdown().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                let e = std::io::Error::from(e);
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if last_warning.is_none_or(|t| {
                    crate::deadline::coarse_now().saturating_duration_since(t)
                        >= Duration::from_secs(1)
                }) {
                    last_warning = Some(crate::deadline::coarse_now());
                    log::warn!("shard {}: accept failed: {e}", shard.id);
                }
                if out_of_fds && reserve.release() {
                    if let Ok(stream) = listener.accept().await {
                        shed(stream, "out of file descriptors").await;
                    }
                    reserve = Reserve::open();
                } else {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    reserve.reopen();
                }
                continue;
            }
        };
        if gate_count(&shard) >= max_conns {
            glommio::spawn_local(shed(stream, "connections per shard")).detach();
            continue;
        }
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let shard2 = shard.clone();
        let router = router.clone();
        let spawned = gate.spawn(async move {
            connection_started(&shard2);
            let tls = shard2.tls.get(index).and_then(|t| t.borrow().clone());
            let stream = match tls {
                None => Some(MaybeTls::Plain(stream)),
                Some(cfg) => {
                    let acceptor = futures_rustls::TlsAcceptor::from(cfg);
                    match with_timeout(shard2.config.limits.head_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(s) => Some(MaybeTls::Tls(Box::new(s))),
                        Err(e) => {
                            log::debug!("shard {} {peer}: TLS handshake failed: {e}", shard2.id);
                            None
                        }
                    }
                }
            };
            if let Some(stream) = stream {
                conn::serve(shard2.clone(), &*router, stream, peer).await;
            }
            connection_ended(&shard2);
        });
        match spawned {
            Ok(task) => {
                task.detach();
            }
            Err(_) => return,
        }
    }
}
/// Answers a connection the shard will not serve with a 503 and closes it.
/// What the client sent is read (briefly, bounded) before the close, so the
/// close is a FIN and not a reset that could discard the answer unread.
async fn shed(stream: glommio::net::TcpStream, why: &'static str) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    let body = respond::error(&crate::error::GatewayError::Overloaded(why), "", true);
    let budget = Duration::from_secs(1);
    if with_timeout(budget, stream.write_all(&body)).await.is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write).await;
        let mut sink = [0u8; 1024];
        let _ = with_timeout(budget, async {
            for _ in 0..64 {
                if stream.read(&mut sink).await? == 0 {
                    break;
                }
            }
            Ok(())
        })
        .await;
    }
    let _ = stream.close().await;
}

/// One descriptor held back for answering while the process is out of
/// them.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn open() -> Reserve {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    fn reopen(&mut self) {
        if self.0.is_none() {
            *self = Reserve::open();
        }
    }

    /// Frees the descriptor; false when there was none to free.
    fn release(&mut self) -> bool {
        self.0.take().is_some()
    }
}

fn gate_count(shard: &Shard) -> usize {
    shard.open_connections.get()
}

fn connection_started(shard: &Shard) {
    shard.open_connections.set(shard.open_connections.get() + 1);
}

fn connection_ended(shard: &Shard) {
    shard
        .open_connections
        .set(shard.open_connections.get().saturating_sub(1));
}
