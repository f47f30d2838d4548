//! The manifest directory: add, change, delete, rejections, and following edits.

use std::path::Path;
use std::time::Duration;

use palisade_crds::ObjectKey;
use palisade_policy::model::{PolicyId, PolicyKind};
use tokio::sync::mpsc;

use super::*;
use crate::hub::Hub;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    // Atomically, as the module asks: a hidden temporary file, then a rename.
    let tmp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

fn pod_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::Pod {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn np_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::Policy(PolicyId {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(ns.into()),
        name: name.into(),
    })
}

fn pod(name: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: prod, labels: {{app: {app}}}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: {ip}}}\n"
    )
}

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
";

const DENY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: prod}
spec: {podSelector: {}}
";

/// The events of a scan, as short strings, sorted.
fn summary(events: &[Event]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Apply(o) => format!("apply {}", o.key()),
            Event::Delete(k) => format!("delete {k}"),
            Event::Reject(r) => format!("reject {}", r.id),
            Event::ClearRejection(id) => format!("clear {id}"),
            Event::Synced => "synced".to_string(),
        })
        .collect();
    out.sort();
    out
}

#[test]
fn first_scan_sends_everything_then_only_differences() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "cluster.yaml", CLUSTER);
    write(dir, "pods/web.yaml", &pod("web", "10.0.0.5", "web"));
    write(dir, "pods/db.yml", &pod("db", "10.0.0.6", "db"));
    write(dir, "policies.yaml", DENY);
    write(dir, "README.md", "not a manifest");
    write(dir, ".hidden.yaml", "garbage: [");

    let mut state = DirState::new(dir);
    let events = state.scan().expect("scan");
    assert_eq!(
        summary(&events),
        [
            "apply Namespace prod",
            "apply NetworkPolicy prod/deny",
            "apply Node n1",
            "apply Pod prod/db",
            "apply Pod prod/web",
        ]
    );
    // Nothing changed: nothing sent (files recently written are re-read, not re-sent).
    assert!(state.scan().expect("scan").is_empty());

    // Changed: one pod relabelled.
    write(dir, "pods/web.yaml", &pod("web", "10.0.0.5", "frontend"));
    let events = state.scan().expect("scan");
    assert_eq!(summary(&events), ["apply Pod prod/web"]);
    match &events[0] {
        Event::Apply(ClusterObject::Pod(p)) => {
            assert_eq!(p.labels.get("app").map(String::as_str), Some("frontend"))
        }
        other => panic!("{other:?}"),
    }

    // Removed: a file, and a document out of a file.
    std::fs::remove_file(dir.join("pods/db.yml")).expect("rm");
    write(
        dir,
        "cluster.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n",
    );
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["delete Node n1", "delete Pod prod/db"]
    );

    // Added: a new file with two documents.
    write(
        dir,
        "more.yaml",
        &format!("{}---\n{}", pod("api", "10.0.0.7", "api"), CLUSTER),
    );
    assert_eq!(
        summary(&state.scan().expect("scan")),
        [
            "apply Node n1",
            "apply Pod prod/api",
            "reject more.yaml document 2"
        ]
    );
    // Namespace prod is now defined twice: the second definition is rejected, the first kept.
    let rejections: Vec<&Rejection> = state.rejections().collect();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert!(rejections[0]
        .error
        .contains("defined more than once (first in cluster.yaml)"));
    assert_eq!(
        rejections[0].origin.as_deref(),
        Some("more.yaml document 2")
    );
}

#[test]
fn rejected_objects_are_listed_and_keep_their_accepted_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "cluster.yaml", CLUSTER);
    write(dir, "policy.yaml", DENY);
    write(dir, "web.yaml", &pod("web", "10.0.0.5", "web"));
    let mut state = DirState::new(dir);
    state.scan().expect("scan");

    // The policy gets a typo: rejected, with the file, document and line; the accepted
    // version stays (no Delete).
    write(
        dir,
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: prod}\nspec: {podSelecter: {}}\n",
    );
    let events = state.scan().expect("scan");
    assert_eq!(summary(&events), ["reject NetworkPolicy prod/deny"]);
    let Event::Reject(r) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(r.id, RejectionId::Object(np_key("prod", "deny")));
    assert_eq!(r.kind, "NetworkPolicy");
    assert_eq!(r.origin.as_deref(), Some("policy.yaml document 1 (line 4)"));
    assert!(
        r.error.contains("unknown field spec.podSelecter"),
        "{}",
        r.error
    );
    assert!(state.objects().any(|o| o.key() == np_key("prod", "deny")));

    // A pod with a bad address, never accepted: rejected, nothing applied.
    write(dir, "bad.yaml", &pod("bad", "10.0.0.300", "x"));
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["reject Pod prod/bad"]
    );
    assert!(!state.objects().any(|o| o.key() == pod_key("prod", "bad")));

    // Garbage and an unsupported kind: rejected by place, not by object.
    write(
        dir,
        "junk.yaml",
        "a: [\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
    );
    let events = state.scan().expect("scan");
    assert_eq!(
        summary(&events),
        [
            "reject junk.yaml document 1 (line 2)",
            "reject junk.yaml document 2 (line 3)"
        ]
    );

    // Fixed: the policy is applied again (same as the accepted version: no Apply needed,
    // but the rejection is cleared); the junk removed clears its rejections.
    write(dir, "policy.yaml", DENY);
    std::fs::remove_file(dir.join("junk.yaml")).expect("rm");
    std::fs::remove_file(dir.join("bad.yaml")).expect("rm");
    assert_eq!(
        summary(&state.scan().expect("scan")),
        [
            "clear NetworkPolicy prod/deny",
            "clear Pod prod/bad",
            "clear junk.yaml document 1 (line 2)",
            "clear junk.yaml document 2 (line 3)"
        ]
    );
    assert_eq!(state.rejections().count(), 0);
}

