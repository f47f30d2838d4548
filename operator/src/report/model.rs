//! The internal report model: what Palisade found, per namespace and for the cluster, before it
//! is written as either API (`wgpolicyk8s.io` or `openreports.io`, which share the result shape).

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ObjectReference;
use palisade_crds::reports::{ReportResult, ResultKind, Severity, Summary, Timestamp};

/// Every result Palisade writes carries this `source`.
pub const SOURCE: &str = "palisade";

/// Which report a finding goes to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// The cluster report (tiers, cluster-scoped policies, cluster-wide notices).
    Cluster,
    /// The report of one namespace.
    Namespace(String),
}

/// What kind of check a finding comes from (the result's `category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Whether every node hosting a selected pod has realised the current rules.
    Realisation,
    /// A field Palisade cannot enforce as written (enforced fail-closed) or a rejected object.
    Unsupported,
    /// Something that is enforced as written but is probably not what was meant.
    Lint,
    /// Pods that no policy selects for ingress.
    Unprotected,
    /// The report itself (results left out above the size cap).
    Report,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Realisation => "realisation",
            Category::Unsupported => "unsupported",
            Category::Lint => "lint",
            Category::Unprotected => "unprotected-pods",
            Category::Report => "report",
        }
    }
}

/// One finding: a result without its timestamp (two findings are the same content whatever
/// time they were made at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `Kind/name` of the policy (or object) it is about.
    pub policy: String,
    /// `ingress[0]`, `egress[2]`... when the finding is about one rule.
    pub rule: Option<String>,
    pub category: Category,
    pub result: ResultKind,
    pub severity: Severity,
    pub message: String,
    /// The objects it is about (the policy itself, or pods).
    pub resources: Vec<ObjectRef>,
    pub properties: BTreeMap<String, String>,
}

/// A reference to an object, kept small (turned into an `ObjectReference` when written).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl Finding {
    pub fn new(
        policy: impl Into<String>,
        category: Category,
        result: ResultKind,
        message: impl Into<String>,
    ) -> Finding {
        let severity = match result {
            ResultKind::Fail | ResultKind::Error => Severity::High,
            ResultKind::Warn => Severity::Medium,
            ResultKind::Pass | ResultKind::Skip => Severity::Info,
        };
        Finding {
            policy: policy.into(),
            rule: None,
            category,
            result,
            severity,
            message: message.into(),
            resources: Vec::new(),
            properties: BTreeMap::new(),
        }
    }

    pub fn rule(mut self, rule: impl Into<String>) -> Finding {
        self.rule = Some(rule.into());
        self
    }

    pub fn resource(mut self, r: ObjectRef) -> Finding {
        self.resources.push(r);
        self
    }

    pub fn property(mut self, key: &str, value: impl Into<String>) -> Finding {
        self.properties.insert(key.to_string(), value.into());
        self
    }

    /// The order results are written in: by policy, rule, category, then the rest, so a
    /// report's results never move around between writes of the same content.
    fn sort_key(&self) -> (&str, Option<&str>, Category, ResultKind, &str) {
        (
            &self.policy,
            self.rule.as_deref(),
            self.category,
            self.result,
            &self.message,
        )
    }

    /// The result as written, stamped with `at`.
    pub fn to_result(&self, at: Option<Timestamp>) -> ReportResult {
        ReportResult {
            source: Some(SOURCE.to_string()),
            policy: self.policy.clone(),
            rule: self.rule.clone(),
            category: Some(self.category.as_str().to_string()),
            severity: Some(self.severity),
            timestamp: at,
            result: Some(self.result),
            scored: Some(true),
            resources: self
                .resources
                .iter()
                .map(|r| ObjectReference {
                    api_version: Some(r.api_version.to_string()),
                    kind: Some(r.kind.to_string()),
                    namespace: r.namespace.clone(),
                    name: Some(r.name.clone()),
                    ..ObjectReference::default()
                })
                .collect(),
            resource_selector: None,
            message: Some(self.message.clone()),
            properties: self.properties.clone(),
        }
    }
}

/// Every report Palisade wants to exist, with its findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportSet {
    pub reports: BTreeMap<Scope, Vec<Finding>>,
}

impl ReportSet {
    pub fn push(&mut self, scope: Scope, finding: Finding) {
        self.reports.entry(scope).or_default().push(finding);
    }

    /// Makes sure a report exists for `scope`, even with no findings (a namespace with pods or
    /// policies always has a report).
    pub fn ensure(&mut self, scope: Scope) {
        self.reports.entry(scope).or_default();
    }

