//! The query builder: a filter on decisions turned into SQL whose every value is a bound
//! parameter (never text spliced into the statement), for either backend's placeholders.
//! The CLI and the HTTP API both build their queries here.

use palisade_wire::audit::{AuditDirection, Verdict};
use serde::{Deserialize, Serialize};

use crate::AuditError;

/// The most rows one query returns.
pub const MAX_LIMIT: u32 = 100_000;
/// What a query returns when no limit is given.
pub const DEFAULT_LIMIT: u32 = 100;

/// Which decisions to return. Every field narrows; `None` does not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionFilter {
    /// Either side's namespace (with `pod`: that pod, on either side).
    pub namespace: Option<String>,
    /// Either side's pod name.
    pub pod: Option<String>,
    pub src_namespace: Option<String>,
    pub src_pod: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_pod: Option<String>,
    pub direction: Option<AuditDirection>,
    pub verdict: Option<Verdict>,
    /// The policy that decided, or one that isolates the pod a denial hit (`Kind ns/name`).
    pub policy: Option<String>,
    pub tier: Option<String>,
    /// Decisions last seen at or after this time (ms since the epoch)...
    pub since_ms: Option<i64>,
    /// ...and first seen at or before this one.
    pub until_ms: Option<i64>,
    /// Only rows stored after this id, oldest first (follow mode); otherwise newest first.
    pub after_id: Option<i64>,
    /// At most this many rows (`None`: [`DEFAULT_LIMIT`]).
    pub limit: Option<u32>,
}

/// How a backend writes its placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholders {
    /// `?` (SQLite).
    Question,
    /// `$1`, `$2`, ... (PostgreSQL).
    Dollar,
}

/// A bound value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Int(i64),
}

/// A statement and its parameters, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltQuery {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Accumulates `AND`ed conditions with their parameters.
struct Conditions {
    style: Placeholders,
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Conditions {
    fn new(style: Placeholders) -> Self {
        Conditions {
            style,
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Binds `value` and returns its placeholder.
    fn bind(&mut self, value: Param) -> String {
        self.params.push(value);
        match self.style {
            Placeholders::Question => "?".to_string(),
            Placeholders::Dollar => format!("${}", self.params.len()),
        }
    }

    fn text(&mut self, value: &str) -> String {
        self.bind(Param::Text(value.to_string()))
    }

    /// `column = value`.
    fn equals(&mut self, column: &str, value: &str) {
        let p = self.text(value);
        self.clauses.push(format!("{column} = {p}"));
    }
}

impl DecisionFilter {
    /// The effective limit, or an error when it is out of range.
    pub fn limit(&self) -> Result<u32, AuditError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(0) => Err(AuditError::Filter("limit must be at least 1".into())),
            Some(n) if n > MAX_LIMIT => Err(AuditError::Filter(format!(
                "limit {n} is over the maximum of {MAX_LIMIT}"
            ))),
            Some(n) => Ok(n),
        }
    }

    /// Checks the limit and the time range.
    pub fn validate(&self) -> Result<(), AuditError> {
        self.limit()?;
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms) {
            if since > until {
                return Err(AuditError::Filter(format!(
                    "the time range ends ({until}) before it starts ({since})"
                )));
            }
        }
        Ok(())
    }

    /// `SELECT * FROM decisions WHERE ...` with every value a parameter.
    pub fn build(&self, style: Placeholders) -> Result<BuiltQuery, AuditError> {
        self.validate()?;
        let limit = self.limit()?;
        let mut c = Conditions::new(style);
        self.either_side(&mut c);
        for (column, value) in [
            ("src_namespace", &self.src_namespace),
            ("src_pod", &self.src_pod),
            ("dst_namespace", &self.dst_namespace),
            ("dst_pod", &self.dst_pod),
            ("tier", &self.tier),
        ] {
            if let Some(v) = value {
                c.equals(column, v);
            }
        }
        if let Some(d) = self.direction {
            c.equals("direction", d.as_str());
        }
        if let Some(v) = self.verdict {
            c.equals("verdict", v.as_str());
        }
        if let Some(policy) = &self.policy {
            let exact = c.text(policy);
            // isolated_by is a JSON array: match the quoted name, LIKE's wildcards escaped.
            let pattern = c.text(&like_pattern(policy));
            c.clauses.push(format!(
                "(policy = {exact} OR isolated_by LIKE {pattern} ESCAPE '\\')"
            ));
        }
        if let Some(since) = self.since_ms {
            let p = c.bind(Param::Int(since));
            c.clauses.push(format!("last_seen_ms >= {p}"));
        }
        if let Some(until) = self.until_ms {
            let p = c.bind(Param::Int(until));
            c.clauses.push(format!("first_seen_ms <= {p}"));
        }
        let order = if let Some(after) = self.after_id {
            let p = c.bind(Param::Int(after));
            c.clauses.push(format!("id > {p}"));
            "id ASC"
        } else {
            "last_seen_ms DESC, id DESC"
        };
        let mut sql = String::from("SELECT * FROM decisions");
        if !c.clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&c.clauses.join(" AND "));
        }
        let p = c.bind(Param::Int(i64::from(limit)));
        sql.push_str(&format!(" ORDER BY {order} LIMIT {p}"));
        Ok(BuiltQuery {
            sql,
            params: c.params,
        })
    }

    /// `namespace` / `pod`: the same pod on either side.
    fn either_side(&self, c: &mut Conditions) {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => {
                let (a, b, x, y) = (c.text(ns), c.text(pod), c.text(ns), c.text(pod));
                c.clauses.push(format!(
                    "((src_namespace = {a} AND src_pod = {b}) OR (dst_namespace = {x} AND dst_pod = {y}))"
                ));
            }
            (Some(ns), None) => {
                let (a, b) = (c.text(ns), c.text(ns));
                c.clauses
                    .push(format!("(src_namespace = {a} OR dst_namespace = {b})"));
            }
            (None, Some(pod)) => {
                let (a, b) = (c.text(pod), c.text(pod));
                c.clauses.push(format!("(src_pod = {a} OR dst_pod = {b})"));
            }
            (None, None) => {}
        }
    }
}

