//! Renderings of stored decisions: an aligned table for people, CSV and JSON for programs.
//! The CLI and the HTTP API print the same columns.

use std::fmt::Write as _;

use crate::StoredDecision;

/// The columns of the table and of CSV, in order.
pub const COLUMNS: [&str; 15] = [
    "id",
    "first_seen_ms",
    "last_seen_ms",
    "count",
    "node",
    "direction",
    "verdict",
    "protocol",
    "source",
    "src_port",
    "destination",
    "dst_port",
    "tier",
    "policy",
    "rule",
];

fn cells(d: &StoredDecision) -> [String; 15] {
    let opt = |v: Option<i64>| v.map_or(String::new(), |v| v.to_string());
    // A denial no rule matched: name the policies that isolate the pod.
    let policy = match (&d.policy, d.isolated_by.0.is_empty()) {
        (Some(p), _) => p.clone(),
        (None, false) => format!("isolated by {}", d.isolated_by.0.join(", ")),
        (None, true) => String::new(),
    };
    let rule = match (d.rule_index, &d.rule_name) {
        (Some(i), Some(n)) if !n.is_empty() => format!("{i} ({n})"),
        (Some(i), _) => i.to_string(),
        (None, _) => d.rule_id.clone(),
    };
    [
        d.id.to_string(),
        d.first_seen_ms.to_string(),
        d.last_seen_ms.to_string(),
        d.count.to_string(),
        d.node.clone(),
        d.direction.clone(),
        d.verdict.clone(),
        d.protocol.clone(),
        d.src_endpoint(),
        opt(d.src_port),
        d.dst_endpoint(),
        opt(d.dst_port),
        d.tier.clone(),
        policy,
        rule,
    ]
}

/// CSV (RFC 4180) with a header line.
pub fn csv(rows: &[StoredDecision], header: bool) -> String {
    let mut out = String::new();
    if header {
        out.push_str(&COLUMNS.join(","));
        out.push_str("\r\n");
    }
    for d in rows {
        let line: Vec<String> = cells(d).iter().map(|c| csv_field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Quotes a field when it holds a separator, a quote or a line break.
pub fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// JSON lines: one object per decision.
pub fn json_lines(rows: &[StoredDecision]) -> String {
    let mut out = String::new();
    for d in rows {
        if let Ok(line) = serde_json::to_string(d) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// An aligned table with a header.
pub fn table(rows: &[StoredDecision], header: bool) -> String {
    let body: Vec<[String; 15]> = rows.iter().map(cells).collect();
    let mut widths = COLUMNS.map(str::len);
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(text, "{c:<w$}");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    if header {
        line(&COLUMNS.map(String::from));
    }
    for row in &body {
        line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