    /// Orders every report's findings and caps their number (see [`cap`]).
    pub fn finish(&mut self, max_results: usize) {
        for findings in self.reports.values_mut() {
            cap(findings, max_results);
        }
    }
}

/// How important a result is when the cap forces a choice: failures are kept first.
fn keep_rank(result: ResultKind) -> u8 {
    match result {
        ResultKind::Fail => 0,
        ResultKind::Error => 1,
        ResultKind::Warn => 2,
        ResultKind::Skip => 3,
        ResultKind::Pass => 4,
    }
}

/// Sorts the findings and keeps at most `max` of them: when there are more, the most
/// important `max - 1` stay (fail, error, warn, skip, then pass) and one `warn` result says how
/// many of each kind were left out, so a reader always knows the report is incomplete.
pub fn cap(findings: &mut Vec<Finding>, max: usize) {
    findings.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let max = max.max(1);
    if findings.len() <= max {
        return;
    }
    let mut ranked: Vec<(u8, usize)> = findings
        .iter()
        .enumerate()
        .map(|(i, f)| (keep_rank(f.result), i))
        .collect();
    ranked.sort_unstable();
    let mut keep = vec![false; findings.len()];
    for &(_, i) in ranked.iter().take(max - 1) {
        keep[i] = true;
    }
    let mut left_out: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut kept = Vec::with_capacity(max);
    for (finding, keep) in std::mem::take(findings).into_iter().zip(keep) {
        if keep {
            kept.push(finding);
        } else {
            *left_out.entry(finding.result.as_str()).or_insert(0) += 1;
        }
    }
    let total: usize = left_out.values().sum();
    let detail: Vec<String> = left_out.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut note = Finding::new(
        "palisade/report",
        Category::Report,
        ResultKind::Warn,
        format!(
            "{total} more results left out (at most {max} per report): {}",
            detail.join(", ")
        ),
    )
    .property("leftOut", total.to_string());
    for (kind, n) in left_out {
        note = note.property(&format!("leftOut.{kind}"), n.to_string());
    }
    kept.push(note);
    kept.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    *findings = kept;
}

/// The results and summary of one report as written at `now`.
pub fn results(findings: &[Finding], now: SystemTime) -> (Vec<ReportResult>, Summary) {
    let at = timestamp(now);
    let results: Vec<ReportResult> = findings.iter().map(|f| f.to_result(Some(at))).collect();
    let summary = Summary::of(&results);
    (results, summary)
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// RFC 3339 text of a time (for properties such as `pendingSince`).
pub fn rfc3339(t: SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(t) {
        Ok(ts) => ts
            .round(k8s_openapi::jiff::Unit::Second)
            .map_or_else(|_| ts.to_string(), |r| r.to_string()),
        Err(_) => format!("{:?}", t),
    }
}

/// The content of written results, timestamps removed: what decides whether to write again.
pub fn content(results: &[ReportResult]) -> Vec<ReportResult> {
    results
        .iter()
        .cloned()
        .map(|mut r| {
            r.timestamp = None;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(policy: &str, result: ResultKind) -> Finding {
        Finding::new(policy, Category::Lint, result, "m")
    }

    #[test]
    fn findings_are_sorted_by_policy_then_rule() {
        let mut v = vec![
            f("b", ResultKind::Pass),
            f("a", ResultKind::Pass).rule("ingress[1]"),
            f("a", ResultKind::Fail).rule("ingress[0]"),
        ];
        cap(&mut v, 10);
        let order: Vec<_> = v
            .iter()
            .map(|f| (f.policy.as_str(), f.rule.as_deref()))
            .collect();
        assert_eq!(
            order,
            [
                ("a", Some("ingress[0]")),
                ("a", Some("ingress[1]")),
                ("b", None)
            ]
        );
    }

    #[test]
    fn the_cap_keeps_failures_and_says_how_many_were_left_out() {
        let mut v: Vec<Finding> = (0..10)
            .map(|i| f(&format!("p{i}"), ResultKind::Pass))
            .chain([f("z", ResultKind::Fail), f("y", ResultKind::Warn)])
            .collect();
        cap(&mut v, 4);
        assert_eq!(v.len(), 4);
        let policies: Vec<_> = v.iter().map(|f| f.policy.as_str()).collect();
        // z (fail), y (warn), one pass, and the note.
        assert_eq!(policies, ["p0", "palisade/report", "y", "z"]);
        let note = &v[1];
        assert_eq!(note.result, ResultKind::Warn);
        assert_eq!(
            note.properties.get("leftOut").map(String::as_str),
            Some("9")
        );
        assert_eq!(
            note.message,
            "9 more results left out (at most 4 per report): 9 pass"
        );
    }
}