#[test]
fn finished_pods_are_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "job.yaml", &pod("job", "10.0.0.9", "job"));
    let mut state = DirState::new(dir);
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["apply Pod prod/job"]
    );
    write(
        dir,
        "job.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: job, namespace: prod}\nspec: {nodeName: n1}\nstatus: {phase: Succeeded, podIP: 10.0.0.9}\n",
    );
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["delete Pod prod/job"]
    );
}

#[test]
fn unreadable_file_keeps_its_objects() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "web.yaml", &pod("web", "10.0.0.5", "web"));
    let mut state = DirState::new(dir);
    state.scan().expect("scan");
    std::fs::write(dir.join("web.yaml"), [0xff, 0xfe, 0x00]).expect("write");
    let events = state.scan().expect("scan");
    assert_eq!(summary(&events), ["reject web.yaml"]);
    assert!(state.objects().any(|o| o.key() == pod_key("prod", "web")));
}

#[test]
fn a_missing_folder_is_an_error() {
    let mut state = DirState::new("/nonexistent/palisade-test");
    assert!(state.scan().is_err());
}

async fn next(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("channel open")
}

#[tokio::test]
async fn the_source_follows_edits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    write(&dir, "cluster.yaml", CLUSTER);
    write(&dir, "web.yaml", &pod("web", "10.0.0.5", "web"));
    let metrics = Metrics::new(Hub::new());
    let source = DirSource::new(&dir, Duration::from_millis(20), metrics);
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(source.run(tx));

    let mut first = Vec::new();
    loop {
        let event = next(&mut rx).await;
        if event == Event::Synced {
            break;
        }
        first.push(event);
    }
    assert_eq!(
        summary(&first),
        [
            "apply Namespace prod",
            "apply Node n1",
            "apply Pod prod/web"
        ]
    );

    write(&dir, "policy.yaml", DENY);
    assert_eq!(
        summary(&[next(&mut rx).await]),
        ["apply NetworkPolicy prod/deny"]
    );
    std::fs::remove_file(dir.join("policy.yaml")).expect("rm");
    assert_eq!(
        summary(&[next(&mut rx).await]),
        ["delete NetworkPolicy prod/deny"]
    );

    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("source stops when the channel closes")
        .expect("join")
        .expect("run");
}

#[test]
fn a_duplicate_takes_over_when_the_first_definition_goes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "a.yaml", &pod("web", "10.0.0.5", "first"));
    write(dir, "b.yaml", &pod("web", "10.0.0.5", "second"));
    let mut state = DirState::new(dir);
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["apply Pod prod/web", "reject b.yaml document 1"]
    );
    let app = |state: &DirState| match state.objects().next() {
        Some(ClusterObject::Pod(p)) => p.labels.get("app").cloned(),
        _ => None,
    };
    assert_eq!(app(&state).as_deref(), Some("first"));

    std::fs::remove_file(dir.join("a.yaml")).expect("rm");
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["apply Pod prod/web", "clear b.yaml document 1"]
    );
    assert_eq!(app(&state).as_deref(), Some("second"));
    assert_eq!(state.rejections().count(), 0);

    // An edit elsewhere touches nothing of it.
    write(dir, "c.yaml", CLUSTER);
    assert_eq!(
        summary(&state.scan().expect("scan")),
        ["apply Namespace prod", "apply Node n1"]
    );
}

/// After any sequence of valid edits, what was sent equals a fresh read of the folder.
#[test]
fn incremental_scans_agree_with_a_fresh_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut state = DirState::new(dir);
    let mut seed: u64 = 7;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for round in 0..300 {
        // One to three files edited or removed between two scans.
        for _ in 0..1 + next() % 3 {
            let file = format!("f{}.yaml", next() % 6);
            match next() % 4 {
                0 => {
                    let _ = std::fs::remove_file(dir.join(&file));
                }
                _ => {
                    let docs: Vec<String> = (0..1 + next() % 3)
                        .map(|_| {
                            let name = format!("p{}", next() % 8);
                            pod(&name, "10.0.0.1", &format!("a{}", next() % 3))
                        })
                        .collect();
                    write(dir, &file, &docs.join("---\n"));
                }
            }
        }
        state.scan().expect("scan");
        let mut fresh = DirState::new(dir);
        fresh.scan().expect("fresh scan");
        let sent: Vec<&ClusterObject> = state.objects().collect();
        let read: Vec<&ClusterObject> = fresh.objects().collect();
        assert_eq!(sent, read, "objects differ after round {round}");
        let sent: Vec<&Rejection> = state.rejections().collect();
        let read: Vec<&Rejection> = fresh.rejections().collect();
        assert_eq!(sent, read, "rejections differ after round {round}");
    }
}
