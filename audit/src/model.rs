//! What the store holds and answers, in the shape the CLI and the HTTP API print.

use serde::{Deserialize, Serialize};

/// One stored decision: a row of `decisions` (and of the `recent_denies` view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredDecision {
    pub id: i64,
    pub source: String,
    pub seq: i64,
    pub idx: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub count: i64,
    pub node: String,
    pub direction: String,
    pub verdict: String,
    pub protocol: String,
    pub src_ip: String,
    pub src_port: Option<i64>,
    pub dst_ip: String,
    pub dst_port: Option<i64>,
    pub src_namespace: Option<String>,
    pub src_pod: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_pod: Option<String>,
    pub rule_id: String,
    pub tier: String,
    pub policy: Option<String>,
    pub rule_index: Option<i64>,
    pub rule_name: Option<String>,
    #[sqlx(try_from = "String")]
    pub isolated_by: IsolatedBy,
    pub stored_at_ms: i64,
}

impl StoredDecision {
    /// `ns/pod`, or the address when no pod has it ("external").
    pub fn src_endpoint(&self) -> String {
        endpoint(&self.src_namespace, &self.src_pod, &self.src_ip)
    }

    pub fn dst_endpoint(&self) -> String {
        endpoint(&self.dst_namespace, &self.dst_pod, &self.dst_ip)
    }
}

fn endpoint(ns: &Option<String>, pod: &Option<String>, ip: &str) -> String {
    match (ns, pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => ip.to_string(),
    }
}

/// The policies that isolate a pod a denial hit; stored as a JSON array of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IsolatedBy(pub Vec<String>);

impl TryFrom<String> for IsolatedBy {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.is_empty() {
            return Ok(IsolatedBy::default());
        }
        serde_json::from_str(&text).map(IsolatedBy)
    }
}

/// One stored gap: decisions an enforcer had to drop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredGap {
    pub id: i64,
    pub source: String,
    pub seq: i64,
    pub idx: i64,
    pub node: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub lost: i64,
    pub reason: String,
    pub stored_at_ms: i64,
}

/// A row of the `top_talkers` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct TopTalker {
    pub source: String,
    pub destination: String,
    pub connections: i64,
    pub denied: i64,
    pub last_seen_ms: i64,
}

/// A row of the `traffic_per_policy` view (`policy` empty: a tier's default decision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PolicyTraffic {
    pub tier: String,
    pub policy: String,
    pub verdict: String,
    pub decisions: i64,
    pub connections: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// Denied connections (or packets) attributed to one policy on one side: the policy whose
/// rule denied, or, for a denial because no rule matched, each policy that isolates the pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeniedCount {
    /// The namespace of the pod the policy protects (destination for ingress, source for
    /// egress); empty when that side is no pod.
    pub namespace: String,
    /// `Kind ns/name` or `Kind name`.
    pub policy: String,
    pub direction: String,
    pub count: i64,
}

/// What one batch write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    pub decisions: u64,
    pub gaps: u64,
    /// Entries already stored (a batch sent again): skipped.
    pub duplicates: u64,
}

/// How much the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Decisions (and gaps) last seen longer ago than this are deleted.
    pub max_age_ms: Option<i64>,
    /// At most this many decision rows are kept (oldest deleted first).
    pub max_rows: Option<u64>,
    /// The tables and their indexes are kept under this many bytes (oldest decisions
    /// deleted first; see [`crate::prune`]).
    pub max_bytes: Option<u64>,
    /// Rows deleted per statement, so writers are never blocked for long.
    pub chunk: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_ms: Some(7 * 24 * 3_600_000),
            max_rows: Some(10_000_000),
            max_bytes: None,
            chunk: 5_000,
        }
    }
}

/// What one retention pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub by_age: u64,
    pub by_size: u64,
    pub gaps: u64,
    /// Statements run (each deletes at most `chunk` rows).
    pub chunks: u64,
}
