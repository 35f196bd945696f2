//! TLS for the tool itself: the client side of `run`/`compare` against
//! `https://` targets and the server side of `mock --tls-cert/--tls-key`.
//!
//! rustls with the ring provider, ALPN `http/1.1` both ways; the client
//! sends SNI for the URL's host and trusts the webpki roots plus any
//! `--ca-file`. `--insecure` accepts any certificate (handshake signatures
//! are still checked, so the peer must hold the key it presents): for
//! self-signed benches only, never for measuring anything that matters.
//!
//! What it must never do: share the gateway's TLS code (`shardgate-core`'s
//! `tls`/`io` modules). It follows the same approach, a glommio `TcpStream`
//! wrapped by futures-rustls behind a plain-or-TLS enum, but is its own code.
//!
//! Invariants: the handshake happens once per connection, before its first
//! request; per request the TLS path adds no allocation of ours (rustls's
//! buffered API itself allocates one buffer per TLS record each way).

use crate::error::BenchError;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The client's TLS trust settings (`--ca-file`, `--insecure`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Extra CAs (PEM) trusted beside the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure: bool,
}

impl TlsOptions {
    /// How the server's certificate is checked, for the report.
    pub fn verification(&self) -> &'static str {
        match (self.insecure, &self.ca_file) {
            (true, _) => "INSECURE (certificate not verified)",
            (false, Some(_)) => "verified (webpki roots + --ca-file)",
            (false, None) => "verified (webpki roots)",
        }
    }
}

/// Where a client connects: its config and the SNI / verification name.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl ClientTls {
    pub fn new(opts: &TlsOptions, host: &str) -> Result<ClientTls, BenchError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| BenchError::Usage(format!("TLS server name {host:?}: {e}")))?;
        Ok(ClientTls {
            config: client_config(opts)?,
            name,
        })
    }

    /// The TLS handshake over an established TCP connection.
    pub async fn connect(
        &self,
        tcp: TcpStream,
    ) -> io::Result<futures_rustls::client::TlsStream<TcpStream>> {
        futures_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Tls(e.to_string())
}

/// Client config: webpki roots plus `--ca-file`, or no verification with
/// `--insecure`; ALPN http/1.1.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, BenchError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let mut config = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &opts.ca_file {
            for cert in load_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Server config for `mock`: one certificate chain and its key; ALPN
/// http/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, BenchError> {
    let certs = load_certs(cert)?;
    let key_pem = std::fs::read(key).map_err(|e| BenchError::io(key.display().to_string(), e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls_error(format!("{}: {e}", key.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BenchError> {
    let pem = std::fs::read(path).map_err(|e| BenchError::io(path.display().to_string(), e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// `--insecure`: any certificate for any name is accepted. The handshake
/// signatures are still verified, so this skips trust, not cryptography.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP connection, plain or wrapped in TLS (`T`: the client or server
/// rustls stream). The TLS stream is boxed once per connection.
pub enum Stream<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// The load generator's connection.
pub type ClientStream = Stream<futures_rustls::client::TlsStream<TcpStream>>;
/// The mock's connection.
pub type ServerStream = Stream<futures_rustls::server::TlsStream<TcpStream>>;

impl<T: AsyncWrite + Unpin> Stream<T> {
    /// Writes all of `bytes` and flushes them onto the socket (TLS buffers
    /// records that a would-block left unsent; plain TCP flushes for free).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
