//! A batch checked and flattened into the columns both backends insert.

use palisade_wire::audit::{DecisionBatch, Endpoint};

use crate::AuditError;

/// One `decisions` row to insert.
pub(crate) struct DecisionRow {
    pub idx: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub count: i64,
    pub node: String,
    pub direction: &'static str,
    pub verdict: &'static str,
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
    pub isolated_by: String,
}

/// One `gaps` row to insert.
pub(crate) struct GapRow {
    pub idx: i64,
    pub node: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub lost: i64,
    pub reason: String,
}

/// A batch ready to insert: every value checked against what the columns hold.
pub(crate) struct BatchRows {
    pub source: String,
    pub seq: i64,
    pub decisions: Vec<DecisionRow>,
    pub gaps: Vec<GapRow>,
}

/// Checks `batch` and flattens it. Errors name the entry at fault; nothing is stored from
/// a batch that has one (the caller records the whole batch as a gap instead).
pub(crate) fn flatten(batch: &DecisionBatch) -> Result<BatchRows, AuditError> {
    let bad = |reason: String| AuditError::InvalidBatch {
        origin: batch.source.clone(),
        seq: batch.seq,
        reason,
    };
    text("source", &batch.source).map_err(bad)?;
    if batch.source.is_empty() {
        return Err(bad("the source is empty".into()));
    }
    let seq = int("seq", batch.seq).map_err(bad)?;
    let mut decisions = Vec::with_capacity(batch.decisions.len());
    for (i, d) in batch.decisions.iter().enumerate() {
        let at = |reason: String| bad(format!("decision {i}: {reason}"));
        for (field, value) in [
            ("node", d.node.as_str()),
            ("protocol", &d.protocol),
            ("rule_id", &d.rule_id),
            ("tier", &d.tier),
            ("policy", d.policy.as_deref().unwrap_or("")),
            ("rule_name", d.rule_name.as_deref().unwrap_or("")),
        ] {
            text(field, value).map_err(at)?;
        }
        for e in [&d.src, &d.dst].into_iter().flatten() {
            text("namespace", &e.namespace).map_err(at)?;
            text("pod", &e.pod).map_err(at)?;
        }
        for p in &d.isolated_by {
            text("isolated_by", p).map_err(at)?;
        }
        if d.first_seen_ms > d.last_seen_ms {
            return Err(at(format!(
                "first seen ({}) after last seen ({})",
                d.first_seen_ms, d.last_seen_ms
            )));
        }
        let (src_namespace, src_pod) = split(&d.src);
        let (dst_namespace, dst_pod) = split(&d.dst);
        decisions.push(DecisionRow {
            idx: i as i64,
            first_seen_ms: d.first_seen_ms,
            last_seen_ms: d.last_seen_ms,
            count: int("count", d.count).map_err(at)?,
            node: d.node.clone(),
            direction: d.direction.as_str(),
            verdict: d.verdict.as_str(),
            protocol: d.protocol.clone(),
            src_ip: d.src_ip.to_string(),
            src_port: d.src_port.map(i64::from),
            dst_ip: d.dst_ip.to_string(),
            dst_port: d.dst_port.map(i64::from),
            src_namespace,
            src_pod,
            dst_namespace,
            dst_pod,
            rule_id: d.rule_id.clone(),
            tier: d.tier.clone(),
            policy: d.policy.clone(),
            rule_index: d.rule_index.map(i64::from),
            rule_name: d.rule_name.clone(),
            isolated_by: serde_json::to_string(&d.isolated_by)
                .map_err(|e| at(format!("isolated_by: {e}")))?,
        });
    }
    let mut gaps = Vec::with_capacity(batch.gaps.len());
    for (i, g) in batch.gaps.iter().enumerate() {
        let at = |reason: String| bad(format!("gap {i}: {reason}"));
        text("node", &g.node).map_err(at)?;
        text("reason", &g.reason).map_err(at)?;
        gaps.push(GapRow {
            idx: i as i64,
            node: g.node.clone(),
            from_ms: g.from_ms,
            to_ms: g.to_ms,
            lost: int("lost", g.lost).map_err(at)?,
            reason: g.reason.clone(),
        });
    }
    Ok(BatchRows {
        source: batch.source.clone(),
        seq,
        decisions,
        gaps,
    })
}

fn split(e: &Option<Endpoint>) -> (Option<String>, Option<String>) {
    match e {
        Some(e) => (Some(e.namespace.clone()), Some(e.pod.clone())),
        None => (None, None),
    }
}

/// PostgreSQL text cannot hold NUL; neither backend gets it.
fn text(field: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{field} contains a NUL character"));
    }
    Ok(())
}

/// The columns are signed 64-bit.
fn int(field: &str, value: u64) -> Result<i64, String> {
    i64::try_from(value).map_err(|_| format!("{field} {value} is over {}", i64::MAX))
}
