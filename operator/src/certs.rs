//! The enforcer stream's TLS certificate when cert-manager does not issue it: the operator
//! creates a CA and a server certificate, keeps them in a Secret of its namespace
//! (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`) and renews the server certificate when a
//! third of its validity is left or its names change.
//!
//! Every replica runs this and writes the certificate from the Secret to the files the
//! stream serves (re-read when they change, `stream::tls`), so a new leader serves the
//! current certificate at once. Replicas that race on the Secret are ordered by its
//! `resourceVersion`: the loser re-reads and uses the winner's certificate. The CA lives
//! ten years and is kept across renewals, since the enforcers trust it (they mount only
//! `ca.crt`); deleting the Secret replaces it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Annotation holding the server certificate's expiry (Unix seconds).
const NOT_AFTER: &str = "palisade.dev/not-after";
/// Annotation holding the names the server certificate is for (comma-separated).
const NAMES: &str = "palisade.dev/names";
/// The CA's lifetime.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The CA's subject (a renewal signs with the stored key under this name).
const CA_NAME: &str = "palisade stream CA";

/// What to keep in which Secret, and where to write the served files.
#[derive(Clone, Debug)]
pub struct CertSettings {
    pub namespace: String,
    pub secret: String,
    /// DNS names of the server certificate (the stream Service's names).
    pub names: Vec<String>,
    pub validity: Duration,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the Secret is checked for renewal or a change by another replica.
    pub recheck: Duration,
}

/// A certificate that could not be made, stored or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the stream certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} keeps changing under us; giving up for now")]
    Contended { namespace: String, name: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the stream certificate needs at least one --tls-name")]
    NoNames,
}

/// The PEM texts kept in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    /// Expiry of `cert`, Unix seconds.
    pub not_after: i64,
    pub names: Vec<String>,
}

impl Material {
    /// Reads the Secret; `None` when a key or annotation is missing or unreadable.
    fn from_secret(secret: &Secret) -> Option<Material> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| -> Option<String> {
            String::from_utf8(data.get(key)?.0.clone())
                .ok()
                .filter(|t| !t.trim().is_empty())
        };
        let annotations = secret.metadata.annotations.as_ref()?;
        Some(Material {
            ca_cert: text("ca.crt")?,
            ca_key: text("ca.key")?,
            cert: text("tls.crt")?,
            key: text("tls.key")?,
            not_after: annotations.get(NOT_AFTER)?.parse().ok()?,
            names: split_names(annotations.get(NAMES)?),
        })
    }

    fn to_secret(&self, settings: &CertSettings, resource_version: Option<String>) -> Secret {
        let data: BTreeMap<String, ByteString> = [
            ("ca.crt", &self.ca_cert),
            ("ca.key", &self.ca_key),
            ("tls.crt", &self.cert),
            ("tls.key", &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(settings.secret.clone()),
                namespace: Some(settings.namespace.clone()),
                resource_version,
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER.to_string(), self.not_after.to_string()),
                    (NAMES.to_string(), self.names.join(",")),
                ])),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "palisade-operator".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_string()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Due for renewal: a third of the validity left, or other names wanted.
    fn needs_renewal(&self, settings: &CertSettings, now: i64) -> bool {
        let margin = (settings.validity.as_secs() / 3) as i64;
        now >= self.not_after.saturating_sub(margin) || self.names != sorted(&settings.names)
    }
}

fn split_names(text: &str) -> Vec<String> {
    sorted(&text.split(',').map(str::to_string).collect::<Vec<_>>())
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut names: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn ca_params(now: OffsetDateTime) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

/// A server certificate for `names`, signed by the CA of `ca` (PEM certificate and key), or
/// by a new CA when there is none or it cannot be read.
pub fn issue(
    ca: Option<(&str, &str)>,
    names: &[String],
    validity: Duration,
    now: OffsetDateTime,
) -> Result<Material, CertError> {
    let names = sorted(names);
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    let (ca_cert, ca_key) = match ca.and_then(|(c, k)| Some((c, KeyPair::from_pem(k).ok()?))) {
        Some((cert, key)) => (cert.to_string(), key),
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params(now)?.self_signed(&key)?;
            (cert.pem(), key)
        }
    };
    let ca_key_pem = ca_key.serialize_pem();
    // The issuer is the stored CA: same subject, same key, so the enforcers' ca.crt still
    // verifies what it signs.
    let issuer = Issuer::new(ca_params(now)?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "palisade-operator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::minutes(5);
    let not_after = now + validity;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Material {
        ca_cert,
        ca_key: ca_key_pem,
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after: not_after.unix_timestamp(),
        names,
    })
}

