//! Reconcile: nothing before sync, one commit per burst, bounded delay, rejections.

use palisade_crds::ClusterObject;
use palisade_policy::model::{
    LabelSelector, Labels, Namespace, Node, Pod, Policy, PolicyId, PolicyKind, Subject, TIER_ADMIN,
    TIER_NETWORKPOLICY,
};
use tokio::sync::mpsc;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mk_node(name: &str, ip: &str) -> Event {
    Event::Apply(ClusterObject::Node(Node {
        name: name.into(),
        labels: Labels::new(),
        ips: vec![ip.parse().expect("ip")],
    }))
}

fn mk_namespace(name: &str) -> Event {
    Event::Apply(ClusterObject::Namespace(Namespace {
        name: name.into(),
        labels: labels(&[("kubernetes.io/metadata.name", name)]),
    }))
}

fn mk_pod(name: &str, node: &str, ip: &str, app: &str) -> Event {
    Event::Apply(ClusterObject::Pod(Pod {
        namespace: "prod".into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ips: vec![ip.parse().expect("ip")],
        node: Some(node.into()),
        terminating: false,
        created: None,
        host_network: false,
        ports: Vec::new(),
    }))
}

fn mk_deny(name: &str, app: &str, tier: &str) -> Policy {
    Policy {
        id: PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some("prod".into()),
            name: name.into(),
        },
        tier: tier.into(),
        priority: 0,
        subject: Subject::Namespaced {
            namespace: "prod".into(),
            pods: LabelSelector {
                match_labels: labels(&[("app", app)]),
                match_expressions: Vec::new(),
            },
        },
        ingress: Some(Vec::new()),
        egress: None,
        audit: None,
    }
}

struct Fixture {
    hub: Arc<Hub>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Event>,
    task: tokio::task::JoinHandle<()>,
}

fn start() -> Fixture {
    let hub = Hub::new();
    let metrics = Metrics::new(hub.clone());
    let status = Status::new();
    let reconciler = Reconciler::new(
        hub.clone(),
        metrics.clone(),
        status.clone(),
        Debounce::default(),
    );
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(reconciler.run(rx));
    Fixture {
        hub,
        status,
        metrics,
        tx,
        task,
    }
}

impl Fixture {
    async fn send(&self, event: Event) {
        self.tx.send(event).await.expect("reconcile alive");
    }

    fn commits(&self) -> u64 {
        self.status.commits().count
    }

    fn version(&self, node: &str) -> Option<u64> {
        self.hub.desired(node).map(|s| s.version)
    }
}

