//! `palisade report`: a namespace's (or the cluster's) policy report, readable.
//!
//! Reads what `palisade-operator` wrote: from the API server (kubeconfig or in-cluster config:
//! `wgpolicyk8s.io` PolicyReport / ClusterPolicyReport, else `openreports.io` Report /
//! ClusterReport), or from the YAML files of a folder (`--dir`, the manifest-directory source's
//! `--report-dir`). Exit code 0 when nothing failed, 1 when a result is `fail` or `error`,
//! 2 when the report cannot be read.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use palisade_crds::reports::{ReportResult, ResultKind, Summary};
use serde::{Deserialize, Serialize};

use crate::Output;

#[derive(clap::Args)]
pub struct Args {
    /// The namespace whose report to show (not needed with --cluster).
    #[arg(required_unless_present = "cluster")]
    namespace: Option<String>,
    /// Show the cluster report (tiers and cluster-scoped policies) instead.
    #[arg(long)]
    cluster: bool,
    /// Read the YAML files the operator writes with the manifest-directory source
    /// (its --report-dir) instead of asking the API server.
    #[arg(long, value_name = "FOLDER")]
    dir: Option<PathBuf>,
    #[arg(long, short, value_enum, default_value = "plain")]
    output: Output,
}

/// The part of a report of either API that is shown.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shown {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Meta,
    #[serde(default)]
    pub summary: Summary,
    #[serde(default)]
    pub results: Vec<ReportResult>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Meta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// The operator's report name (one per namespace and one for the cluster).
const REPORT_NAME: &str = "palisade";