/// Makes sure the Secret holds a certificate that is not due for renewal and returns it.
pub async fn ensure(
    api: &Api<Secret>,
    settings: &CertSettings,
    now: OffsetDateTime,
) -> Result<Material, CertError> {
    let api_error = |source| CertError::Api {
        namespace: settings.namespace.clone(),
        name: settings.secret.clone(),
        source,
    };
    for _ in 0..3 {
        let current = api.get_opt(&settings.secret).await.map_err(api_error)?;
        let stored = current.as_ref().and_then(Material::from_secret);
        if let Some(m) = &stored {
            if !m.needs_renewal(settings, now.unix_timestamp()) {
                return Ok(m.clone());
            }
        }
        let ca = stored
            .as_ref()
            .map(|m| (m.ca_cert.as_str(), m.ca_key.as_str()));
        let fresh = issue(ca, &settings.names, settings.validity, now)?;
        let written = match current {
            Some(secret) => {
                info!(secret = %settings.secret, "renewing the stream certificate");
                let version = secret.metadata.resource_version.clone();
                api.replace(
                    &settings.secret,
                    &PostParams::default(),
                    &fresh.to_secret(settings, version),
                )
                .await
            }
            None => {
                info!(secret = %settings.secret, "creating the stream certificate");
                api.create(&PostParams::default(), &fresh.to_secret(settings, None))
                    .await
            }
        };
        match written {
            Ok(_) => return Ok(fresh),
            // Another replica wrote first: use what it wrote.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(api_error(e)),
        }
    }
    Err(CertError::Contended {
        namespace: settings.namespace.clone(),
        name: settings.secret.clone(),
    })
}

/// Writes the served certificate and key when they differ from the files; returns whether
/// it wrote. Each file is replaced atomically (temporary name, then rename), the key
/// readable by this user only.
pub fn write_files(material: &Material, settings: &CertSettings) -> Result<bool, CertError> {
    let mut wrote = false;
    // The key first: the stream re-reads both when the certificate changes.
    for (path, text, mode) in [
        (&settings.key_file, &material.key, 0o600),
        (&settings.cert_file, &material.cert, 0o644),
    ] {
        if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        crate::files::write_atomically(path, text, mode).map_err(|source| CertError::Write {
            path: path.display().to_string(),
            source,
        })?;
        wrote = true;
    }
    Ok(wrote)
}

/// Once: the Secret made right and the files written (before the stream starts).
pub async fn prepare(client: kube::Client, settings: &CertSettings) -> Result<(), CertError> {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    let material = ensure(&api, settings, OffsetDateTime::now_utc()).await?;
    write_files(&material, settings)?;
    Ok(())
}