/// `%"name"%` for a LIKE over a JSON array, with `\`, `%` and `_` escaped.
fn like_pattern(name: &str) -> String {
    let quoted = serde_json::to_string(name).unwrap_or_default();
    let mut out = String::with_capacity(quoted.len() + 2);
    out.push('%');
    for ch in quoted.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// `ingress` or `egress`.
pub fn parse_direction(text: &str) -> Result<AuditDirection, AuditError> {
    match text {
        "ingress" => Ok(AuditDirection::Ingress),
        "egress" => Ok(AuditDirection::Egress),
        _ => Err(AuditError::Filter(format!(
            "direction {text:?}: expected ingress or egress"
        ))),
    }
}

/// `allow` or `deny`.
pub fn parse_verdict(text: &str) -> Result<Verdict, AuditError> {
    match text {
        "allow" => Ok(Verdict::Allow),
        "deny" => Ok(Verdict::Deny),
        _ => Err(AuditError::Filter(format!(
            "verdict {text:?}: expected allow or deny"
        ))),
    }
}

/// A point in time given as milliseconds since the epoch (`1764115200000`), or as an age
/// before `now_ms`: a number with a unit, `s`, `m`, `h` or `d` (`90s`, `15m`, `1h`, `7d`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, AuditError> {
    let bad = || {
        AuditError::Filter(format!(
            "{text:?}: expected milliseconds since the epoch or an age such as 15m, 1h, 7d"
        ))
    };
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let unit_at = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(unit_ms)
        .map(|age| now_ms.saturating_sub(age))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_epoch_milliseconds_or_ages() {
        assert_eq!(parse_time("1234", 10_000).ok(), Some(1234));
        assert_eq!(parse_time("1h", 4_000_000).ok(), Some(400_000));
        assert_eq!(parse_time("2m", 200_000).ok(), Some(80_000));
        assert_eq!(parse_time("1d", 86_400_000).ok(), Some(0));
        for bad in ["", "h", "1y", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn values_are_parameters_not_text() {
        let hostile = "x' OR 1=1 --";
        let filter = DecisionFilter {
            namespace: Some(hostile.into()),
            pod: Some(hostile.into()),
            policy: Some(hostile.into()),
            tier: Some(hostile.into()),
            verdict: Some(Verdict::Deny),
            since_ms: Some(5),
            ..Default::default()
        };
        for style in [Placeholders::Question, Placeholders::Dollar] {
            let q = filter.build(style).expect("builds");
            assert!(!q.sql.contains("OR 1=1"), "{}", q.sql);
            assert!(q.params.contains(&Param::Text(hostile.into())));
        }
        let q = filter.build(Placeholders::Dollar).expect("builds");
        // 4 for the pod on either side, 2 for the policy, tier, verdict, since, limit.
        assert_eq!(q.params.len(), 10);
        assert!(q.sql.contains("$10"), "{}", q.sql);
        assert!(q
            .sql
            .ends_with("ORDER BY last_seen_ms DESC, id DESC LIMIT $10"));
    }

    #[test]
    fn follow_mode_is_oldest_first_after_an_id() {
        let q = DecisionFilter {
            after_id: Some(42),
            limit: Some(7),
            ..Default::default()
        }
        .build(Placeholders::Question)
        .expect("builds");
        assert_eq!(
            q.sql,
            "SELECT * FROM decisions WHERE id > ? ORDER BY id ASC LIMIT ?"
        );
        assert_eq!(q.params, vec![Param::Int(42), Param::Int(7)]);
    }

    #[test]
    fn out_of_range_filters_are_errors() {
        for filter in [
            DecisionFilter {
                limit: Some(0),
                ..Default::default()
            },
            DecisionFilter {
                limit: Some(MAX_LIMIT + 1),
                ..Default::default()
            },
            DecisionFilter {
                since_ms: Some(10),
                until_ms: Some(5),
                ..Default::default()
            },
        ] {
            assert!(matches!(
                filter.build(Placeholders::Question),
                Err(AuditError::Filter(_))
            ));
        }
    }

    #[test]
    fn like_wildcards_in_a_policy_name_are_escaped() {
        assert_eq!(like_pattern("a_b%c"), r#"%"a\_b\%c"%"#);
    }
}
