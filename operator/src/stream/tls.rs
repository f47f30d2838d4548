//! The stream's TLS: the server certificate and key come from PEM files (the Helm
//! chart mounts them from a Secret) and are re-read when the files change, so a
//! rotated certificate is served without a restart. Connections already open keep
//! the certificate they were made with.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;

use super::StreamError;

/// How often at most the files are checked for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// The server's TLS configuration (HTTP/2 only) with a certificate that follows
/// its files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, StreamError> {
    let provider = Arc::new(ring::default_provider());
    let resolver = ReloadingCert::new(cert, key, Arc::clone(&provider))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StreamError::Tls {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

struct Loaded {
    stamps: (Stamp, Stamp),
    checked: Instant,
    key: Arc<CertifiedKey>,
}

/// Serves the certificate in `cert`/`key`, reloading them when they change (a
/// pair that does not load keeps the previous one in service, with a log line).
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ReloadingCert {
    pub fn new(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, StreamError> {
        let stamps = (stamp(cert), stamp(key));
        let certified = load(cert, key, &provider)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded {
                stamps,
                checked: Instant::now(),
                key: Arc::new(certified),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let stamps = (stamp(&self.cert), stamp(&self.key));
            if stamps != loaded.stamps {
                match load(&self.cert, &self.key, &self.provider) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "stream TLS certificate reloaded");
                        loaded.key = Arc::new(k);
                        loaded.stamps = stamps;
                    }
                    // Half-written files (a rotation in progress): keep serving the
                    // previous pair and try again at the next check.
                    Err(e) => tracing::warn!(error = %e, "stream TLS certificate not reloaded"),
                }
            }
        }
        Arc::clone(&loaded.key)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, StreamError> {
    let tls_err = |path: &Path, reason: String| StreamError::Tls {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(cert, "no certificate in the file".to_string()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| tls_err(key, e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| tls_err(key, format!("key does not match the certificate: {e}")))?;
    Ok(certified)
}
