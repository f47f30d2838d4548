//! `palisade explain`: one connection of a scenario, with the path of the decision.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use palisade_crds::scenario::load_file;
use palisade_policy::engine::{Decision, Engine, SideVerdict, TierOutcome, TierVisit, Verdict};
use palisade_policy::model::{Direction, Family, PolicyId, Protocol, TIER_NETWORKPOLICY};
use palisade_policy::scenario::Scenario;

use crate::Output;

#[derive(clap::Args)]
pub struct Args {
    /// A scenario file: its namespaces, nodes, pods and policies are the cluster.
    file: PathBuf,
    /// Source endpoint: NS/POD, node:NAME or ext:NAME.
    #[arg(long)]
    from: String,
    /// Destination endpoint: NS/POD, node:NAME or ext:NAME.
    #[arg(long)]
    to: String,
    /// PORT/PROTOCOL (80/TCP, 53/UDP, 9000/SCTP), a port name of the scenario, or ICMP.
    #[arg(long)]
    port: String,
    #[arg(long, value_enum, default_value = "ipv4")]
    family: FamilyArg,
    #[arg(long, short, value_enum, default_value = "plain")]
    output: Output,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FamilyArg {
    Ipv4,
    Ipv6,
}

/// Exit 0 when allowed, 1 when denied, 2 on bad input.
pub fn run(args: &Args) -> ExitCode {
    match explain(args) {
        Ok((verdict, text)) => {
            print!("{text}");
            if verdict.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn explain(args: &Args) -> Result<(Verdict, String)> {
    let loaded = load_file(&args.file)?;
    let scenario = &loaded.scenario;
    let family = match args.family {
        FamilyArg::Ipv4 => Family::IPv4,
        FamilyArg::Ipv6 => Family::IPv6,
    };
    let (port, protocol) = parse_port(scenario, &args.port)?;
    let endpoint = |name: &str| {
        let i = scenario
            .endpoints
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| {
                anyhow!(
                    "no endpoint {name} in {} (use NS/POD, node:NAME or ext:NAME)",
                    scenario.name
                )
            })?;
        scenario
            .engine_endpoint(i, family)
            .ok_or_else(|| anyhow!("{name} has no {family:?} address"))
    };
    let conn = palisade_policy::engine::Connection {
        src: endpoint(&args.from)?,
        dst: endpoint(&args.to)?,
        family,
        protocol,
        port,
    };
    let verdict = loaded.engine.explain(&conn);
    let text = match args.output {
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&verdict).context("encoding the verdict")?
        ),
        Output::Plain => plain(args, &args.port, &verdict, &loaded.engine),
    };
    Ok((verdict, text))
}

fn parse_port(scenario: &Scenario, text: &str) -> Result<(u16, Protocol)> {
    if text.eq_ignore_ascii_case("icmp") {
        return Ok((0, Protocol::Icmp));
    }
    if let Some((port, proto)) = text.split_once('/') {
        let protocol = match proto.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => bail!("unknown protocol {other:?} (TCP, UDP, SCTP or ICMP)"),
        };
        let port: u16 = port
            .parse()
            .with_context(|| format!("port {port:?} is not a number"))?;
        if port == 0 {
            bail!("port must be 1..=65535");
        }
        return Ok((port, protocol));
    }
    scenario
        .ports
        .iter()
        .find(|p| p.name.as_deref() == Some(text))
        .map(|p| (p.port, p.protocol))
        .ok_or_else(|| {
            anyhow!("--port {text:?}: expected PORT/PROTOCOL, ICMP or a port name of the scenario")
        })
}

fn plain(args: &Args, port: &str, verdict: &Verdict, engine: &Engine) -> String {
    let word = |allowed: bool| if allowed { "ALLOWED" } else { "DENIED" };
    let family = match args.family {
        FamilyArg::Ipv4 => "IPv4",
        FamilyArg::Ipv6 => "IPv6",
    };
    let mut out = format!(
        "{} -> {} {port} ({family}): {}\n",
        args.from,
        args.to,
        word(verdict.allowed)
    );
    for (direction, who, side) in [
        (Direction::Egress, &args.from, &verdict.egress),
        (Direction::Ingress, &args.to, &verdict.ingress),
    ] {
        out.push_str(&format!(
            "  {} of {who}: {} ({})\n",
            direction.as_str(),
            word(side.allowed),
            decision(side)
        ));
        for visit in &side.path {
            let policies: Vec<String> = visit.policies.iter().map(ToString::to_string).collect();
            let outcome = match &visit.outcome {
                // The deciding visit is the path's last: the side's decision names the rule.
                TierOutcome::Decided => match &side.decision {
                    Decision::Rule {
                        policy,
                        rule_index,
                        rule_name,
                        action,
                        ..
                    } => format!(
                        "{action:?} by {policy} rule {}",
                        rule_label(*rule_index, rule_name)
                    ),
                    _ => "decided".to_string(),
                },
                TierOutcome::Passed {
                    policy,
                    rule_index,
                    rule_name,
                } => format!(
                    "passed by {policy} rule {}",
                    rule_label(*rule_index, rule_name)
                ),
                TierOutcome::NoMatch => "no rule matched, on to the next tier".to_string(),
                TierOutcome::DefaultDeny => "no rule matched, denied by the tier".to_string(),
            };
            out.push_str(&format!(
                "    tier {}{}: {outcome}; policies: {}\n",
                visit.tier,
                tier_label(engine, &visit.tier),
                policies.join(", ")
            ));
            for note in notes(engine, direction, visit) {
                out.push_str(&format!("      note: {note}\n"));
            }
        }
    }
    out
}

