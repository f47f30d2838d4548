//! Standard `networking.k8s.io/v1` NetworkPolicy → [`Policy`], with the API server's
//! semantics and validation.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use palisade_policy::model::{
    Action, LabelSelector, NamespaceMatch, Peer, Policy, PolicyId, PolicyKind, PortMatch, Protocol,
    Rule, Subject, TIER_NETWORKPOLICY,
};

use super::{cidr, is_port_name, object_name, port_number, protocol, selector, Ctx, Mode};
use crate::CrdError;

/// Converts a standard NetworkPolicy.
///
/// - Tier `networkpolicy`, priority 0, subject `Namespaced { metadata.namespace,
///   spec.podSelector }` (absent selector: every pod). `metadata.namespace` is required.
/// - Directions follow `spec.policyTypes`. When it is absent or empty, the API server's
///   defaulting applies (`SetDefaults_NetworkPolicy`): Ingress always, and Egress only when
///   `len(spec.egress) > 0`, so `egress: []` without policyTypes does not isolate egress.
///   A direction in policyTypes is `Some(rules)` (no rules: deny all); a direction not in it
///   is `None`, even if rules are written (they are still validated).
/// - Rules accept. `from`/`to` absent or empty: any peer. `ports` absent or empty: any port.
pub fn network_policy(np: &NetworkPolicy) -> Result<Policy, CrdError> {
    convert(np, Mode::Cluster)
}

pub(crate) fn convert(np: &NetworkPolicy, mode: Mode) -> Result<Policy, CrdError> {
    let name = object_name("NetworkPolicy", &np.metadata)?;
    let namespace = match np.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => {
            return Err(CrdError::invalid(
                format!("NetworkPolicy {name}"),
                "metadata.namespace",
                "required: a NetworkPolicy is namespaced",
            ))
        }
    };
    let id = PolicyId {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
    };
    let ctx = Ctx::new(id.to_string(), mode);
    let empty = NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&empty);

    let pods = match &spec.pod_selector {
        Some(sel) => selector(&ctx, "spec.podSelector", sel)?,
        None => LabelSelector::everything(),
    };

    let (ingress_on, egress_on) = policy_types(&ctx, spec)?;

    // Rules are validated whether or not their direction is in effect, as the API server does.
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ingress.push(Rule {
            name: None,
            action: Action::Accept,
            peers: peers(&ctx, &format!("{at}.from"), rule.from.as_deref(), namespace)?,
            ports: ports(&ctx, &format!("{at}.ports"), rule.ports.as_deref())?,
        });
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress.push(Rule {
            name: None,
            action: Action::Accept,
            peers: peers(&ctx, &format!("{at}.to"), rule.to.as_deref(), namespace)?,
            ports: ports(&ctx, &format!("{at}.ports"), rule.ports.as_deref())?,
        });
    }

    Ok(Policy {
        id,
        tier: TIER_NETWORKPOLICY.to_string(),
        priority: 0,
        subject: Subject::Namespaced {
            namespace: namespace.to_string(),
            pods,
        },
        ingress: ingress_on.then_some(ingress),
        egress: egress_on.then_some(egress),
        audit: None,
    })
}

/// Which directions the policy isolates: `(ingress, egress)`.
fn policy_types(ctx: &Ctx, spec: &NetworkPolicySpec) -> Result<(bool, bool), CrdError> {
    let types = spec.policy_types.as_deref().unwrap_or_default();
    if types.is_empty() {
        // Upstream defaulting: `if len(PolicyTypes) == 0 { [Ingress] + Egress if len(Egress) != 0 }`.
        let egress = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
        return Ok((true, egress));
    }
    if types.len() > 2 {
        return Err(ctx.invalid(
            "spec.policyTypes",
            "may not list more than two policy types",
        ));
    }
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                return Err(ctx.invalid(
                    format!("spec.policyTypes[{i}]"),
                    format!("unsupported policy type {other:?} (must be Ingress or Egress)"),
                ))
            }
        }
    }
    Ok((ingress, egress))
}

