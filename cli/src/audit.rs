//! `palisade audit`: decisions from the audit log, filtered, as a table, JSON lines or CSV,
//! optionally followed as they arrive.
//!
//! Reads the database directly (`--database sqlite:///PATH` or `postgres://...`: nothing is
//! created or migrated) or through the operator's query API (`--server https://HOST:PORT
//! --token-file FILE [--ca-file FILE]`: the token's identity must be allowed to `get`
//! `decisions.audit.palisade.io`). Exit code 0 on success, 2 on bad input or when the log
//! cannot be read.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use palisade_audit::{
    now_ms, output, parse_direction, parse_time, parse_verdict, AuditStore, DecisionFilter,
    StoredDecision,
};

/// Rows fetched per poll in follow mode.
const FOLLOW_BATCH: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
pub struct Args {
    /// Read this database: `sqlite:///PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "server",
        conflicts_with = "server"
    )]
    database: Option<String>,
    /// Ask the operator's query API instead (`https://HOST:PORT`).
    #[arg(long, value_name = "URL", requires = "token_file")]
    server: Option<String>,
    /// Bearer token for --server (a ServiceAccount or user token of the cluster).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the operator's certificate (default: the system's roots).
    #[arg(long, value_name = "FILE", requires = "server")]
    ca_file: Option<PathBuf>,
    /// Decisions with a pod of this namespace on either side.
    #[arg(long, short)]
    namespace: Option<String>,
    /// Decisions with this pod on either side (with --namespace: that namespace's pod).
    #[arg(long)]
    pod: Option<String>,
    #[arg(long, value_name = "NAMESPACE")]
    src_namespace: Option<String>,
    #[arg(long, value_name = "POD")]
    src_pod: Option<String>,
    #[arg(long, value_name = "NAMESPACE")]
    dst_namespace: Option<String>,
    #[arg(long, value_name = "POD")]
    dst_pod: Option<String>,
    /// `ingress` or `egress`.
    #[arg(long)]
    direction: Option<String>,
    /// `allow` or `deny`.
    #[arg(long)]
    verdict: Option<String>,
    /// The policy that decided, or that isolates the pod a denial hit (`Kind ns/name`).
    #[arg(long)]
    policy: Option<String>,
    #[arg(long)]
    tier: Option<String>,
    /// Last seen at or after: milliseconds since the epoch, or an age (`15m`, `1h`, `7d`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// First seen at or before (same forms).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// At most this many decisions (the newest).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(long, short, value_enum, default_value = "table")]
    output: Format,
    /// Keep printing new decisions as they are stored (Ctrl-C to stop).
    #[arg(long, short)]
    follow: bool,
    /// How often --follow polls, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval_ms: u64,
    /// Stop following after this many polls (tests).
    #[arg(long, hide = true)]
    polls: Option<u64>,
}

impl Args {
    /// The filter, with times made absolute (so follow polls keep the same window).
    fn filter(&self) -> Result<DecisionFilter> {
        let now = now_ms();
        let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose();
        let filter = DecisionFilter {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            src_namespace: self.src_namespace.clone(),
            src_pod: self.src_pod.clone(),
            dst_namespace: self.dst_namespace.clone(),
            dst_pod: self.dst_pod.clone(),
            direction: self.direction.as_deref().map(parse_direction).transpose()?,
            verdict: self.verdict.as_deref().map(parse_verdict).transpose()?,
            policy: self.policy.clone(),
            tier: self.tier.clone(),
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
            after_id: None,
            limit: Some(self.limit),
        };
        filter.validate()?;
        Ok(filter)
    }
}

/// Where decisions are read from.
enum Source {
    Database(Arc<dyn AuditStore>),
    Api { client: kube::Client, token: String },
}

impl Source {
    async fn open(args: &Args) -> Result<Self> {
        if let Some(url) = &args.database {
            let store = palisade_audit::open_existing(url)
                .await
                .with_context(|| format!("opening {}", palisade_audit::redact(url)))?;
            return Ok(Source::Database(store));
        }
        let server = args
            .server
            .as_deref()
            .ok_or_else(|| anyhow!("--database or --server"))?;
        let token_file = args
            .token_file
            .as_ref()
            .ok_or_else(|| anyhow!("--server needs --token-file"))?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_string();
        if token.is_empty() {
            bail!("{} is empty", token_file.display());
        }
        let uri: http::Uri = server
            .parse()
            .with_context(|| format!("--server {server:?}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--server {server:?}: the query API is served over https");
        }
        let mut config = kube::Config::new(uri);
        if let Some(ca) = &args.ca_file {
            config.root_cert = Some(read_certificates(ca)?);
        }
        let client = kube::Client::try_from(config).context("HTTPS client")?;
        Ok(Source::Api { client, token })
    }

    async fn fetch(&self, filter: &DecisionFilter) -> Result<Vec<StoredDecision>> {
        match self {
            Source::Database(store) => Ok(store.decisions(filter).await?),
            Source::Api { client, token } => {
                let request = http::Request::get(format!("/api/v1/decisions?{}", query(filter)))
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Vec::new())
                    .context("building the request")?;
                let text = client
                    .request_text(request)
                    .await
                    .map_err(|e| anyhow!("the operator's query API: {e}"))?;
                serde_json::from_str(&text).context("the query API's answer")
            }
        }
    }
}

/// The DER certificates of a PEM file.
fn read_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate", path.display());
    }
    Ok(certs)
}

/// The filter as the query API's parameters (each value URL-encoded).
fn query(f: &DecisionFilter) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let text = [
        ("namespace", &f.namespace),
        ("pod", &f.pod),
        ("src_namespace", &f.src_namespace),
        ("src_pod", &f.src_pod),
        ("dst_namespace", &f.dst_namespace),
        ("dst_pod", &f.dst_pod),
        ("policy", &f.policy),
        ("tier", &f.tier),
    ];
    for (k, v) in text {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    if let Some(d) = f.direction {
        q.append_pair("direction", d.as_str());
    }
    if let Some(v) = f.verdict {
        q.append_pair("verdict", v.as_str());
    }
    for (k, v) in [
        ("since", f.since_ms),
        ("until", f.until_ms),
        ("after_id", f.after_id),
        ("limit", f.limit.map(i64::from)),
    ] {
        if let Some(v) = v {
            q.append_pair(k, &v.to_string());
        }
    }
    q.finish()
}

fn print(rows: &[StoredDecision], format: Format, header: bool) -> Result<()> {
    let text = match format {
        Format::Table => output::table(rows, header),
        Format::Json => output::json_lines(rows),
        Format::Csv => output::csv(rows, header),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn run_async(args: &Args) -> Result<()> {
    let filter = args.filter()?;
    let source = Source::open(args).await?;
    let mut rows = source.fetch(&filter).await?;
    // Newest first from the store; printed oldest first, as a log reads.
    rows.reverse();
    print(&rows, args.output, true)?;
    if !args.follow {
        return Ok(());
    }
    // Nothing matched: every matching decision from now on is new (ids only grow).
    let mut last = rows.iter().map(|r| r.id).max().unwrap_or(0);
    let mut header = rows.is_empty();
    let mut polls = 0u64;
    while args.polls.is_none_or(|max| polls < max) {
        polls += 1;
        tokio::time::sleep(Duration::from_millis(args.interval_ms.max(50))).await;
        let next = DecisionFilter {
            after_id: Some(last),
            limit: Some(FOLLOW_BATCH),
            ..filter.clone()
        };
        let rows = source.fetch(&next).await?;
        if let Some(max) = rows.iter().map(|r| r.id).max() {
            last = max;
            print(&rows, args.output, header)?;
            header = false;
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