/// ` (priority N, default Deny)`, or what a missing tier is enforced as.
fn tier_label(engine: &Engine, name: &str) -> String {
    match engine.tiers().iter().find(|t| t.name == name) {
        Some(t) if t.missing => {
            " (no such Tier: fail-closed at priority 0, Deny rules only)".into()
        }
        Some(t) if t.is_networkpolicy() => format!(" (priority {})", t.priority),
        Some(t) => format!(" (priority {}, default {:?})", t.priority, t.default_action),
        None => String::new(),
    }
}

/// What a reader of one tier visit should also know: the engine's diagnostics about its
/// policies in this direction (fail-closed peers), a tier priority shared with another tier,
/// and policies of equal priority (ordered by kind, then name).
fn notes(engine: &Engine, direction: Direction, visit: &TierVisit) -> Vec<String> {
    let mut notes = Vec::new();
    let rules_field = format!("spec.{}", direction.as_str());
    for d in engine.diagnostics() {
        if visit.policies.contains(&d.policy) && d.field.starts_with(&rules_field) {
            notes.push(format!("{} {}: {}", d.policy, d.field, d.message));
        }
    }
    if let Some(tier) = engine.tiers().iter().find(|t| t.name == visit.tier) {
        let shared: Vec<&str> = engine
            .tiers()
            .iter()
            .filter(|t| t.priority == tier.priority && t.name != tier.name)
            .map(|t| t.name.as_str())
            .collect();
        if !shared.is_empty() {
            notes.push(format!(
                "priority {} is shared with tier {}: tiers of equal priority are ordered by name",
                tier.priority,
                shared.join(", ")
            ));
        }
    }
    let priority = |id: &PolicyId| {
        engine
            .cluster()
            .policies
            .iter()
            .find(|p| &p.id == id)
            .map(|p| p.priority)
    };
    if visit.tier != TIER_NETWORKPOLICY {
        let mut by_priority: BTreeMap<i32, Vec<&PolicyId>> = BTreeMap::new();
        for id in &visit.policies {
            if let Some(p) = priority(id) {
                by_priority.entry(p).or_default().push(id);
            }
        }
        for (p, ids) in by_priority.into_iter().filter(|(_, ids)| ids.len() > 1) {
            let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
            notes.push(format!(
                "equal priority {p}: {} (ordered by kind: ClusterNetworkPolicy, then \
                 (Baseline)AdminNetworkPolicy, then TieredNetworkPolicy; then by name)",
                names.join(", ")
            ));
        }
    }
    notes
}

fn rule_label(index: usize, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("{index} ({n})"),
        None => index.to_string(),
    }
}

fn decision(side: &SideVerdict) -> String {
    match &side.decision {
        Decision::NotAPod => "not a pod: judged on the pod side only".into(),
        Decision::SameNode => "a pod and its own node: always allowed".into(),
        Decision::SamePod => "a pod's traffic to itself: always allowed".into(),
        Decision::NotSelected => "no policy selects it for this direction".into(),
        Decision::Rule {
            tier,
            policy,
            rule_index,
            rule_name,
            action,
        } => format!(
            "{action:?} by rule {} of {policy} in tier {tier}",
            rule_label(*rule_index, rule_name)
        ),
        Decision::NoRuleMatched { tier, policies } => format!(
            "isolated by {} in tier {tier}, and no rule of them matched",
            policies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Decision::TierDefault { tier, policies } => format!(
            "tier {tier} denies by default: it applies ({}) and no rule matched",
            policies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Decision::NoTierDecided => "every tier passed: allowed by default".into(),
    }
}
