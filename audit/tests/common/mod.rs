//! Builders shared by the store tests.
#![allow(dead_code)]

use palisade_wire::audit::{AuditDirection, Decision, DecisionBatch, Endpoint, Gap, Verdict};

pub fn ep(ns: &str, pod: &str) -> Option<Endpoint> {
    Some(Endpoint {
        namespace: ns.into(),
        pod: pod.into(),
    })
}

/// A decision from `src` to `dst` (pods), seen at `at_ms`.
pub fn mk_decision(
    src: Option<Endpoint>,
    dst: Option<Endpoint>,
    verdict: Verdict,
    direction: AuditDirection,
    at_ms: i64,
) -> Decision {
    Decision {
        first_seen_ms: at_ms - 10,
        last_seen_ms: at_ms,
        count: 1,
        node: "n1".into(),
        direction,
        verdict,
        protocol: "tcp".into(),
        src_ip: "10.0.0.1".parse().expect("ip"),
        src_port: Some(40000),
        dst_ip: "10.0.0.2".parse().expect("ip"),
        dst_port: Some(80),
        src,
        dst,
        rule_id: "P1R0I".into(),
        tier: "networkpolicy".into(),
        policy: None,
        rule_index: None,
        rule_name: None,
        isolated_by: vec![],
    }
}

pub fn mk_batch(source: &str, seq: u64, decisions: Vec<Decision>) -> DecisionBatch {
    DecisionBatch {
        source: source.into(),
        seq,
        decisions,
        gaps: vec![],
    }
}

pub fn mk_gap(at_ms: i64, lost: u64) -> Gap {
    Gap {
        node: "n1".into(),
        from_ms: at_ms - 1000,
        to_ms: at_ms,
        lost,
        reason: "spool full".into(),
    }
}
