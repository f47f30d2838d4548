//! The stream between the operator and the enforcers: what crosses it and how.
//!
//! ```text
//!   operator:  hub ──► stream server ══ gRPC over TLS (HTTP/2), bearer token ══► enforcer: stream client ──► apply
//!                          ▲                                                              │
//!                          └──────────── realised version, per-rule errors ◄──────────────┘
//! ```
//!
//! # Protocol
//!
//! One gRPC service, `palisade.stream.v1.Distributor`, with one bidirectional
//! streaming method, `Follow` (path `/palisade.stream.v1.Distributor/Follow`).
//! Each gRPC message is one JSON document ([`codec::JsonCodec`]): the compiled
//! rule set is the serde form of [`NodeRuleSet`], so the enforcer reads exactly
//! what the operator compiled, with no second schema to keep in step.
//!
//! - The enforcer sends `authorization: Bearer <token>` (its projected
//!   ServiceAccount token) in the request metadata, then [`ClientMessage::Hello`]
//!   first: the node it enforces and the version and [`digest`] of the rule set it
//!   has in force (`applied`, absent when it has none).
//! - The operator authenticates the token and checks the node (it must be the node
//!   of the pod the token is bound to), then answers:
//!   - [`ServerMessage::Snapshot`] with the node's full rule set, or
//!   - [`ServerMessage::Current`] when the enforcer's digest equals the desired
//!     state's: nothing to apply, only the operator's version number to adopt
//!     (versions are only comparable within one operator process; the digest is
//!     what makes a resume after an operator restart or failover cheap), or
//!   - nothing yet, when the node has no compiled state yet (the enforcer keeps
//!     what it has).
//! - Then every change of the node's desired state is one more `Snapshot` (the full
//!   rule set: the enforcer diffs against what it installed, so a message is never
//!   "partial"; a slow enforcer only ever gets the latest state, intermediate ones
//!   are skipped).
//! - After each apply attempt the enforcer sends [`ClientMessage::Report`]: the
//!   version in force, the rules it enforces fail-closed, and the version it
//!   failed to apply, if any.
//!
//! - At any time the enforcer may send [`ClientMessage::Decisions`] (flow decisions for the
//!   audit log, [`audit`]); the operator answers [`ServerMessage::DecisionsAck`] once they
//!   are stored.
//!
//! Refusals are gRPC statuses: `UNAUTHENTICATED` (no or bad token),
//! `PERMISSION_DENIED` (not the enforcer's ServiceAccount, or a node other than
//! the pod's), `UNAVAILABLE` (this replica does not lead, or the token could not be
//! checked right now: retry with backoff), `INVALID_ARGUMENT` (no hello).

pub mod audit;
pub mod codec;
pub mod owners;
#[cfg(feature = "pki")]
pub mod pki;

use std::fmt;
use std::sync::Arc;

pub use palisade_policy::compiled::NodeRuleSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The generated gRPC client and server (`tonic`, from `build.rs`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(
        env!("OUT_DIR"),
        "/palisade.stream.v1.Distributor.rs"
    ));
}

pub use pb::distributor_client::DistributorClient;
pub use pb::distributor_server::{Distributor, DistributorServer};

/// The method's path, for logs and docs.
pub const FOLLOW_PATH: &str = "/palisade.stream.v1.Distributor/Follow";

/// Largest message either side accepts (a node's full rule set, as JSON).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// What the enforcer sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of every stream.
    Hello(Hello),
    /// After each apply attempt.
    Report(Report),
    /// Flow decisions read from NFLOG ([`audit`]).
    Decisions(audit::DecisionBatch),
}

/// Who the enforcer says it is and what it has in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The node it enforces (must be the node of the pod its token is bound to).
    pub node: String,
    /// The rule set in force on the node (from this or an earlier stream, or from
    /// the enforcer's local copy after a restart); `None` when it has none.
    #[serde(default)]
    pub applied: Option<Applied>,
    /// The enforcer's software version, for logs.
    #[serde(default)]
    pub agent: String,
}

/// A rule set in force: its version and [`digest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u64,
    pub digest: String,
}

/// The outcome of an apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The version in force (the last one applied successfully).
    pub version: u64,
    /// Its [`digest`].
    pub digest: String,
    /// Rules of that version enforced fail-closed.
    #[serde(default)]
    pub rule_errors: Vec<RuleError>,
    /// A newer version the enforcer could not apply (the rules of `version` stay).
    #[serde(default)]
    pub failed: Option<Failure>,
}

