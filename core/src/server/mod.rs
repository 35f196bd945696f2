//! Inbound HTTP/1.1: each shard accepts on its own SO_REUSEPORT socket and
//! serves every connection it accepted for that connection's whole life.

mod conn;
mod request;
mod request_id;
pub mod respond;

pub use conn::{send_error, ClientConn, Outcome};
pub use request::Request;
pub use request_id::{RequestId, RequestIds};

use crate::io::{with_timeout, MaybeTls};
use crate::shard::Shard;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use std::rc::Rc;

/// Accepts on `listener` until shutdown begins; each connection runs as a
/// task inside `gate`, so shutdown can wait for them to finish.
pub async fn accept_loop(shard: Rc<Shard>, index: usize, listener: TcpListener, gate: Rc<Gate>) {
    let max_conns = shard.config.limits.max_connections_per_shard;
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
                // EMFILE and friends: back off briefly instead of spinning.
                log::warn!("shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if gate_count(&shard) >= max_conns {
            // Over the per-shard connection limit: close at once; the kernel's
            // backlog and other shards absorb the rest.
            drop(stream);
            continue;
        }
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let shard2 = shard.clone();
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
                conn::serve(shard2.clone(), stream, peer).await;
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
