//! Core objects (`v1` Pod, Namespace, Node) → the engine's model, as the operator reads them
//! from the API server or from a manifest directory.
//!
//! - [`pod`]: labels, `spec.nodeName`, `status.podIPs` (else `status.podIP`), `spec.hostNetwork`
//!   (a host-network pod has no addresses of its own: it counts as its node), the container
//!   ports with their names and protocols (containers and restartable init containers, i.e.
//!   sidecars), and the phase: a `Succeeded` or `Failed` pod converts to `None` (it no longer
//!   has traffic; the operator removes it from the index). A pending pod has no addresses yet.
//!   `metadata.deletionTimestamp` marks it terminating (it still runs and keeps its policies
//!   during graceful shutdown) and `metadata.creationTimestamp` gives its age: the engine
//!   needs both to choose one owner when two pods claim one address (`palisade_policy::address`).
//! - [`namespace`]: name and labels, with `kubernetes.io/metadata.name` set to the name as the
//!   API server does (so manifests need not write it).
//! - [`node`]: name, labels and `status.addresses` of type `InternalIP` and `ExternalIP`.
//!
//! Everything the API server would refuse and that changes what a policy matches is an error
//! naming the object and the field: an address that is not an IP, two addresses of one family,
//! a port outside 1..=65535, a protocol other than TCP, UDP or SCTP, an invalid port name.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, Namespace as K8sNamespace, Node as K8sNode, Pod as K8sPod,
};
use palisade_policy::model::{ContainerPort, Family, Labels, Namespace, Node, Pod, Protocol};

use super::{is_port_name, object_name, port_number, protocol, Ctx, Mode};
use crate::CrdError;

/// The label the API server sets on every namespace (immutable, equal to its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Converts a Pod. `Ok(None)` for a pod that has finished (`status.phase` `Succeeded` or
/// `Failed`): it holds no address any more and no policy applies to it.
pub fn pod(pod: &K8sPod) -> Result<Option<Pod>, CrdError> {
    let name = object_name("Pod", &pod.metadata)?;
    let namespace = match pod.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => {
            return Err(CrdError::invalid(
                format!("Pod {name}"),
                "metadata.namespace",
                "required: a Pod is namespaced",
            ))
        }
    };
    let ctx = Ctx::new(format!("Pod {namespace}/{name}"), Mode::Cluster);
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);

    let mut ips: Vec<IpAddr> = Vec::new();
    if let Some(status) = status {
        let listed: Vec<(String, &str)> = match status.pod_ips.as_deref() {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
                .collect(),
            _ => status
                .pod_ip
                .as_deref()
                .filter(|ip| !ip.is_empty())
                .map(|ip| vec![("status.podIP".to_string(), ip)])
                .unwrap_or_default(),
        };
        for (field, text) in listed {
            let ip = parse_ip(&ctx, &field, text)?;
            if ips.iter().any(|other| Family::of(other) == Family::of(&ip)) {
                return Err(ctx.invalid(
                    field,
                    format!("{ip}: a pod has at most one address per family"),
                ));
            }
            ips.push(ip);
        }
    }
    // A host-network pod's addresses are its node's: it is matched as the node.
    if host_network {
        ips.clear();
    }

    let mut ports = Vec::new();
    if let Some(spec) = spec {
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.containers[{i}]"), c));
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
            .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
        for (path, container) in containers.chain(sidecars) {
            container_ports(&ctx, &path, container, &mut ports)?;
        }
    }

    Ok(Some(Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: pod.metadata.labels.clone().unwrap_or_default().into(),
        ips,
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        host_network,
        ports,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second()),
    }))
}

fn container_ports(
    ctx: &Ctx,
    path: &str,
    container: &Container,
    out: &mut Vec<ContainerPort>,
) -> Result<(), CrdError> {
    for (i, p) in container.ports.iter().flatten().enumerate() {
        let at = format!("{path}.ports[{i}]");
        let port = port_number(ctx, &format!("{at}.containerPort"), p.container_port)?;
        let proto = match p.protocol.as_deref() {
            None | Some("") => Protocol::Tcp,
            Some(text) => protocol(ctx, &format!("{at}.protocol"), text)?,
        };
        let name = match p.name.as_deref() {
            None | Some("") => None,
            Some(name) if is_port_name(name) => Some(name.to_string()),
            Some(name) => {
                return Err(ctx.invalid(
                    format!("{at}.name"),
                    format!(
                        "{name:?} is not a port name (at most 15 characters of a-z, 0-9 and \
                         '-', with a letter)"
                    ),
                ))
            }
        };
        let port = ContainerPort {
            name,
            port,
            protocol: proto,
        };
        if !out.contains(&port) {
            out.push(port);
        }
    }
    Ok(())
}

