//! The `palisade-operator` binary on a manifest directory: ready once synced (always the
//! leader without an API server), objects counted in /metrics, an edit followed, a rejected
//! object counted, JSON logs, and a prompt, clean exit on SIGTERM; two pods claiming one
//! address warned about, naming the owner and the loser.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// Polls until `check` holds on the answer to `path` (10 s at most).
fn wait_for(addr: SocketAddr, path: &str, what: &str, check: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((code, body)) = get(addr, path) {
            if check(code, &body) {
                return body;
            }
            last = Some((code, body));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: last answer to {path}: {last:?}");
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
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
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {nodeName: n1}
status: {podIP: 10.0.0.5}
";

/// The operator on manifest folder `dir`, health and metrics on `addr`, JSON logs on
/// a piped stderr, and no audit log (its default is a file under /var/lib/palisade).
fn start_operator(dir: &std::path::Path, addr: std::net::SocketAddr) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_palisade-operator"))
        .arg("--source")
        .arg(format!("dir:{}", dir.display()))
        .arg("--listen-health")
        .arg(addr.to_string())
        .arg("--log-format")
        .arg("json")
        .arg("--poll-ms")
        .arg("20")
        .arg("--audit-database")
        .arg("none")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start palisade-operator")
}

#[test]
fn serves_health_and_metrics_follows_edits_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "cluster.yaml", CLUSTER);
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");

    let mut child = start_operator(dir, addr);

    wait_for(addr, "/readyz", "ready", |code, body| {
        code == 200 && body == "ready\n"
    });
    assert_eq!(get(addr, "/healthz"), Some((200, "ok\n".to_string())));
    let metrics = wait_for(addr, "/metrics", "objects counted", |_, body| {
        body.contains("palisade_objects{kind=\"Pod\"} 1")
    });
    for line in [
        "palisade_objects{kind=\"Namespace\"} 1",
        "palisade_objects{kind=\"Node\"} 1",
        "palisade_leader 1",
        "palisade_source_synced 1",
        "palisade_node_desired_version{node=\"n1\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // A policy isolating web: n1's rules change, its version moves on.
    write(
        dir,
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: prod}\nspec: {podSelector: {}}\n",
    );
    wait_for(addr, "/metrics", "the policy applied", |_, body| {
        body.contains("palisade_node_desired_version{node=\"n1\"} 2")
            && body.contains("palisade_objects{kind=\"NetworkPolicy\"} 1")
    });

    // A typo: rejected and counted; the accepted version stays (no new version).
    write(
        dir,
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: prod}\nspec: {podSelecter: {}}\n",
    );
    let metrics = wait_for(addr, "/metrics", "the typo rejected", |_, body| {
        body.contains("palisade_rejected_objects{kind=\"NetworkPolicy\"} 1")
    });
    assert!(metrics.contains("palisade_node_desired_version{node=\"n1\"} 2"));
    assert!(metrics.contains("palisade_objects{kind=\"NetworkPolicy\"} 1"));

    let pid = child.id().to_string();
    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "stopped in {:?}",
        stopped.elapsed()
    );

    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("read logs");
    for line in logs.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    assert!(
        logs.contains("unknown field spec.podSelecter"),
        "the rejection is logged:\n{logs}"
    );
}

/// The reviewer's case through the binary: x/old is Terminating and still lists
/// 10.0.0.12 when y/new (created later) gets the same address. The operator warns, naming
/// the address, the owner and the pod treated as without it; when x/old's manifest goes,
/// the conflict is logged as resolved.
#[test]
fn an_address_claimed_by_two_pods_is_logged_with_owner_and_loser() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(
        dir,
        "cluster.yaml",
        "\
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: new, namespace: y, labels: {pod: new}, creationTimestamp: \"2026-11-26T03:00:10Z\"}
spec: {nodeName: n1, containers: []}
status: {phase: Running, podIP: 10.0.0.12}
",
    );
    write(
        dir,
        "old.yaml",
        "\
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: x, labels: {pod: a}, creationTimestamp: \"2026-11-26T02:00:00Z\", deletionTimestamp: \"2026-11-26T03:00:30Z\"}
spec: {nodeName: n1, containers: []}
status: {phase: Running, podIP: 10.0.0.12}
",
    );
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut child = start_operator(dir, addr);
    // Read the log on a thread, so the test can wait for lines while the operator runs.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut logs = Vec::new();
    let mut wait_line = |what: &str, check: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => {
                    logs.push(line.clone());
                    if check(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("{what}: not logged in\n{}", logs.join("\n"));
    };
    let warning = wait_line("the conflict warning", &|l| {
        l.contains("address claimed by several pods")
    });
    let value: serde_json::Value = serde_json::from_str(&warning).expect("a JSON log line");
    assert_eq!(value["level"], "WARN", "{warning}");
    // The terminating pod yields the address to the running one.
    assert_eq!(value["fields"]["address"], "10.0.0.12", "{warning}");
    assert_eq!(value["fields"]["owner"], "y/new", "{warning}");
    assert_eq!(value["fields"]["losers"], "x/old", "{warning}");

    // The terminating pod's manifest goes (its deletion completes).
    std::fs::remove_file(dir.join("old.yaml")).expect("remove");
    let resolved = wait_line("the conflict resolved", &|l| {
        l.contains("address conflict resolved")
    });
    assert!(resolved.contains("10.0.0.12"), "{resolved}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status:?}");
    reader.join().expect("log reader");
}