/// Keeps the certificate renewed and the files current until `shutdown`.
pub async fn run(client: kube::Client, settings: CertSettings, shutdown: CancellationToken) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.recheck) => {}
            _ = shutdown.cancelled() => return,
        }
        match ensure(&api, &settings, OffsetDateTime::now_utc()).await {
            Ok(m) => match write_files(&m, &settings) {
                Ok(true) => info!(secret = %settings.secret, "stream certificate files updated"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot write the stream certificate"),
            },
            Err(e) => warn!(error = %e, "cannot renew the stream certificate; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verifier;
    use std::path::Path;
    use std::sync::Arc;
    use tokio_rustls::rustls::client::danger::ServerCertVerifier;
    use tokio_rustls::rustls::client::WebPkiServerVerifier;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::rustls::RootCertStore;

    const DAY: u64 = 24 * 3600;

    fn settings(dir: &Path) -> CertSettings {
        CertSettings {
            namespace: "palisade-system".into(),
            secret: "palisade-stream-tls".into(),
            names: vec![
                "palisade-operator.palisade-system.svc".into(),
                "palisade-operator".into(),
            ],
            validity: Duration::from_secs(90 * DAY),
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            recheck: Duration::from_secs(300),
        }
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("a valid time")
    }

    /// Whether `cert` verifies for `name` against `ca` at `when`, as the enforcer checks it.
    fn verifies(ca: &str, cert: &str, name: &str, when: i64) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &name,
                &[],
                UnixTime::since_unix_epoch(Duration::from_secs(when as u64)),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn an_issued_certificate_verifies_for_its_names_only() {
        let m = issue(
            None,
            &["palisade-operator.palisade-system.svc".into()],
            Duration::from_secs(90 * DAY),
            at(NOW),
        )
        .expect("issued");
        verifies(
            &m.ca_cert,
            &m.cert,
            "palisade-operator.palisade-system.svc",
            NOW,
        )
        .expect("valid");
        assert!(verifies(&m.ca_cert, &m.cert, "evil.example", NOW).is_err());
        assert!(
            verifies(
                &m.ca_cert,
                &m.cert,
                "palisade-operator.palisade-system.svc",
                NOW + 91 * DAY as i64
            )
            .is_err(),
            "expired after its validity"
        );
        assert_eq!(m.not_after, NOW + 90 * DAY as i64);
        assert!(matches!(
            issue(None, &[" ".into()], Duration::from_secs(DAY), at(NOW)),
            Err(CertError::NoNames)
        ));
    }

    #[test]
    fn renewal_keeps_the_ca_the_enforcers_trust() {
        let names = vec!["op.ns.svc".to_string()];
        let first = issue(None, &names, Duration::from_secs(90 * DAY), at(NOW)).expect("first");
        let later = NOW + 70 * DAY as i64;
        let second = issue(
            Some((&first.ca_cert, &first.ca_key)),
            &names,
            Duration::from_secs(90 * DAY),
            at(later),
        )
        .expect("renewed");
        assert_eq!(second.ca_cert, first.ca_cert);
        assert_ne!(second.key, first.key, "a new key");
        verifies(&first.ca_cert, &second.cert, "op.ns.svc", later).expect("old CA verifies");
        verifies(
            &first.ca_cert,
            &second.cert,
            "op.ns.svc",
            NOW + 150 * DAY as i64,
        )
        .expect("valid past the first one's expiry");
        // An unreadable CA key: a new CA rather than a failure.
        let third = issue(
            Some((&first.ca_cert, "garbage")),
            &names,
            Duration::from_secs(DAY),
            at(NOW),
        )
        .expect("issued");
        assert_ne!(third.ca_cert, first.ca_cert);
    }

    #[test]
    fn renewal_is_due_at_two_thirds_or_on_new_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let m = issue(None, &s.names, s.validity, at(NOW)).expect("issued");
        assert!(!m.needs_renewal(&s, NOW));
        assert!(!m.needs_renewal(&s, NOW + 59 * DAY as i64));
        assert!(m.needs_renewal(&s, NOW + 60 * DAY as i64));
        let mut other = s.clone();
        other
            .names
            .push("palisade-operator.palisade-system.svc.cluster.local".into());
        assert!(m.needs_renewal(&other, NOW));
        // The Secret round-trips.
        let secret = m.to_secret(&s, None);
        assert_eq!(Material::from_secret(&secret), Some(m.clone()));
        let mut broken = secret.clone();
        if let Some(d) = broken.data.as_mut() {
            d.remove("ca.key");
        }
        assert_eq!(Material::from_secret(&broken), None);
    }

    fn secret_json(m: &Material, s: &CertSettings, version: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(m.to_secret(s, Some(version.to_string()))).expect("json");
        v["apiVersion"] = "v1".into();
        v["kind"] = "Secret".into();
        v
    }

    #[tokio::test]
    async fn creates_the_secret_when_missing_and_writes_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let (client, mut v) = verifier::client();
        let api: Api<Secret> = Api::namespaced(client, &s.namespace);
        let path = "/api/v1/namespaces/palisade-system/secrets";
        let server = tokio::spawn(async move {
            let (_, send) = v
                .expect("GET", &format!("{path}/palisade-stream-tls"))
                .await;
            send.status(404, "NotFound");
            let (body, send) = v.expect("POST", &format!("{path}?")).await;
            assert_eq!(body["metadata"]["name"], "palisade-stream-tls");
            assert_eq!(body["type"], "kubernetes.io/tls");
            let mut answer = body.clone();
            answer["metadata"]["resourceVersion"] = "1".into();
            send.ok(&answer);
            body
        });
        let m = ensure(&api, &s, at(NOW)).await.expect("ensured");
        let body = server.await.expect("verifier");
        let secret: Secret = serde_json::from_value(body).expect("a Secret");
        assert_eq!(Material::from_secret(&secret), Some(m.clone()));
        assert!(write_files(&m, &s).expect("written"));
        assert!(
            !write_files(&m, &s).expect("unchanged"),
            "same content: no write"
        );
        assert_eq!(std::fs::read_to_string(&s.cert_file).expect("cert"), m.cert);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.key_file)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The files are what the stream serves.
        crate::stream::tls::server_config(&s.cert_file, &s.key_file).expect("served");
    }

    /// A 0644 temporary file left by an interrupted write (or an older version, which used
    /// one `tls.tmp` for both files) must not make the key world-readable.
    #[test]
    fn a_leftover_temp_file_does_not_make_the_key_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        for leftover in [".tls.key.tmp", ".tls.crt.tmp", "tls.tmp"] {
            let path = dir.path().join(leftover);
            std::fs::write(&path, "stale").expect("leftover");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let m = issue(None, &s.names, s.validity, at(NOW)).expect("issued");
        assert!(write_files(&m, &s).expect("written"));
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&s.key_file), 0o600, "the key is private");
        assert_eq!(mode(&s.cert_file), 0o644);
        assert_eq!(std::fs::read_to_string(&s.key_file).expect("key"), m.key);
        assert_eq!(std::fs::read_to_string(&s.cert_file).expect("cert"), m.cert);
    }

    #[tokio::test]
    async fn a_current_secret_is_used_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let m = issue(None, &s.names, s.validity, at(NOW)).expect("issued");
        let (client, mut v) = verifier::client();
        let api: Api<Secret> = Api::namespaced(client, &s.namespace);
        let answer = secret_json(&m, &s, "7");
        let server = tokio::spawn(async move {
            let (_, send) = v
                .expect(
                    "GET",
                    "/api/v1/namespaces/palisade-system/secrets/palisade-stream-tls",
                )
                .await;
            send.ok(&answer);
        });
        assert_eq!(
            ensure(&api, &s, at(NOW + DAY as i64))
                .await
                .expect("ensured"),
            m
        );
        server.await.expect("verifier");
    }

    #[tokio::test]
    async fn renews_with_the_same_ca_and_yields_to_another_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = settings(dir.path());
        let old = issue(None, &s.names, s.validity, at(NOW)).expect("issued");
        let later = NOW + 61 * DAY as i64;
        // What another replica wrote meanwhile.
        let theirs = issue(
            Some((&old.ca_cert, &old.ca_key)),
            &s.names,
            s.validity,
            at(later),
        )
        .expect("issued");
        let (client, mut v) = verifier::client();
        let api: Api<Secret> = Api::namespaced(client, &s.namespace);
        let (old_json, theirs_json) = (secret_json(&old, &s, "7"), secret_json(&theirs, &s, "8"));
        let old_ca = old.ca_cert.clone();
        let server = tokio::spawn(async move {
            let secret = "/api/v1/namespaces/palisade-system/secrets/palisade-stream-tls";
            let (_, send) = v.expect("GET", secret).await;
            send.ok(&old_json);
            let (body, send) = v.expect("PUT", &format!("{secret}?")).await;
            assert_eq!(
                body["metadata"]["resourceVersion"], "7",
                "optimistic concurrency"
            );
            let written: Secret = serde_json::from_value(body).expect("a Secret");
            let m = Material::from_secret(&written).expect("complete");
            assert_eq!(m.ca_cert, old_ca, "the CA stays");
            send.status(409, "Conflict");
            let (_, send) = v.expect("GET", secret).await;
            send.ok(&theirs_json);
        });
        let got = ensure(&api, &s, at(later)).await.expect("ensured");
        server.await.expect("verifier");
        assert_eq!(got, theirs, "the winner's certificate is used");
    }
}