/// Converts a Namespace: its labels, plus `kubernetes.io/metadata.name` as the API server sets.
pub fn namespace(ns: &K8sNamespace) -> Result<Namespace, CrdError> {
    let name = object_name("Namespace", &ns.metadata)?;
    let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default().into();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    Ok(Namespace {
        name: name.to_string(),
        labels,
    })
}

/// Converts a Node: its labels and its `InternalIP` / `ExternalIP` addresses (in the order
/// listed, each once).
pub fn node(node: &K8sNode) -> Result<Node, CrdError> {
    let name = object_name("Node", &node.metadata)?;
    let ctx = Ctx::new(format!("Node {name}"), Mode::Cluster);
    let mut ips = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_deref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            continue;
        }
        let ip = parse_ip(&ctx, &format!("status.addresses[{i}].address"), &a.address)?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(Node {
        name: name.to_string(),
        labels: node.metadata.labels.clone().unwrap_or_default().into(),
        ips,
    })
}

fn parse_ip(ctx: &Ctx, field: &str, text: &str) -> Result<IpAddr, CrdError> {
    text.trim()
        .parse::<IpAddr>()
        .map_err(|_| ctx.invalid(field, format!("{text:?} is not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s_pod(yaml: &str) -> K8sPod {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn converted(yaml: &str) -> Pod {
        match pod(&k8s_pod(yaml)) {
            Ok(Some(p)) => p,
            other => panic!("expected a pod, got {other:?}"),
        }
    }

    #[track_caller]
    fn pod_error(yaml: &str, field: &str) -> CrdError {
        match pod(&k8s_pod(yaml)) {
            Err(e) => {
                assert_eq!(e.field(), Some(field), "{e}");
                e
            }
            other => panic!("expected an error at {field}, got {other:?}"),
        }
    }

    const RUNNING: &str = r#"
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {containerPort: 8080, name: http}
    - {containerPort: 53, name: dns, protocol: UDP}
    - {containerPort: 9000}
  initContainers:
  - name: sidecar
    restartPolicy: Always
    ports: [{containerPort: 15001, name: proxy}]
  - name: setup
    ports: [{containerPort: 7000, name: setup}]
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}, {ip: "fd00::5"}]
"#;

    #[test]
    fn running_pod_dual_stack_with_named_ports() {
        let p = converted(RUNNING);
        assert_eq!(p.namespace, "prod");
        assert_eq!(p.name, "web");
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(p.node.as_deref(), Some("n1"));
        assert!(!p.host_network);
        let v4: IpAddr = "10.0.0.5".parse().expect("ip");
        let v6: IpAddr = "fd00::5".parse().expect("ip");
        assert_eq!(p.ips, vec![v4, v6]);
        assert_eq!(p.ip_of(Family::IPv6), Some(v6));
        assert_eq!(p.named_port("http", Protocol::Tcp), Some(8080));
        assert_eq!(p.named_port("dns", Protocol::Udp), Some(53));
        assert_eq!(p.named_port("dns", Protocol::Tcp), None);
        // Sidecars (restartable init containers) serve traffic; plain init containers do not.
        assert_eq!(p.named_port("proxy", Protocol::Tcp), Some(15001));
        assert_eq!(p.named_port("setup", Protocol::Tcp), None);
        assert!(p.ports.contains(&ContainerPort {
            name: None,
            port: 9000,
            protocol: Protocol::Tcp
        }));
    }

    #[test]
    fn pod_ip_alone_is_used_when_pod_ips_is_absent() {
        let p = converted(
            "metadata: {name: a, namespace: x}\nspec: {containers: []}\nstatus: {podIP: 10.1.2.3}",
        );
        assert_eq!(p.ips, vec!["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        assert_eq!(p.node, None);
    }

    #[test]
    fn pending_pod_has_no_address() {
        let p = converted(
            "metadata: {name: a, namespace: x}\nspec: {nodeName: n2, containers: []}\nstatus: {phase: Pending}",
        );
        assert!(p.ips.is_empty());
        assert_eq!(p.node.as_deref(), Some("n2"));
        // No status at all either.
        let p = converted("metadata: {name: a, namespace: x}\nspec: {containers: []}");
        assert!(p.ips.is_empty());
    }

    #[test]
    fn host_network_pod_has_no_address_of_its_own() {
        let p = converted(
            "metadata: {name: a, namespace: x}\nspec: {hostNetwork: true, nodeName: n1, containers: [{name: c, ports: [{containerPort: 80, name: web}]}]}\nstatus: {podIP: 192.168.0.10, podIPs: [{ip: 192.168.0.10}]}",
        );
        assert!(p.host_network);
        assert!(p.ips.is_empty());
        // Named ports of host-network pods never resolve (the engine's rule).
        assert_eq!(p.named_port("web", Protocol::Tcp), None);
    }

    #[test]
    fn deletion_and_creation_timestamps_are_kept() {
        let p = converted(
            "metadata: {name: a, namespace: x, creationTimestamp: \"2026-11-26T03:00:07Z\", deletionTimestamp: \"2026-11-26T03:05:00Z\"}\nspec: {containers: []}\nstatus: {phase: Running, podIP: 10.0.0.1}",
        );
        // A terminating pod still runs (graceful shutdown): kept, with its address.
        assert!(p.terminating);
        assert_eq!(p.created, Some(1_795_662_007));
        assert_eq!(p.ips, vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]);
        let p = converted("metadata: {name: a, namespace: x}\nspec: {containers: []}");
        assert!(!p.terminating);
        assert_eq!(p.created, None);
    }

    #[test]
    fn finished_pods_are_none() {
        for phase in ["Succeeded", "Failed"] {
            let yaml = format!(
                "metadata: {{name: a, namespace: x}}\nspec: {{containers: []}}\nstatus: {{phase: {phase}, podIP: 10.0.0.1}}"
            );
            assert_eq!(pod(&k8s_pod(&yaml)), Ok(None), "{phase}");
        }
    }

    #[test]
    fn pod_errors_name_the_field() {
        pod_error(
            "metadata: {name: a, namespace: x}\nspec: {containers: []}\nstatus: {podIPs: [{ip: nope}]}",
            "status.podIPs[0].ip",
        );
        pod_error(
            "metadata: {name: a, namespace: x}\nspec: {containers: []}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]}",
            "status.podIPs[1].ip",
        );
        pod_error(
            "metadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}",
            "spec.containers[0].ports[0].containerPort",
        );
        pod_error(
            "metadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}",
            "spec.containers[0].ports[0].protocol",
        );
        pod_error(
            "metadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: Not_A_Name}]}]}",
            "spec.containers[0].ports[0].name",
        );
        pod_error(
            "metadata: {name: a}\nspec: {containers: []}",
            "metadata.namespace",
        );
        let e = pod_error(
            "metadata: {namespace: x}\nspec: {containers: []}",
            "metadata.name",
        );
        assert_eq!(e.object(), Some("Pod (unnamed)"));
    }

    #[test]
    fn namespace_gets_its_name_label() {
        let ns: K8sNamespace =
            serde_yaml::from_str("metadata: {name: prod, labels: {team: a}}").expect("yaml");
        let ns = namespace(&ns).expect("namespace");
        assert_eq!(ns.name, "prod");
        assert_eq!(ns.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(
            ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("prod")
        );
    }

    #[test]
    fn node_keeps_internal_and_external_addresses() {
        let n: K8sNode = serde_yaml::from_str(
            r#"
metadata: {name: n1, labels: {zone: a}}
status:
  addresses:
  - {type: Hostname, address: n1}
  - {type: InternalIP, address: 172.18.0.2}
  - {type: InternalIP, address: "fd00:18::2"}
  - {type: ExternalIP, address: 203.0.113.7}
  - {type: InternalDNS, address: n1.local}
  - {type: ExternalIP, address: 203.0.113.7}
"#,
        )
        .expect("yaml");
        let n = node(&n).expect("node");
        assert_eq!(n.name, "n1");
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("a"));
        let ips: Vec<IpAddr> = ["172.18.0.2", "fd00:18::2", "203.0.113.7"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        assert_eq!(n.ips, ips);

        let bad: K8sNode = serde_yaml::from_str(
            "metadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: x}]}",
        )
        .expect("yaml");
        let e = node(&bad).expect_err("bad address");
        assert_eq!(e.field(), Some("status.addresses[0].address"));
        assert_eq!(e.object(), Some("Node n1"));
    }
}
