//! `palisade-operator`: watches the cluster (or a manifest directory), compiles each node's
//! rules and serves them to the enforcers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use palisade_operator::app::{self, Config, LeaseSettings, SourceConfig};
use palisade_operator::reconcile::Debounce;
use palisade_operator::stream::{AuthSettings, StreamSettings, Timings};
use palisade_operator::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing::info;

// The index and compile allocate many small objects and free whole node states at once;
// mimalloc does this about twice as fast as glibc's allocator (policy/benches/scale.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "palisade-operator", version, about)]
struct Cli {
    /// Where objects come from: `kubernetes` (the API server: in-cluster config or
    /// kubeconfig) or `dir:PATH` (a folder of manifests, followed as it changes).
    #[arg(long, value_name = "kubernetes|dir:PATH")]
    source: SourceConfig,

    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, default_value = "0.0.0.0:9090", value_name = "ADDR")]
    listen_health: SocketAddr,

    /// Log lines as text or as one JSON object per line (stderr; level from RUST_LOG).
    #[arg(long, default_value = "text", value_name = "text|json")]
    log_format: LogFormat,

    /// Poll interval of the manifest directory, in milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    poll_ms: u64,

    /// How often to look for policy CRDs that are not installed, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    crd_recheck_secs: u64,

    /// Commit this long after the last change of a burst (milliseconds)...
    #[arg(long, default_value_t = 20, value_name = "MS")]
    debounce_ms: u64,

    /// ...but at most this long after its first change (milliseconds).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    debounce_max_ms: u64,

    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else the client's namespace).
    #[arg(long, value_name = "NAMESPACE")]
    lease_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, default_value = "palisade-operator", value_name = "NAME")]
    lease_name: String,

    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,

    /// Address of the enforcers' stream (gRPC over TLS).
    #[arg(long, default_value = "0.0.0.0:9443", value_name = "ADDR")]
    stream_listen: SocketAddr,

    /// The stream's TLS certificate chain (PEM; re-read when it changes). Without it
    /// (and --stream-key) the enforcers are not served.
    #[arg(long, value_name = "FILE", requires = "stream_key")]
    stream_cert: Option<PathBuf>,

    /// The stream's TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "stream_cert")]
    stream_key: Option<PathBuf>,

    /// The enforcers' ServiceAccount: only its tokens are accepted (TokenReview).
    #[arg(
        long,
        default_value = "system:serviceaccount:palisade-system:palisade-enforcer",
        value_name = "USER"
    )]
    enforcer_service_account: String,

    /// Audience the enforcers' tokens must be valid for (repeatable; default: the API
    /// server's).
    #[arg(long, value_name = "AUDIENCE")]
    token_audience: Vec<String>,

    /// Accept the tokens of this file (`TOKEN NODE` per line) instead of asking the API
    /// server (for the manifest-directory source, which has none).
    #[arg(long, value_name = "FILE")]
    static_tokens: Option<PathBuf>,

    /// Policy reports (--report-*).
    #[command(flatten)]
    report: palisade_operator::report::ReportArgs,

    /// The audit log (--audit-*).
    #[command(flatten)]
    audit: palisade_operator::audit::AuditArgs,

    /// Issue the stream's certificate and keep it renewed in this Secret of the pod's
    /// namespace ($POD_NAMESPACE), writing it to --stream-cert / --stream-key (the Helm
    /// chart's default; without it the files come from elsewhere, e.g. cert-manager).
    #[arg(long, value_name = "NAME", requires = "stream_cert")]
    tls_secret: Option<String>,

    /// DNS name of the issued certificate (repeatable; the stream Service's names).
    #[arg(long, value_name = "DNS", requires = "tls_secret")]
    tls_name: Vec<String>,

    /// Days the issued certificate is valid (renewed when a third is left).
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    tls_validity_days: u64,
}

impl Cli {
    /// What --tls-secret asks for, if given.
    fn cert_settings(&self) -> anyhow::Result<Option<palisade_operator::certs::CertSettings>> {
        let (Some(secret), Some(cert), Some(key)) =
            (&self.tls_secret, &self.stream_cert, &self.stream_key)
        else {
            return Ok(None);
        };
        if self.tls_name.is_empty() {
            anyhow::bail!("--tls-secret needs at least one --tls-name");
        }
        if self.tls_validity_days < 2 {
            anyhow::bail!("--tls-validity-days must be at least 2");
        }
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .context("--tls-secret needs $POD_NAMESPACE (the Secret's namespace)")?;
        Ok(Some(palisade_operator::certs::CertSettings {
            namespace,
            secret: secret.clone(),
            names: self.tls_name.clone(),
            validity: Duration::from_secs(self.tls_validity_days.saturating_mul(24 * 3600)),
            cert_file: cert.clone(),
            key_file: key.clone(),
            recheck: Duration::from_secs(300),
        }))
    }

    fn config(&self) -> Config {
        let mut config = Config::new(self.source.clone(), self.listen_health);
        config.poll = Duration::from_millis(self.poll_ms.max(1));
        config.crd_recheck = Duration::from_secs(self.crd_recheck_secs.max(1));
        config.debounce = Debounce {
            quiet: Duration::from_millis(self.debounce_ms),
            max_delay: Duration::from_millis(self.debounce_max_ms.max(self.debounce_ms)),
        };
        config.lease = LeaseSettings {
            namespace: self.lease_namespace.clone(),
            name: self.lease_name.clone(),
            identity: self.identity.clone(),
            ..LeaseSettings::default()
        };
        config.stream = match (&self.stream_cert, &self.stream_key) {
            (Some(cert), Some(key)) => Some(StreamSettings {
                listen: self.stream_listen,
                cert: cert.clone(),
                key: key.clone(),
                auth: match &self.static_tokens {
                    Some(path) => AuthSettings::StaticTokens(path.clone()),
                    None => AuthSettings::TokenReview {
                        service_account: self.enforcer_service_account.clone(),
                        audiences: self.token_audience.clone(),
                    },
                },
                timings: Timings::default(),
            }),
            _ => None,
        };
        config.report = self.report.settings();
        config.audit = self.audit.settings();
        config
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.audit.check().map_err(anyhow::Error::msg)?;
    let _telemetry = telemetry::init(cli.log_format).context("cannot set up logging")?;
    if let SourceConfig::Directory(path) = &cli.source {
        let path: &PathBuf = path;
        info!(path = %path.display(), "source: manifest directory");
    } else {
        info!("source: Kubernetes API");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    if let Some(settings) = cli.cert_settings()? {
        // The certificate must be on disk before the stream starts serving it.
        let client = kube::Client::try_default()
            .await
            .context("--tls-secret needs the Kubernetes API")?;
        palisade_operator::certs::prepare(client.clone(), &settings)
            .await
            .context("cannot prepare the stream certificate")?;
        tokio::spawn(palisade_operator::certs::run(
            client,
            settings,
            shutdown.clone(),
        ));
    }
    app::run(cli.config(), shutdown)
        .await
        .context("palisade-operator stopped")
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = terminate => info!("SIGTERM"),
    }
    shutdown.cancel();
}
