//! Flow decisions on the stream: what the enforcer's NFLOG reader sends, what the operator
//! stores in the audit database.
//!
//! ```text
//!   enforcer: NFLOG reader ──► aggregate ──► spool (bounded file) ══ ClientMessage::Decisions ══► operator: audit store
//!                                              ▲                                                      │
//!                                              └──────────── ServerMessage::DecisionsAck { seq } ◄────┘
//! ```
//!
//! Delivery is at least once on the wire and exactly once in the database: every batch
//! carries the enforcer instance's `source` (node name plus an id kept in its spool
//! directory across restarts) and a sequence number that only grows for that source. The
//! enforcer keeps a batch spooled until the operator acknowledges its `seq` (cumulative: every
//! batch up to `seq` is stored); the operator acknowledges only after the batch is committed,
//! and the store ignores a `(source, seq, index)` it already holds, so a batch sent again
//! after a lost acknowledgement is not stored twice.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A batch of aggregated decisions (and the gaps the enforcer could not avoid).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionBatch {
    /// The enforcer instance: `<node>/<id>`, the id kept across restarts in the spool.
    pub source: String,
    /// Grows by one per batch of this source.
    pub seq: u64,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    #[serde(default)]
    pub gaps: Vec<Gap>,
}

/// Identical decisions seen inside one aggregation window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// First and last packet of the window, milliseconds since the Unix epoch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// How many connections (allowed) or packets (denied, after rate limiting).
    pub count: u64,
    /// The node whose enforcer saw it.
    pub node: String,
    /// The direction of the rule that decided: `ingress` (at the destination pod) or
    /// `egress` (at the source pod).
    pub direction: AuditDirection,
    pub verdict: Verdict,
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`, or the IP protocol number.
    pub protocol: String,
    pub src_ip: IpAddr,
    /// TCP/UDP/SCTP port; for ICMP the type.
    #[serde(default)]
    pub src_port: Option<u16>,
    pub dst_ip: IpAddr,
    /// TCP/UDP/SCTP port; for ICMP the code.
    #[serde(default)]
    pub dst_port: Option<u16>,
    /// The pods at either end, when the enforcer knows them (its local pods); the operator
    /// fills the others from its index when it stores the decision. `None` after that:
    /// "external" (no pod has the address).
    #[serde(default)]
    pub src: Option<Endpoint>,
    #[serde(default)]
    pub dst: Option<Endpoint>,
    /// The short rule id of the NFLOG prefix.
    pub rule_id: String,
    /// What it stands for: the tier...
    pub tier: String,
    /// ...the policy (`Kind ns/name` or `Kind name`), `None` for a tier's default
    /// decision...
    #[serde(default)]
    pub policy: Option<String>,
    /// ...the rule's index in that direction and its name.
    #[serde(default)]
    pub rule_index: Option<u32>,
    #[serde(default)]
    pub rule_name: Option<String>,
    /// For a denial because the pod is isolated and no rule matched: the policies that
    /// isolate it (`Kind ns/name`), so "why was this dropped" always has an answer.
    #[serde(default)]
    pub isolated_by: Vec<String>,
}

/// A pod at one end of a decision.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub namespace: String,
    pub pod: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDirection {
    Ingress,
    Egress,
}

impl AuditDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDirection::Ingress => "ingress",
            AuditDirection::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// Decisions the enforcer had to drop (spool full, malformed NFLOG messages, kernel buffer
/// overruns): counted, never lost silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub node: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Decisions (or NFLOG messages) lost.
    pub lost: u64,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMessage, ServerMessage};

    #[test]
    fn batch_and_ack_round_trip() {
        let batch = ClientMessage::Decisions(DecisionBatch {
            source: "n1/abc".into(),
            seq: 7,
            decisions: vec![Decision {
                first_seen_ms: 1,
                last_seen_ms: 2,
                count: 3,
                node: "n1".into(),
                direction: AuditDirection::Ingress,
                verdict: Verdict::Deny,
                protocol: "tcp".into(),
                src_ip: "10.0.0.1".parse().expect("ip"),
                src_port: Some(40000),
                dst_ip: "fd00::2".parse().expect("ip"),
                dst_port: Some(80),
                src: None,
                dst: Some(Endpoint {
                    namespace: "default".into(),
                    pod: "web".into(),
                }),
                rule_id: "TabcDI".into(),
                tier: "networkpolicy".into(),
                policy: None,
                rule_index: None,
                rule_name: None,
                isolated_by: vec!["NetworkPolicy default/deny".into()],
            }],
            gaps: vec![Gap {
                node: "n1".into(),
                from_ms: 0,
                to_ms: 5,
                lost: 2,
                reason: "spool full".into(),
            }],
        });
        let text = serde_json::to_string(&batch).expect("serialises");
        assert!(
            text.starts_with(r#"{"decisions":{"source":"n1/abc""#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(&text).expect("parses"),
            batch
        );
        let ack: ServerMessage =
            serde_json::from_str(r#"{"decisions_ack":{"seq":7}}"#).expect("parses");
        assert_eq!(ack, ServerMessage::DecisionsAck { seq: 7 });
    }
}