pub fn run(args: &Args) -> ExitCode {
    let shown = match &args.dir {
        Some(dir) => from_dir(dir, args),
        None => from_cluster(args),
    };
    match shown {
        Ok(report) => {
            match args.output {
                Output::Plain => print!("{}", plain(&report, SystemTime::now())),
                Output::Json => match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
            }
            if report.summary.fail > 0 || report.summary.error > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The files the operator writes, in the order they are looked for.
fn candidates(args: &Args) -> Vec<String> {
    match (&args.namespace, args.cluster) {
        (_, true) | (None, _) => vec![
            "clusterpolicyreport.yaml".to_string(),
            "clusterreport.yaml".to_string(),
        ],
        (Some(ns), false) => vec![
            format!("policyreport.{ns}.yaml"),
            format!("report.{ns}.yaml"),
        ],
    }
}

fn from_dir(dir: &Path, args: &Args) -> Result<Shown> {
    let names = candidates(args);
    for name in &names {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return serde_yaml::from_str(&text)
                    .with_context(|| format!("{}: not a policy report", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
    }
    bail!(
        "no report in {} (looked for {}): the namespace has no pods or policies, or the \
         operator writes no reports there (--report-dir)",
        dir.display(),
        names.join(", ")
    )
}

fn from_cluster(args: &Args) -> Result<Shown> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the cluster (kubeconfig or in-cluster config)")?;
        let namespace = if args.cluster {
            None
        } else {
            args.namespace.as_deref()
        };
        fetch(client, namespace).await
    })
}

/// Reads Palisade's report of `namespace` (`None`: the cluster's), `wgpolicyk8s.io` first,
/// then `openreports.io`.
async fn fetch(client: kube::Client, namespace: Option<&str>) -> Result<Shown> {
    let urls: Vec<String> = match namespace {
        Some(ns) => vec![
            format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{ns}/policyreports/{REPORT_NAME}"),
            format!("/apis/openreports.io/v1alpha1/namespaces/{ns}/reports/{REPORT_NAME}"),
        ],
        None => vec![
            format!("/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports/{REPORT_NAME}"),
            format!("/apis/openreports.io/v1alpha1/clusterreports/{REPORT_NAME}"),
        ],
    };
    for url in &urls {
        let request = http::Request::get(url.as_str())
            .body(Vec::new())
            .map_err(|e| anyhow!("{url}: {e}"))?;
        match client.request::<Shown>(request).await {
            Ok(report) => return Ok(report),
            // Not there (or that API is not installed): try the other API.
            Err(kube::Error::Api(s)) if s.is_not_found() => continue,
            Err(e) => return Err(e).with_context(|| url.clone()),
        }
    }
    bail!(
        "no report found ({}): the namespace has no pods or policies, or palisade-operator \
         does not write reports",
        urls.join(", ")
    )
}

fn label(kind: Option<ResultKind>) -> &'static str {
    match kind {
        Some(ResultKind::Fail) => "FAIL",
        Some(ResultKind::Error) => "ERROR",
        Some(ResultKind::Warn) => "WARN",
        Some(ResultKind::Skip) => "SKIP",
        Some(ResultKind::Pass) => "PASS",
        None => "-",
    }
}

fn rank(kind: Option<ResultKind>) -> u8 {
    match kind {
        Some(ResultKind::Fail) => 0,
        Some(ResultKind::Error) => 1,
        Some(ResultKind::Warn) => 2,
        Some(ResultKind::Skip) => 3,
        Some(ResultKind::Pass) => 4,
        None => 5,
    }
}

/// How long ago an RFC 3339 time was, as `1h2m`, `3m4s` or `5s`.
fn age(since: &str, now: SystemTime) -> Option<String> {
    let t: k8s_openapi::jiff::Timestamp = since.parse().ok()?;
    let now = k8s_openapi::jiff::Timestamp::try_from(now).ok()?;
    let secs = now.as_second().saturating_sub(t.as_second()).max(0);
    Some(match secs {
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    })
}

/// The report as text: a header with the counts, then one block per result, failures first.
pub fn plain(report: &Shown, now: SystemTime) -> String {
    let mut out = String::new();
    let name = report.metadata.name.as_deref().unwrap_or(REPORT_NAME);
    let _ = match &report.metadata.namespace {
        Some(ns) => writeln!(out, "{} {ns}/{name}", report.kind),
        None => writeln!(out, "{} {name}", report.kind),
    };
    let s = &report.summary;
    let _ = writeln!(
        out,
        "pass {}  fail {}  warn {}  error {}  skip {}",
        s.pass, s.fail, s.warn, s.error, s.skip
    );
    let mut results: Vec<&ReportResult> = report.results.iter().collect();
    results.sort_by_key(|r| rank(r.result));
    for r in results {
        let _ = writeln!(out);
        let mut head = format!("{:<5} {}", label(r.result), r.policy);
        if let Some(rule) = &r.rule {
            let _ = write!(head, " {rule}");
        }
        if let Some(category) = &r.category {
            let _ = write!(head, "  [{category}]");
        }
        let _ = writeln!(out, "{head}");
        if let Some(message) = &r.message {
            let _ = writeln!(out, "      {message}");
        }
        for (key, value) in &r.properties {
            let since = match key.as_str() {
                "pendingSince" | "rejectedSince" => age(value, now)
                    .map(|a| format!(" ({a} ago)"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let _ = writeln!(out, "      {key}: {value}{since}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const REPORT: &str = r#"
apiVersion: wgpolicyk8s.io/v1alpha2
kind: PolicyReport
metadata: {name: palisade, namespace: prod}
summary: {pass: 1, fail: 1, warn: 0, error: 0, skip: 1}
results:
- policy: NetworkPolicy/a
  category: realisation
  result: pass
  message: realised on every node hosting a selected pod (n1)
  properties: {nodes: n1}
- policy: NetworkPolicy/b
  rule: ingress[0]
  category: unsupported
  result: fail
  message: not realised
- policy: NetworkPolicy/c
  category: realisation
  result: skip
  message: pending
  properties: {pendingSince: "2026-01-01T00:00:00Z"}
"#;

    #[test]
    fn plain_output_lists_failures_first_with_ages() {
        let report: Shown = serde_yaml::from_str(REPORT).expect("report");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + 75);
        assert_eq!(
            plain(&report, now),
            "PolicyReport prod/palisade\n\
             pass 1  fail 1  warn 0  error 0  skip 1\n\
             \n\
             FAIL  NetworkPolicy/b ingress[0]  [unsupported]\n      not realised\n\
             \n\
             SKIP  NetworkPolicy/c  [realisation]\n      pending\n      pendingSince: 2026-01-01T00:00:00Z (1m15s ago)\n\
             \n\
             PASS  NetworkPolicy/a  [realisation]\n      realised on every node hosting a selected pod (n1)\n      nodes: n1\n"
        );
    }

    #[test]
    fn reads_the_report_of_either_api_from_the_cluster() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(either_api());
    }

    async fn either_api() {
        use tower_test::mock;
        let (service, mut handle) =
            mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            let answer = |status: u16, body: String| {
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(body.into_bytes()))
                    .expect("response")
            };
            let (request, send) = handle.next_request().await.expect("first request");
            assert_eq!(
                request.uri().to_string(),
                "/apis/wgpolicyk8s.io/v1alpha2/namespaces/prod/policyreports/palisade"
            );
            send.send_response(answer(
                404,
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#.into(),
            ));
            let (request, send) = handle.next_request().await.expect("second request");
            assert_eq!(
                request.uri().to_string(),
                "/apis/openreports.io/v1alpha1/namespaces/prod/reports/palisade"
            );
            let report: serde_json::Value = serde_yaml::from_str(REPORT).expect("yaml");
            let mut report = report;
            report["apiVersion"] = "openreports.io/v1alpha1".into();
            report["kind"] = "Report".into();
            send.send_response(answer(200, report.to_string()));
        });
        let shown = fetch(client, Some("prod"))
            .await
            .expect("the OpenReports report");
        server.await.expect("server");
        assert_eq!(shown.kind, "Report");
        assert_eq!(shown.summary.fail, 1);
        assert_eq!(shown.results.len(), 3);
    }

    #[test]
    fn reads_the_operator_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("report.prod.yaml"), REPORT).expect("write");
        let args = Args {
            namespace: Some("prod".into()),
            cluster: false,
            dir: Some(dir.path().to_path_buf()),
            output: Output::Plain,
        };
        let shown = from_dir(dir.path(), &args).expect("found the OpenReports file");
        assert_eq!(shown.summary.fail, 1);
        let missing = Args {
            namespace: Some("other".into()),
            ..args
        };
        let err = from_dir(dir.path(), &missing).expect_err("no report");
        assert!(err.to_string().contains("policyreport.other.yaml"), "{err}");
    }
}
