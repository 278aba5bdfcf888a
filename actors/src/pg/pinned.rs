//! TLS to PostgreSQL with only the configured CA trusted.
//!
//! sqlx (0.8, rustls) always adds the public web roots to a CA file (`sslrootcert`): with
//! `verify-full` any of about 150 public CAs could vouch for the primary's name, and with
//! `verify-ca` for any name at all. So a target with a CA file and `sslmode=verify-full` or
//! `verify-ca` is reached through a tunnel in this process instead:
//!
//! - sqlx speaks plain PostgreSQL to a Unix socket in a directory of this process's own
//!   (mode 0700: no other user can connect; no TCP port anyone on the host could use);
//! - for each connection the tunnel opens TCP to the server, asks for TLS (`SSLRequest`),
//!   and makes the handshake itself with a rustls configuration whose only roots are the
//!   certificates of the CA file, checking the server's name against the URL's host
//!   (`verify-full`) or not (`verify-ca`); then it copies bytes both ways until either
//!   side closes;
//! - a failure before that (connect, a server without TLS, the certificate) reaches sqlx as
//!   a PostgreSQL `ErrorResponse` (SQLSTATE 08006) that names it, so `/health` reads
//!   `TLS to primary.example:5432: invalid peer certificate: UnknownIssuer`.
//!
//! One tunnel per (host, port, CA file, mode), started at first use and kept for the
//! process's life; the CA file is read at each connection (a renewed CA needs no restart).
//! The heal probe (`forwarder/reach.rs`) still goes to the server itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Longest a connection's TCP connect and TLS handshake may take (sqlx's own connect
/// timeout usually ends it first, by closing its side).
const HANDSHAKE_BOUND: Duration = Duration::from_secs(30);

/// Whether the server's name is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// `verify-full`: the CA and the name.
    Full,
    /// `verify-ca`: the CA only.
    CaOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    port: u16,
    ca_file: PathBuf,
    check: Check,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the pinned TLS tunnel needs a tokio runtime")]
    NoRuntime,
    #[error("the pinned TLS tunnel's socket in {dir}: {source}")]
    Socket {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The tunnels started so far: their socket directory and their accept loop (a tunnel
/// whose runtime has gone, as a test's does, is started again).
static TUNNELS: LazyLock<Mutex<HashMap<Key, Tunnel>>> = LazyLock::new(Mutex::default);

/// A running tunnel: its socket directory and its accept loop.
type Tunnel = (PathBuf, tokio::task::JoinHandle<()>);

/// The directory of the Unix socket (`.s.PGSQL.<port>`) through which `host:port` is
/// reached with only `ca_file` trusted; the tunnel is started if it is not running yet.
pub fn socket_dir(
    host: &str,
    port: u16,
    ca_file: &Path,
    check: Check,
) -> Result<PathBuf, TunnelError> {
    let key = Key {
        host: host.to_owned(),
        port,
        ca_file: ca_file.to_owned(),
        check,
    };
    let mut tunnels = TUNNELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((dir, task)) = tunnels.get(&key) {
        if !task.is_finished() {
            return Ok(dir.clone());
        }
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TunnelError::NoRuntime)?;
    let dir = std::env::temp_dir().join(format!(
        "opsdb-tls-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let socket_error = |source| TunnelError::Socket {
        dir: dir.clone(),
        source,
    };
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(socket_error)?;
    }
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let listener = {
        let _entered = runtime.enter();
        UnixListener::bind(&path).map_err(socket_error)?
    };
    let task = runtime.spawn(serve(listener, Arc::new(key.clone())));
    tunnels.insert(key, (dir.clone(), task));
    Ok(dir)
}

async fn serve(listener: UnixListener, key: Arc<Key>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(relay(client, Arc::clone(&key)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the pinned TLS tunnel could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection: the server's TLS stream, or the error sent back to sqlx.
async fn relay(mut client: UnixStream, key: Arc<Key>) {
    let server = tokio::time::timeout(HANDSHAKE_BOUND, open(&key)).await;
    let server = match server {
        Ok(Ok(server)) => server,
        Ok(Err(reason)) => return refuse(&mut client, &key, &reason).await,
        Err(_) => {
            let reason = format!("no TLS session within {HANDSHAKE_BOUND:?}");
            return refuse(&mut client, &key, &reason).await;
        }
    };
    let mut server = server;
    // Either side closing ends both; the byte counts are of no interest.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// TCP, `SSLRequest`, the handshake with only the CA file's certificates as roots.
async fn open(key: &Key) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = client_config(&key.ca_file, key.check)?;
    let name = ServerName::try_from(key.host.clone())
        .map_err(|e| format!("{:?} is not a server name: {e}", key.host))?;
    let mut tcp = TcpStream::connect((key.host.as_str(), key.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(&SSL_REQUEST)
        .await
        .map_err(|e| format!("SSLRequest: {e}"))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| format!("SSLRequest: {e}"))?;
    if answer[0] != b'S' {
        return Err("the server does not accept TLS connections (sslmode requires TLS)".into());
    }
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The rustls configuration: the CA file's certificates, nothing else, as roots.
pub fn client_config(ca_file: &Path, check: Check) -> Result<ClientConfig, String> {
    let roots = roots(ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(match check {
        Check::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Check::CaOnly => {
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
                .with_no_client_auth()
        }
    })
}

/// The certificates of `ca_file`, and only those.
pub fn roots(ca_file: &Path) -> Result<RootCertStore, String> {
    let read = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", ca_file.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| read(&e))? {
        roots
            .add(cert.map_err(|e| read(&e))?)
            .map_err(|e| read(&e))?;
    }
    if roots.is_empty() {
        return Err(read(&"holds no certificate"));
    }
    Ok(roots)
}

/// `verify-ca`: the chain is checked against the roots; a name that does not match is not
/// an error.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Tells sqlx why there is no session: a PostgreSQL `ErrorResponse` (FATAL, SQLSTATE
/// 08006, connection failure) in answer to its startup message, then closes.
async fn refuse(client: &mut UnixStream, key: &Key, reason: &str) {
    let message = format!("TLS to {}:{}: {reason}", key.host, key.port);
    tracing::warn!(host = %key.host, port = key.port, %reason, "no TLS session with the server");
    let _ = client.write_all(&error_response(&message)).await;
    let _ = client.shutdown().await;
}

/// `ErrorResponse`: `E`, its length, then the fields (severity, code, message) each a type
/// byte and a NUL-terminated string, and a final NUL.
fn error_response(message: &str) -> Vec<u8> {
    let message = message.replace('\0', " ");
    let mut fields = Vec::new();
    for (kind, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "08006"),
        (b'M', message.as_str()),
    ] {
        fields.push(kind);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_response_is_framed_as_postgresql_reads_it() {
        let bytes = error_response("TLS to h:1: bad\0cert");
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 1);
        assert_eq!(*bytes.last().expect("a byte"), 0);
        let text = String::from_utf8_lossy(&bytes[5..]);
        assert!(text.contains("S\u{0}") || text.contains("SFATAL"));
        assert!(text.contains("C08006\u{0}"));
        assert!(text.contains("MTLS to h:1: bad cert\u{0}"), "{text:?}");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error_naming_it() {
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(roots(missing).unwrap_err().contains("/nonexistent/ca.pem"));
        let dir = std::env::temp_dir().join(format!("opsdb-pin-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(roots(&empty).unwrap_err().contains("holds no certificate"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