async fn settle(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn nothing_is_published_before_sync_then_at_once() {
    let f = start();
    f.send(mk_namespace("prod")).await;
    f.send(mk_node("n1", "172.18.0.2")).await;
    f.send(mk_pod("web", "n1", "10.0.0.5", "web")).await;
    settle(500).await;
    assert_eq!(f.commits(), 0);
    assert_eq!(f.version("n1"), None);
    assert!(!f.status.is_synced());

    f.send(Event::Synced).await;
    // No debounce wait for the first commit.
    settle(1).await;
    assert_eq!(f.commits(), 1);
    assert_eq!(f.version("n1"), Some(1));
    assert!(f.status.is_synced());
    assert!(f
        .metrics
        .encode()
        .contains("palisade_objects{kind=\"Pod\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_committed_once_after_it_goes_quiet() {
    let f = start();
    f.send(mk_namespace("prod")).await;
    f.send(mk_node("n1", "172.18.0.2")).await;
    f.send(Event::Synced).await;
    settle(1).await;
    assert_eq!(f.commits(), 1);

    // Ten changes 5 ms apart: 45 ms of burst, each resetting the 20 ms quiet timer.
    for i in 0..10 {
        f.send(mk_pod(
            &format!("p{i}"),
            "n1",
            &format!("10.0.0.{}", 10 + i),
            "web",
        ))
        .await;
        settle(5).await;
    }
    assert_eq!(f.commits(), 1, "nothing committed during the burst");
    settle(20).await;
    assert_eq!(f.commits(), 2, "one commit for the whole burst");
    assert_eq!(f.version("n1"), Some(2));
    settle(500).await;
    assert_eq!(f.commits(), 2, "and nothing more");

    // An event that changes nothing commits nothing new for the node.
    f.send(mk_pod("p0", "n1", "10.0.0.10", "web")).await;
    settle(50).await;
    assert_eq!(f.version("n1"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_long_burst_is_committed_at_least_every_max_delay() {
    let f = start();
    f.send(mk_namespace("prod")).await;
    f.send(mk_node("n1", "172.18.0.2")).await;
    f.send(Event::Synced).await;
    settle(1).await;
    // A change every 10 ms for 300 ms: never quiet for 20 ms.
    for i in 0..30 {
        f.send(mk_pod(
            &format!("p{i}"),
            "n1",
            &format!("10.0.1.{}", 10 + i),
            "web",
        ))
        .await;
        settle(10).await;
    }
    let during = f.commits() - 1;
    assert!(
        (2..=3).contains(&during),
        "{during} commits in 300 ms with max_delay 100 ms"
    );
    settle(100).await;
    assert_eq!(f.commits() - 1, during + 1, "the tail is committed");
}

#[tokio::test(start_paused = true)]
async fn rejections_are_listed_counted_and_cleared() {
    let f = start();
    f.send(mk_namespace("prod")).await;
    f.send(mk_node("n1", "172.18.0.2")).await;
    f.send(mk_pod("web", "n1", "10.0.0.5", "web")).await;
    f.send(Event::Synced).await;
    settle(1).await;

    // A source's rejection.
    let key = palisade_crds::ObjectKey::Pod {
        namespace: "prod".into(),
        name: "bad".into(),
    };
    f.send(Event::Reject(Rejection::object(
        key.clone(),
        Some("pods.yaml document 2 (line 7)".into()),
        "Pod prod/bad: field status.podIP: \"x\" is not an IP address",
    )))
    .await;
    // The index's refusal: a NetworkPolicy outside its tier.
    let misplaced = mk_deny("misplaced", "web", TIER_ADMIN);
    f.send(Event::Apply(ClusterObject::Policy(misplaced.clone())))
        .await;
    settle(50).await;
    let rejected = f.status.rejected();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0].rejection.id, RejectionId::Object(key.clone()));
    assert_eq!(
        rejected[0].rejection.origin.as_deref(),
        Some("pods.yaml document 2 (line 7)")
    );
    assert!(
        rejected[1].rejection.error.contains("spec.tier"),
        "{rejected:?}"
    );
    let text = f.metrics.encode();
    assert!(
        text.contains("palisade_rejected_objects{kind=\"Pod\"} 1"),
        "{text}"
    );
    assert!(text.contains("palisade_rejected_objects{kind=\"NetworkPolicy\"} 1"));
    assert!(text.contains("palisade_object_rejections_total{kind=\"Pod\"} 1"));
    // Nothing of the refused policy reached the index.
    assert_eq!(f.version("n1"), Some(1));

    // Fixed: the policy applies (and isolates web), the pod is deleted.
    let mut fixed = misplaced;
    fixed.tier = TIER_NETWORKPOLICY.into();
    f.send(Event::Apply(ClusterObject::Policy(fixed))).await;
    f.send(Event::Delete(key)).await;
    settle(50).await;
    assert!(f.status.rejected().is_empty());
    assert_eq!(f.version("n1"), Some(2));
    let text = f.metrics.encode();
    assert!(
        text.contains("palisade_rejected_objects{kind=\"Pod\"} 0"),
        "{text}"
    );
    assert!(text.contains("palisade_rejected_objects{kind=\"NetworkPolicy\"} 0"));
    assert!(text.contains("palisade_objects{kind=\"NetworkPolicy\"} 1"));

    // ClearRejection alone (a document that went away).
    f.send(Event::Reject(Rejection {
        id: RejectionId::Document("junk.yaml document 1".into()),
        kind: "unknown".into(),
        origin: Some("junk.yaml document 1".into()),
        error: "not YAML".into(),
    }))
    .await;
    settle(1).await;
    assert_eq!(f.status.rejected().len(), 1);
    f.send(Event::ClearRejection(RejectionId::Document(
        "junk.yaml document 1".into(),
    )))
    .await;
    settle(1).await;
    assert!(f.status.rejected().is_empty());

    drop(f.tx);
    f.task
        .await
        .expect("reconcile ends when the channel closes");
}

/// Two pods claiming one address (x/old Terminating, its address already given to
/// y/new): the state and the audit attribution carry only the owner, the conflict is
/// kept for logging, and it ends when the loser goes.
#[test]
fn an_address_claimed_twice_is_published_for_its_owner_only() {
    let hub = Hub::new();
    let metrics = Metrics::new(hub.clone());
    let ips = crate::audit::PodIps::new();
    let mut r =
        Reconciler::new(hub, metrics, Status::new(), Debounce::default()).with_pod_ips(ips.clone());
    let pod = |ns: &str, name: &str, terminating: bool| {
        Event::Apply(ClusterObject::Pod(Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(&[("app", name)]),
            ips: vec!["10.0.0.12".parse().expect("ip")],
            node: Some("n1".into()),
            terminating,
            created: Some(1000),
            host_network: false,
            ports: Vec::new(),
        }))
    };
    for event in [
        mk_node("n1", "172.18.0.2"),
        mk_namespace("x"),
        mk_namespace("y"),
        // The new pod first: the attribution must not be "the last pod listed wins".
        pod("y", "new", false),
        pod("x", "old", true),
        Event::Synced,
    ] {
        r.apply(event);
    }
    r.commit().expect("commit");
    let shared: std::net::IpAddr = "10.0.0.12".parse().expect("ip");
    let state = r.index().node_state("n1").expect("n1 compiled");
    let local: Vec<String> = state
        .pods
        .iter()
        .filter(|p| p.ips.contains(&shared))
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(local, vec!["y/new"]);
    let owner = ips.owner_now(&shared).expect("attributed");
    assert_eq!((owner.namespace.as_str(), owner.pod.as_str()), ("y", "new"));
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].owner, "y/new");
    assert_eq!(r.conflicts[0].losers, vec!["x/old".to_string()]);

    // The terminating pod goes: no conflict left.
    r.apply(Event::Delete(palisade_crds::ObjectKey::Pod {
        namespace: "x".into(),
        name: "old".into(),
    }));
    r.commit().expect("commit");
    assert!(r.conflicts.is_empty());
}

/// `--audit-default deny`: every published rule set carries it, the hub holds the index's own
/// state (not a copy made per commit), and a commit that changes nothing else publishes
/// nothing. Without the setting the rule sets say nothing (all decisions).
#[test]
fn the_audit_default_is_in_every_published_rule_set() {
    use palisade_policy::model::AuditMode;
    let events = || {
        [
            mk_node("n1", "172.18.0.2"),
            mk_node("n2", "172.18.0.3"),
            mk_namespace("prod"),
            mk_pod("web", "n1", "10.0.0.5", "web"),
            mk_pod("db", "n2", "10.0.0.6", "db"),
            // web is selected: relabelling it changes n1's rules.
            Event::Apply(ClusterObject::Policy(mk_deny(
                "deny-web",
                "web",
                TIER_NETWORKPOLICY,
            ))),
            Event::Synced,
        ]
    };
    let hub = Hub::new();
    let metrics = Metrics::new(hub.clone());
    let mut r = Reconciler::new(hub.clone(), metrics, Status::new(), Debounce::default())
        .with_audit_default(Some(AuditMode::Deny));
    for event in events() {
        r.apply(event);
    }
    assert_eq!(r.commit().expect("commit"), 2);
    for node in ["n1", "n2"] {
        let published = hub.desired(node).expect("published");
        assert_eq!(published.audit_default, Some(AuditMode::Deny), "{node}");
        let kept = r.index().node_state(node).expect("compiled");
        assert!(std::ptr::eq(published.as_ref(), kept), "{node}: copied");
    }
    assert_eq!(r.commit().expect("commit"), 0, "the default is no change");
    r.apply(mk_pod("web", "n1", "10.0.0.5", "web2"));
    r.commit().expect("commit");
    let n1 = hub.desired("n1").expect("n1");
    assert_eq!((n1.version, n1.audit_default), (2, Some(AuditMode::Deny)));

    let plain_hub = Hub::new();
    let metrics = Metrics::new(plain_hub.clone());
    let mut plain = Reconciler::new(
        plain_hub.clone(),
        metrics,
        Status::new(),
        Debounce::default(),
    );
    for event in events() {
        plain.apply(event);
    }
    plain.commit().expect("commit");
    assert_eq!(plain_hub.desired("n1").expect("n1").audit_default, None);
}