/// `from` / `to`: absent or empty means any peer.
fn peers(
    ctx: &Ctx,
    path: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    namespace: &str,
) -> Result<Option<Vec<Peer>>, CrdError> {
    let peers = match peers {
        Some(peers) if !peers.is_empty() => peers,
        _ => return Ok(None),
    };
    peers
        .iter()
        .enumerate()
        .map(|(j, p)| peer(ctx, &format!("{path}[{j}]"), p, namespace))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn peer(
    ctx: &Ctx,
    path: &str,
    peer: &NetworkPolicyPeer,
    namespace: &str,
) -> Result<Peer, CrdError> {
    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
        (None, None, None) => Err(ctx.invalid(
            path,
            "must specify a peer: podSelector, namespaceSelector or ipBlock",
        )),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            Err(ctx.invalid(path, "may not specify both ipBlock and another peer"))
        }
        (Some(pods), None, None) => Ok(Peer::Pods {
            namespaces: NamespaceMatch::Named(namespace.to_string()),
            pods: selector(ctx, &format!("{path}.podSelector"), pods)?,
        }),
        (None, Some(namespaces), None) => Ok(Peer::Pods {
            namespaces: NamespaceMatch::Selector(selector(
                ctx,
                &format!("{path}.namespaceSelector"),
                namespaces,
            )?),
            pods: LabelSelector::everything(),
        }),
        (Some(pods), Some(namespaces), None) => Ok(Peer::Pods {
            namespaces: NamespaceMatch::Selector(selector(
                ctx,
                &format!("{path}.namespaceSelector"),
                namespaces,
            )?),
            pods: selector(ctx, &format!("{path}.podSelector"), pods)?,
        }),
        (None, None, Some(block)) => ip_block(ctx, &format!("{path}.ipBlock"), block),
    }
}

/// `ipBlock`: `except` entries must be strict subsets of `cidr` (same family, inside it, with a
/// longer prefix), as the API server checks.
fn ip_block(ctx: &Ctx, path: &str, block: &IPBlock) -> Result<Peer, CrdError> {
    if block.cidr.is_empty() {
        return Err(ctx.invalid(format!("{path}.cidr"), "required"));
    }
    let net = cidr(ctx, &format!("{path}.cidr"), &block.cidr)?;
    let mut except = Vec::new();
    for (k, text) in block.except.iter().flatten().enumerate() {
        let at = format!("{path}.except[{k}]");
        let ex = cidr(ctx, &at, text)?;
        let same_family = matches!(
            (net, ex),
            (ipnet::IpNet::V4(_), ipnet::IpNet::V4(_)) | (ipnet::IpNet::V6(_), ipnet::IpNet::V6(_))
        );
        if !same_family || !net.contains(&ex.network()) || ex.prefix_len() <= net.prefix_len() {
            return Err(ctx.invalid(
                at,
                format!("{text:?} must be a strict subset of cidr {:?}", block.cidr),
            ));
        }
        except.push(ex);
    }
    Ok(Peer::IpBlock { cidr: net, except })
}

/// `ports`: absent or empty means any port.
fn ports(
    ctx: &Ctx,
    path: &str,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Option<Vec<PortMatch>>, CrdError> {
    let ports = match ports {
        Some(ports) if !ports.is_empty() => ports,
        _ => return Ok(None),
    };
    ports
        .iter()
        .enumerate()
        .map(|(k, p)| port(ctx, &format!("{path}[{k}]"), p))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn port(ctx: &Ctx, path: &str, port: &NetworkPolicyPort) -> Result<PortMatch, CrdError> {
    let protocol = match &port.protocol {
        Some(p) => protocol(ctx, &format!("{path}.protocol"), p)?,
        None => Protocol::Tcp,
    };
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::AllPorts { protocol }),
        (None, Some(_)) => Err(ctx.invalid(
            format!("{path}.endPort"),
            "may not be specified when port is not specified",
        )),
        (Some(IntOrString::Int(p)), end) => {
            let start = port_number(ctx, &format!("{path}.port"), *p)?;
            let end = match end {
                None => start,
                Some(e) => {
                    let end = port_number(ctx, &format!("{path}.endPort"), e)?;
                    if end < start {
                        return Err(ctx.invalid(
                            format!("{path}.endPort"),
                            format!("{e} must be greater than or equal to port {p}"),
                        ));
                    }
                    end
                }
            };
            Ok(PortMatch::Range {
                protocol,
                start,
                end,
            })
        }
        (Some(IntOrString::String(_)), Some(_)) => Err(ctx.invalid(
            format!("{path}.endPort"),
            "may not be specified when port is a named port",
        )),
        (Some(IntOrString::String(name)), None) => {
            if !is_port_name(name) {
                return Err(ctx.invalid(
                    format!("{path}.port"),
                    format!(
                        "{name:?} is not a port name (1-15 lower-case letters, digits and '-', \
                         with at least one letter) nor a number"
                    ),
                ));
            }
            Ok(PortMatch::Named {
                protocol: Some(protocol),
                name: name.clone(),
            })
        }
    }
}