impl Report {
    /// The errors as the lines the operator records ([`RuleError`]s and the failure).
    pub fn error_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.rule_errors.iter().map(|e| e.to_string()).collect();
        if let Some(f) = &self.failed {
            lines.push(f.to_string());
        }
        lines
    }
}

/// One rule the enforcer could not enforce as written (it enforces it fail-closed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleError {
    /// `Kind ns/name` of the policy.
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// The rule's index in the policy's rules of that direction.
    pub rule: usize,
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} rule {}: {}",
            self.policy, self.direction, self.rule, self.reason
        )
    }
}

/// A version that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub version: u64,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version {} not applied: {}", self.version, self.error)
    }
}

/// What the operator sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMessage {
    /// The node's full desired rule set.
    Snapshot(Arc<NodeRuleSet>),
    /// The enforcer already has the desired rule set (same digest); this is the
    /// operator's version number for it.
    Current { version: u64 },
    /// Every decision batch of this stream's enforcer up to `seq` is stored.
    DecisionsAck { seq: u64 },
}

/// The digest of a rule set's content: SHA-256 (hex) of its JSON with `version`
/// set to 0, so that equal rules compare equal whatever version number an
/// operator process gave them.
pub fn digest(state: &NodeRuleSet) -> String {
    let mut unversioned = state.clone();
    unversioned.version = 0;
    let mut hasher = Sha256::new();
    // Serialising plain structs, vectors and strings cannot fail; an error would
    // only make the digest differ (a snapshot is sent, never skipped wrongly).
    let json = serde_json::to_vec(&unversioned).unwrap_or_default();
    hasher.update(&json);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The `authorization` metadata value for a bearer token.
pub fn bearer(token: &str) -> String {
    format!("Bearer {}", token.trim())
}

/// The token of an `authorization: Bearer ...` value (`None` for other schemes
/// or an empty token).
pub fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: u64) -> NodeRuleSet {
        NodeRuleSet {
            format: palisade_policy::compiled::FORMAT_VERSION,
            node: "n1".into(),
            version,
            ..NodeRuleSet::default()
        }
    }

    #[test]
    fn digest_ignores_the_version_only() {
        assert_eq!(digest(&state(1)), digest(&state(7)));
        let mut other = state(1);
        other.node = "n2".into();
        assert_ne!(digest(&state(1)), digest(&other));
        assert_eq!(digest(&state(1)).len(), 64);
    }

    #[test]
    fn messages_round_trip_as_json() {
        let hello = ClientMessage::Hello(Hello {
            node: "n1".into(),
            applied: Some(Applied {
                version: 3,
                digest: "ab".into(),
            }),
            agent: "0.1.0".into(),
        });
        let text = serde_json::to_string(&hello).expect("serialises");
        assert!(text.starts_with(r#"{"hello":{"node":"n1""#), "{text}");
        assert_eq!(
            serde_json::from_str::<ClientMessage>(&text).expect("parses"),
            hello
        );
        let snap = ServerMessage::Snapshot(Arc::new(state(2)));
        let text = serde_json::to_string(&snap).expect("serialises");
        assert_eq!(
            serde_json::from_str::<ServerMessage>(&text).expect("parses"),
            snap
        );
        let current: ServerMessage =
            serde_json::from_str(r#"{"current":{"version":9}}"#).expect("parses");
        assert_eq!(current, ServerMessage::Current { version: 9 });
    }

    #[test]
    fn report_lines_name_rule_and_failure() {
        let report = Report {
            version: 4,
            digest: String::new(),
            rule_errors: vec![RuleError {
                policy: "NetworkPolicy default/web".into(),
                direction: "ingress".into(),
                rule: 1,
                reason: "domainNames cannot be enforced".into(),
            }],
            failed: Some(Failure {
                version: 5,
                error: "iptables-restore failed".into(),
            }),
        };
        assert_eq!(
            report.error_lines(),
            vec![
                "NetworkPolicy default/web ingress rule 1: domainNames cannot be enforced"
                    .to_string(),
                "version 5 not applied: iptables-restore failed".to_string(),
            ]
        );
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(parse_bearer(&bearer(" abc\n")), Some("abc"));
        assert_eq!(parse_bearer("bearer xyz"), Some("xyz"));
        assert_eq!(parse_bearer("Basic xyz"), None);
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer(""), None);
    }
}
