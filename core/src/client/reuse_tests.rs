use super::*;
use crate::deadline::coarse_now;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// An upstream connection whose peer has sent `sent` and then, with
/// `close`, shut its side (else it stays open and silent; it is returned
/// so it does not close when dropped). Real loopback sockets: the readers
/// under test read through the pool's connection type.
pub(super) async fn upstream(sent: &[u8], close: bool) -> (UpstreamConn, TcpStream) {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = crate::runtime::connect(addr, WAIT).await.unwrap();
    let mut peer = listener.accept().await.unwrap();
    peer.write_all(sent).await.unwrap();
    if close {
        peer.shutdown(Shutdown::Write).await.unwrap();
    }
    let conn = UpstreamConn::from(Connection {
        stream: MaybeTls::Plain(client),
        rbuf: ReadBuf::with_capacity(UPSTREAM_BUFFER),
        reused: false,
        idle_since: coarse_now(),
    });
    (conn, peer)
}

/// Reads what the peer sent through the connection (as a response's read
/// would), which leaves the readiness poll armed once the socket is drained.
async fn read_some(conn: &mut UpstreamConn) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let n = glommio::timer::timeout(WAIT, async {
        Ok(conn.stream.read(&mut buf).await.unwrap())
    })
    .await
    .expect("the read waited for bytes the peer had sent");
    buf[..n].to_vec()
}

/// Lets the reactor reap the readiness event of what the peer just sent.
async fn reap() {
    glommio::timer::sleep(Duration::from_millis(20)).await;
}

/// Takes the socket's bytes behind the stream's back, leaving its reaped
/// readiness event without the bytes it announced: what a read that took a
/// response's last two writes at once leaves when the second write's event
/// is reaped after it.
fn consume_behind(conn: &UpstreamConn) -> usize {
    let mut buf = [0u8; 64];
    // SAFETY: recv on the connection's open fd into a stack buffer of the
    // length given; MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            conn.tcp().as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).expect("the peer's bytes were in the socket")
}

#[test]
fn a_readiness_event_that_outlived_its_bytes_leaves_the_connection_reusable() {
    glommio::LocalExecutor::default().run(async {
        let (mut conn, mut peer) = upstream(b"answer", false).await;
        assert_eq!(read_some(&mut conn).await, b"answer");
        assert_eq!(conn.tcp().read_poll_pending(), Some(true));
        assert!(conn.looks_reusable(), "an idle connection after its answer");

        peer.write_all(b"end").await.unwrap();
        reap().await;
        assert_eq!(consume_behind(&conn), 3);
        assert_eq!(
            conn.tcp().read_poll_pending(),
            Some(false),
            "the event is there, its bytes are not"
        );
        assert!(conn.looks_reusable(), "nothing unasked, no close");

        // Reused, the connection reads its next answer, whether it is
        // there before the read or comes while the read waits.
        peer.write_all(b"next").await.unwrap();
        assert_eq!(read_some(&mut conn).await, b"next");
        let (read, ()) = futures_lite::future::zip(read_some(&mut conn), async {
            reap().await;
            peer.write_all(b"later").await.unwrap();
        })
        .await;
        assert_eq!(read, b"later");
    });
}

#[test]
fn bytes_or_a_close_behind_a_readiness_event_make_the_connection_unusable() {
    glommio::LocalExecutor::default().run(async {
        let (mut conn, mut peer) = upstream(b"answer", false).await;
        assert_eq!(read_some(&mut conn).await, b"answer");

        peer.write_all(b"unasked").await.unwrap();
        reap().await;
        assert!(!conn.looks_reusable(), "unasked bytes");
        assert_eq!(read_some(&mut conn).await, b"unasked");
        assert!(conn.looks_reusable());

        peer.shutdown(Shutdown::Write).await.unwrap();
        reap().await;
        assert!(!conn.looks_reusable(), "the peer closed");
    });
}
