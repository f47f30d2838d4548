"""The Palisade chart through the real Helm engine (the `helm-python-sdk` package embeds
Helm's Go SDK): lint, render for several value sets, check every object, check the RBAC
against operator/src/rbac.rs (through files/operator-rbac.json, which a Rust test keeps equal
to the table), check the schema rejects bad values, check the CRD copies.

Run: python3 -m pytest -q charts/tests   (`make test` does)
"""

from __future__ import annotations

import copy
import os
import subprocess
import json
import re
from collections import Counter
from pathlib import Path

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "palisade"
NAMESPACE = "palisade-system"
RELEASE = "palisade"
TABLE = json.loads((CHART / "files" / "operator-rbac.json").read_text())

# The report APIs' CRDs are optional in the chart (files/optional-crds, behind a value);
# Palisade's own are always installed (crds/).
OPTIONAL_CRD_GROUPS = {"wgpolicyk8s.io", "openreports.io"}


@pytest.fixture(scope="module")
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(chart: helm.Chart, values: dict, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Validates `values` against the schema (as `helm install` does), renders, and parses
    every document; returns the objects (hooks included)."""
    chart.validate_schema(values)
    out = chart.render(values, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: not an object"
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: no apiVersion/kind"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"
            objects.append(doc)
    return objects


def notes(chart: helm.Chart, values: dict) -> str:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def kinds(objects: list[dict]) -> Counter:
    return Counter(o["kind"] for o in objects)


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def args(container: dict) -> dict[str, list[str]]:
    """`--flag=value` arguments as {flag: [values]} (a bare flag has value "")."""
    out: dict[str, list[str]] = {}
    for a in container.get("args", []):
        if a.startswith("--"):
            flag, _, value = a.partition("=")
            out.setdefault(flag, []).append(value)
    return out


BASE_KINDS = Counter(
    {
        "Deployment": 1,
        "DaemonSet": 1,
        "Service": 1,
        # operator + enforcer, and the uninstall hook's
        "ServiceAccount": 3,
        # operator, uninstall hook, audit reader
        "ClusterRole": 3,
        "ClusterRoleBinding": 2,
        "Role": 2,
        "RoleBinding": 2,
        # the uninstall hooks: pre-delete (nodes) and post-delete (the operator's leftovers)
        "Job": 2,
    }
)

POSTGRES = {"audit": {"storage": "postgres", "postgres": {"existingSecret": "palisade-db"}}}

VALUE_SETS = {
    "defaults": ({}, BASE_KINDS + Counter({"PersistentVolumeClaim": 1})),
    "postgres": (POSTGRES, BASE_KINDS),
    "ha": ({**POSTGRES, "operator": {"replicas": 3}}, BASE_KINDS + Counter({"PodDisruptionBudget": 1})),
    "ha-without-audit": (
        {"audit": {"enabled": False}, "operator": {"replicas": 2}},
        BASE_KINDS - Counter({"ClusterRole": 1}) + Counter({"PodDisruptionBudget": 1}),
    ),
    "audit-and-reports-off": ({"audit": {"enabled": False}, "reports": {"api": "none"}}, BASE_KINDS - Counter({"ClusterRole": 1})),
    "crd-toggles-off": (
        {"reports": {"api": "both", "installCRDs": False}, "uninstall": {"cleanup": False}},
        BASE_KINDS
        + Counter({"PersistentVolumeClaim": 1})
        - Counter(
            {
                "Job": 2,
                "ServiceAccount": 1,
                "ClusterRole": 1,
                "ClusterRoleBinding": 1,
                "Role": 1,
                "RoleBinding": 1,
            }
        ),
    ),
    "cert-manager": (
        {"tls": {"certManager": {"enabled": True}}},
        BASE_KINDS + Counter({"PersistentVolumeClaim": 1, "Issuer": 2, "Certificate": 2}),
    ),
    "cert-manager-issuer": (
        {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "corp", "kind": "ClusterIssuer"}}}},
        BASE_KINDS + Counter({"PersistentVolumeClaim": 1, "Certificate": 1}),
    ),
    "service-monitor": (
        {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
        BASE_KINDS + Counter({"PersistentVolumeClaim": 1, "ServiceMonitor": 1}),
    ),
    "existing-claim": ({"audit": {"sqlite": {"existingClaim": "mine"}}}, BASE_KINDS),
}


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_renders_the_expected_objects(chart, case):
    values, expected = VALUE_SETS[case]
    objects = render(chart, values)
    assert kinds(objects) == expected + Counter({"CustomResourceDefinition": len(report_crds(values))})
    for o in objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']} {o['metadata']['name']}"


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_lints_clean(case):
    values, _ = VALUE_SETS[case]
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert not bad, bad


def operator_rules(objects: list[dict], component: str = "operator") -> dict[str, set]:
    """The rules granted to a component's ServiceAccount, as {(scope, group, resource, verb)}."""
    sa = f"{RELEASE}-{component}"
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    granted = set()
    for b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE for s in b["subjects"]):
            continue
        role = roles[(b["roleRef"]["kind"], b["roleRef"]["name"])]
        scope = "OwnNamespace" if role["kind"] == "Role" else "Cluster"
        for rule in role.get("rules") or []:
            assert "resourceNames" not in rule or rule["resourceNames"]
            assert "nonResourceURLs" not in rule, "no non-resource URLs are needed"
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        assert "*" not in (g, r, v), f"wildcard in {role['metadata']['name']}"
                        granted.add((scope, g, r, v))
    return granted


def table_rules(rows: list[dict], values: dict) -> set:
    features = {
        None: True,
        "generatedTls": not values.get("tls", {}).get("certManager", {}).get("enabled", False),
        "audit": values.get("audit", {}).get("enabled", True),
        "auditApi": values.get("audit", {}).get("enabled", True)
        and values.get("audit", {}).get("api", {}).get("enabled", True),
        # the chart runs the operator with --no-report-crds (it installs the CRDs itself)
        "operatorReportCrds": False,
        "wgpolicyk8s": values.get("reports", {}).get("api", "wgpolicyk8s") in ("wgpolicyk8s", "both"),
        "openreports": values.get("reports", {}).get("api", "wgpolicyk8s") in ("openreports", "both"),
        "reports": values.get("reports", {}).get("api", "wgpolicyk8s") != "none",
    }
    out = set()
    for row in rows:
        assert row["feature"] in features, f"feature {row['feature']} unknown to this test"
        if features[row["feature"]]:
            for v in row["verbs"]:
                out.add((row["scope"], row["apiGroup"], row["resource"], v))
    return out


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_operator_rbac_is_exactly_the_table(chart, case):
    values, _ = VALUE_SETS[case]
    objects = render(chart, values)
    assert operator_rules(objects) == table_rules(TABLE["operator"], values)
    if values.get("uninstall", {}).get("cleanup", True):
        assert operator_rules(objects, "uninstall") == table_rules(TABLE["uninstall"], values)


def test_the_enforcer_has_no_role(chart):
    """The enforcer makes no Kubernetes API call: no Kubernetes client in its dependency
    tree (its crate and the workspace crates it uses), so it needs no Role."""
    import tomllib

    seen, todo = set(), ["enforcer"]
    while todo:
        crate = todo.pop()
        if crate in seen:
            continue
        seen.add(crate)
        manifest = tomllib.loads((REPO / crate / "Cargo.toml").read_text())
        deps = manifest.get("dependencies", {})
        for name, spec in deps.items():
            assert not name.startswith(("kube", "k8s-openapi")), f"{crate} depends on {name}"
            path = spec.get("path") if isinstance(spec, dict) else None
            if isinstance(spec, dict) and spec.get("workspace"):
                ws = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["dependencies"]
                path = ws.get(name, {}).get("path") if isinstance(ws.get(name), dict) else None
            if path:
                todo.append(path.strip("./"))
    assert "enforcer" in seen and len(seen) > 1, seen
    objects = render(chart, {})
    assert operator_rules(objects, "enforcer") == set()
    sa = one(objects, "ServiceAccount", f"{RELEASE}-enforcer")
    assert sa["automountServiceAccountToken"] is False


def test_operator_deployment(chart):
    objects = render(chart, {})
    dep = one(objects, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate", "SQLite: never two pods on the volume"
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["image"] == "palisade-operator:0.1.0"
    a = args(c)
    assert a["--source"] == ["kubernetes"]
    assert a["--lease-namespace"] == [NAMESPACE]
    assert a["--enforcer-service-account"] == [f"system:serviceaccount:{NAMESPACE}:{RELEASE}-enforcer"]
    assert a["--token-audience"] == ["palisade-operator"]
    assert a["--tls-secret"] == [f"{RELEASE}-stream-tls"]
    assert f"{RELEASE}-operator.{NAMESPACE}.svc" in a["--tls-name"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 9090, "stream": 9443, "audit": 9444}
    assert a["--audit-database"] == ["sqlite:///var/lib/palisade-operator/audit.db"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "audit")
    assert a["--audit-database"][0].removeprefix("sqlite://").startswith(mount["mountPath"] + "/")
    assert a["--audit-retention-age"] == ["7d"] and a["--audit-retention-rows"] == ["10000000"]
    assert "--audit-retention-bytes" not in a, "no size limit unless asked"
    assert a["--audit-default"] == ["all"]
    assert a["--audit-api-listen"] == ["0.0.0.0:9444"]
    assert a["--report-api"] == ["wgpolicyk8s"] and "--no-report-crds" in a
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    claim = next(v for v in pod["volumes"] if v["name"] == "audit")
    assert claim["persistentVolumeClaim"]["claimName"] == f"{RELEASE}-operator-audit"
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == f"{RELEASE}-operator-audit"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_retention_by_bytes_on_sqlite(chart):
    objects = render(chart, {"audit": {"retention": {"bytes": "900Mi"}}})
    a = args(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert a["--audit-retention-bytes"] == ["900Mi"]


def test_ha_with_postgres(chart):
    objects = render(chart, {**POSTGRES, "operator": {"replicas": 3}})
    dep = one(objects, "Deployment")
    assert dep["spec"]["replicas"] == 3
    assert "strategy" not in dep["spec"], "rolling updates: the Lease hands over"
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["PALISADE_AUDIT_DATABASE"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "palisade-db", "key": "url"}
    # The URL reaches the flag through the kubelet's $(VAR) expansion, never the pod spec.
    assert args(c)["--audit-database"] == ["$(PALISADE_AUDIT_DATABASE)"]
    assert all(v["name"] != "audit" for v in dep["spec"]["template"]["spec"]["volumes"])
    assert "PersistentVolumeClaim" not in kinds(objects)
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_enforcer_daemonset(chart):
    objects = render(chart, {"enforcer": {"backend": "legacy", "reject": True, "revoke": False}})
    ds = one(objects, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["image"] == "palisade-enforcer:0.1.0"
    sc = c["securityContext"]
    assert sc.get("privileged") is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert c["args"][0] == "agent"
    a = args(c)
    assert a["--operator"] == [f"https://{RELEASE}-operator.{NAMESPACE}.svc:9443"]
    assert a["--node"] == ["$(NODE_NAME)"]
    assert a["--backend"] == ["legacy"] and "--reject" in a and "--no-revoke" in a
    assert "--cleanup-on-exit" not in a, "a restart must never flush the node's rules"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["xtables-lock"] == "/run/xtables.lock"
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/palisade"
    token = volumes["token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "palisade-operator"
    assert a["--token-file"] == [mounts["token"] + "/" + token["path"]]
    ca = volumes["ca"]["secret"]
    assert ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "never the stream's key"
    assert a["--ca-file"] == [mounts["ca"] + "/ca.crt"]
    # The audience the enforcer presents is the one the operator accepts.
    dep = one(objects, "Deployment")
    assert args(dep["spec"]["template"]["spec"]["containers"][0])["--token-audience"] == [token["audience"]]


def test_the_service_serves_stream_and_metrics(chart):
    objects = render(chart, {})
    svc = one(objects, "Service")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"stream": (9443, "stream"), "metrics": (9090, "health"), "audit": (9444, "audit")}
    svc = one(render(chart, {"audit": {"api": {"enabled": False}}}), "Service")
    assert {p["name"] for p in svc["spec"]["ports"]} == {"stream", "metrics"}
    dep = one(objects, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_cert_manager_mode(chart):
    objects = render(chart, {"tls": {"certManager": {"enabled": True}}})
    cert = one(objects, "Certificate", f"{RELEASE}-stream")
    assert cert["spec"]["secretName"] == f"{RELEASE}-stream-tls"
    assert f"{RELEASE}-operator.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    assert cert["spec"]["issuerRef"]["name"] == f"{RELEASE}-stream-ca"
    dep = one(objects, "Deployment")
    a = args(dep["spec"]["template"]["spec"]["containers"][0])
    assert "--tls-secret" not in a, "cert-manager owns the Secret"
    tls = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == f"{RELEASE}-stream-tls"
    # The operator no longer needs to write Secrets.
    assert not any(r[2] == "secrets" for r in operator_rules(objects))


def test_generated_tls_lets_the_operator_write_only_its_namespace_secrets(chart):
    rules = operator_rules(render(chart, {}))
    secrets = {r for r in rules if r[2] == "secrets"}
    assert secrets, "the operator writes the stream's certificate"
    assert all(r[0] == "OwnNamespace" for r in secrets)


def test_service_monitor_and_otel(chart):
    objects = render(
        chart,
        {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}, "otel": {"endpoint": "http://otel:4317"}},
    )
    sm = one(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    c = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317"


def test_images_from_values(chart):
    objects = render(chart, {"image": {"registry": "ghcr.io/acme/", "tag": "1.2.3"}, "enforcer": {"image": {"tag": "1.2.4"}}})
    dep = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ds = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    job = one(objects, "Job", f"{RELEASE}-uninstall")["spec"]["template"]["spec"]["containers"][0]
    assert dep["image"] == "ghcr.io/acme/palisade-operator:1.2.3"
    assert ds["image"] == "ghcr.io/acme/palisade-enforcer:1.2.4"
    assert job["image"] == dep["image"], "the uninstall hook runs from the operator image"


def test_uninstall_hooks(chart):
    objects = render(chart, {})
    pre = one(objects, "Job", f"{RELEASE}-uninstall")
    post = one(objects, "Job", f"{RELEASE}-uninstall-leftovers")
    assert pre["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert post["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    for o in objects:
        if o["metadata"]["name"] == f"{RELEASE}-uninstall" and o["kind"] != "Job":
            ann = o["metadata"]["annotations"]
            assert ann["helm.sh/hook"] == "pre-delete,post-delete", "RBAC for both hooks"
            assert int(ann["helm.sh/hook-weight"]) < 0, "RBAC before the Job"
    c = pre["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["palisade-uninstall"]
    # Helm waits 5 minutes for a hook by default; the Job's two waits fit in it.
    assert pre["spec"]["activeDeadlineSeconds"] == 2 * 100 + 60 <= 300
    a = args(c)
    assert a["--phase"] == ["pre-delete"]
    assert a["--daemonset"] == [one(objects, "DaemonSet")["metadata"]["name"]]
    assert a["--namespace"] == [NAMESPACE]
    assert "--tls-secret" not in a and "--lease" not in a, "a running operator would make them again"
    a = args(post["spec"]["template"]["spec"]["containers"][0])
    assert a["--phase"] == ["post-delete"]
    assert a["--lease"] == ["palisade-operator"] and a["--tls-secret"] == [f"{RELEASE}-stream-tls"]
    # The selector finds the operator's pods, and only them.
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = dict(pair.split("=") for pair in a["--operator-selector"][0].split(","))
    assert all(labels.get(k) == v for k, v in selector.items())
    ds_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert not all(ds_labels.get(k) == v for k, v in selector.items())
    objects = render(chart, {"tls": {"certManager": {"enabled": True}}})
    a = args(one(objects, "Job", f"{RELEASE}-uninstall-leftovers")["spec"]["template"]["spec"]["containers"][0])
    assert "--tls-secret" not in a, "cert-manager's Secret is not ours to delete"
    assert not any(r[2] == "secrets" for r in operator_rules(objects, "uninstall"))


def test_notes_tell_the_next_steps(chart):
    text = notes(chart, {})
    assert "kubectl get policyreports -A" in text
    assert "palisade audit" in text
    assert "palisade-enforcer cleanup" in text
    text = notes(chart, {"reports": {"api": "openreports"}})
    assert "kubectl get policyreports -A" not in text and "reports.openreports.io" in text


BAD_VALUES = {
    "two replicas with sqlite": {"operator": {"replicas": 2}},
    "postgres without a secret": {"audit": {"storage": "postgres"}},
    "zero replicas": {"operator": {"replicas": 0}},
    "unknown audit storage": {"audit": {"storage": "mysql"}},
    "negative retention rows": {"audit": {"retention": {"rows": -1}}},
    "retention bytes with postgres": {**POSTGRES, "audit": {**POSTGRES["audit"], "retention": {"bytes": "1Gi"}}},
    "retention bytes without a size": {"audit": {"retention": {"bytes": "lots"}}},
    "negative retention age": {"audit": {"retention": {"age": "-7d"}}},
    "retention age without unit": {"audit": {"retention": {"age": "7"}}},
    "unknown audit default": {"audit": {"default": "denied"}},
    "unknown report api": {"reports": {"api": "kyverno"}},
    "unknown backend": {"enforcer": {"backend": "ebpf"}},
    "unknown top-level key": {"operatr": {"replicas": 1}},
    "unknown nested key": {"enforcer": {"privileged": True}},
    "bad log format": {"operator": {"logFormat": "xml"}},
    "port out of range": {"operator": {"streamPort": 70000}},
    "string replicas": {"operator": {"replicas": "2"}},
    "bad pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "relative state dir": {"enforcer": {"stateDir": "var/lib/palisade"}},
    "otel endpoint without scheme": {"otel": {"endpoint": "otel:4317"}},
    "bad issuer kind": {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "x", "kind": "Vault"}}}},
    "issuer without a name": {"tls": {"certManager": {"enabled": True, "issuerRef": {"kind": "ClusterIssuer"}}}},
    "zero retention age with a unit": {"audit": {"retention": {"age": "0d"}}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_the_schema_rejects(chart, case):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(BAD_VALUES[case])


def test_the_schema_names_the_replicas_rule(chart):
    with pytest.raises(helm.HelmError) as e:
        chart.validate_schema({"operator": {"replicas": 2}})
    assert "replicas" in str(e.value)


def test_the_schema_accepts_the_documented_combinations(chart):
    for values, _ in VALUE_SETS.values():
        chart.validate_schema(copy.deepcopy(values))


def crd_files() -> list[Path]:
    files = sorted((REPO / "crds" / "yaml").glob("*.yaml"))
    assert files, "crds/yaml/ has the generated CRDs"
    return files


def test_chart_crds_are_the_generated_ones():
    """Every generated CRD is in the chart byte for byte: Palisade's own in crds/, the report
    APIs' in files/optional-crds/ (installed when reports.installCRDs); nothing else."""
    expected_crds, expected_optional = set(), set()
    for f in crd_files():
        group = yaml.safe_load(f.read_text())["spec"]["group"]
        optional = group in OPTIONAL_CRD_GROUPS
        target = CHART / ("files/optional-crds" if optional else "crds") / f.name
        (expected_optional if optional else expected_crds).add(f.name)
        assert target.exists(), f"{f.name} is not in the chart: cp {f} {target}"
        assert target.read_bytes() == f.read_bytes(), f"{target} differs from {f}: cp {f} {target}"
    assert {p.name for p in (CHART / "crds").glob("*")} == expected_crds
    assert {p.name for p in (CHART / "files" / "optional-crds").glob("*.yaml")} == expected_optional


def report_crds(values: dict) -> set[str]:
    """Names of the report CRDs the chart installs for `values`."""
    reports = values.get("reports", {})
    api = reports.get("api", "wgpolicyk8s")
    if not reports.get("installCRDs", True):
        return set()
    groups = {"wgpolicyk8s": {"wgpolicyk8s.io"}, "openreports": {"openreports.io"}, "both": OPTIONAL_CRD_GROUPS, "none": set()}[api]
    out = set()
    for f in (CHART / "files" / "optional-crds").glob("*.yaml"):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["group"] in groups:
            out.add(crd["metadata"]["name"])
    return out


def test_report_crds_follow_the_values(chart):
    optional = {
        yaml.safe_load(f.read_text())["metadata"]["name"]: yaml.safe_load(f.read_text())["spec"]["group"]
        for f in (CHART / "files" / "optional-crds").glob("*.yaml")
    }
    for api, groups in [("wgpolicyk8s", {"wgpolicyk8s.io"}), ("openreports", {"openreports.io"}), ("both", OPTIONAL_CRD_GROUPS), ("none", set())]:
        for install in (True, False):
            objects = render(chart, {"reports": {"api": api, "installCRDs": install}})
            got = {o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"}
            want = {n for n, g in optional.items() if install and g in groups}
            assert got == want, (api, install)
            assert got == report_crds({"reports": {"api": api, "installCRDs": install}})
            for o in objects:
                if o["kind"] == "CustomResourceDefinition":
                    assert o["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_dockerfiles_build_binaries_of_the_workspace():
    """The images are built outside CI; at least what they name must exist here."""
    bins = {"palisade-operator": REPO / "operator/src/main.rs", "palisade-enforcer": REPO / "enforcer/src/main.rs", "palisade-uninstall": REPO / "operator/src/bin/palisade-uninstall.rs"}
    for path, needed in [("operator/Dockerfile", ["palisade-operator", "palisade-uninstall"]), ("enforcer/Dockerfile", ["palisade-enforcer"])]:
        text = (REPO / path).read_text()
        assert re.search(r"^FROM .* AS build", text, re.M | re.I), f"{path}: multi-stage"
        for b in needed:
            assert bins[b].exists(), f"{b}: no such binary in the workspace"
            assert f"--bin {b}" in text, f"{path} does not build {b}"
            assert f"/usr/local/bin/{b}" in text, f"{path} does not install {b}"
    op = (REPO / "operator/Dockerfile").read_text()
    assert re.search(r"^USER 65532", op, re.M), "the operator image runs as non-root"
    enf = (REPO / "enforcer/Dockerfile").read_text()
    # What the enforcer runs: iptables (both backends), ipset, conntrack, and `ip` (the
    # node's addresses, for revocation). Read from the install line, not from comments.
    lines = enf.splitlines()
    start = next(i for i, l in enumerate(lines) if "apt-get install" in l)
    words = lines[start].split("install", 1)[1].split()
    for line in lines[start + 1:]:
        if line.lstrip().startswith("&&"):
            break
        words += line.split()
    packages = {w for w in words if not w.startswith("-") and w != "\\"}
    for pkg in ["iptables", "ipset", "conntrack", "iproute2"]:
        assert pkg in packages, f"enforcer image lacks {pkg}: {sorted(packages)}"
    # The chart's images are the ones these files build.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["operator"]["image"]["repository"] == "palisade-operator"
    assert values["enforcer"]["image"]["repository"] == "palisade-enforcer"


def test_every_value_is_documented():
    """Each key of values.yaml has a `# --` comment right above it (or above the comment
    block it belongs to), as helm-docs and cert-manager's chart have them. A section's keys
    are documented one by one; a documented map (resources, nodeSelector...) is a value."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    free_indent = None  # inside a documented map value: its children need no comment
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9.]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        if free_indent is not None:
            if indent > free_indent:
                continue
            free_indent = None
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        documented = j >= 0 and lines[j].strip().startswith("# --")
        section = m.group(3).strip() == ""
        if documented and section:
            free_indent = indent
        elif not documented and not section:
            undocumented.append(line.strip())
    assert not undocumented, undocumented


BIN_DIR = Path(os.environ.get("PALISADE_BIN_DIR", REPO / "target" / "debug"))


def binary(name: str) -> Path:
    path = BIN_DIR / name
    assert path.exists(), f"{path} is missing: run `cargo build --workspace --bins` first (or set PALISADE_BIN_DIR)"
    return path


def parses(argv: list[str]) -> None:
    """The binary's own command-line parser accepts `argv`: each argument is parsed in order
    (an unknown flag or a bad value fails at once), then the trailing --help stops it before
    it does anything."""
    result = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(argv)}\n{result.stderr}"


@pytest.mark.parametrize("case", sorted(VALUE_SETS) + ["enforcer-options"])
def test_the_binaries_accept_the_rendered_arguments(chart, case):
    values = VALUE_SETS[case][0] if case in VALUE_SETS else {"enforcer": {"backend": "nft", "reject": True, "revoke": False}}
    objects = render(chart, values)
    operator = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    parses([str(binary("palisade-operator"))] + operator["args"])
    enforcer = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    parses([str(binary("palisade-enforcer"))] + enforcer["args"])
    jobs = [o for o in objects if o["kind"] == "Job"]
    for job in jobs:
        c = job["spec"]["template"]["spec"]["containers"][0]
        parses([str(binary(c["command"][0]))] + c["args"])


def test_the_argument_check_catches_an_unknown_flag():
    with pytest.raises(AssertionError):
        parses([str(binary("palisade-operator")), "--source=kubernetes", "--no-such-flag=1"])
    with pytest.raises(AssertionError):
        parses([str(binary("palisade-enforcer")), "agent", "--backend=ebpf"])


def test_audit_and_reports_off(chart):
    objects = render(chart, {"audit": {"enabled": False}, "reports": {"api": "none"}})
    op = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    a = args(op)
    assert a["--audit-database"] == ["none"] and "--no-reports" in a
    assert not any(f.startswith(("--audit-retention", "--audit-api", "--report-api")) for f in a)
    assert all(v["name"] != "audit" for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"])
    enf = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert "--no-audit" in args(enf), "no capture when nothing stores it"
    rules = operator_rules(objects)
    assert not any(r[1] in ("wgpolicyk8s.io", "openreports.io", "authorization.k8s.io") for r in rules)
    assert not any(r[2] == "customresourcedefinitions" for r in rules)
    assert "--no-audit" not in args(one(render(chart, {}), "DaemonSet")["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize("api", ["wgpolicyk8s", "openreports", "both"])
def test_report_api_and_its_rights(chart, api):
    objects = render(chart, {"reports": {"api": api}})
    a = args(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert a["--report-api"] == [api]
    rules = operator_rules(objects)
    # Writes only to the chosen API; list and delete in both, so that the operator deletes
    # the reports an earlier reports.api left in the other one.
    writes = {g for (_, g, _, v) in rules if v in ("create", "patch")}
    assert ("wgpolicyk8s.io" in writes) == (api in ("wgpolicyk8s", "both"))
    assert ("openreports.io" in writes) == (api in ("openreports", "both"))
    for group, resource in [("wgpolicyk8s.io", "policyreports"), ("wgpolicyk8s.io", "clusterpolicyreports"),
                            ("openreports.io", "reports"), ("openreports.io", "clusterreports")]:
        for verb in ("list", "delete"):
            assert ("Cluster", group, resource, verb) in rules, (group, resource, verb)


@pytest.mark.parametrize(
    "name,namespace,values",
    [
        ("acme", "net", {}),
        ("palisade-prod", "kube-system", {"tls": {"certManager": {"enabled": True}}}),
        ("x", "y", {"fullnameOverride": "pal", "operator": {"streamPort": 8443}}),
    ],
)
def test_names_agree_across_objects(chart, name, namespace, values):
    """Whatever the release is called, every object names the others right: the enforcers
    dial a name the certificate is for, the operator accepts the enforcers' ServiceAccount,
    the hook cleans with the right DaemonSet."""
    objects = render(chart, values, name=name, namespace=namespace)
    dep = one(objects, "Deployment")
    op = args(dep["spec"]["template"]["spec"]["containers"][0])
    ds = one(objects, "DaemonSet")
    enf = args(ds["spec"]["template"]["spec"]["containers"][0])
    svc = one(objects, "Service")
    url = enf["--operator"][0]
    host, port = url.removeprefix("https://").rsplit(":", 1)
    assert host == f"{svc['metadata']['name']}.{namespace}.svc"
    assert int(port) == next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "stream")
    if "--tls-name" in op:
        names = op["--tls-name"]
    else:
        (cert,) = [o for o in objects if o["kind"] == "Certificate" and not o["spec"].get("isCA")]
        names = cert["spec"]["dnsNames"]
    assert host in names
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    one(objects, "ServiceAccount", sa)
    assert op["--enforcer-service-account"] == [f"system:serviceaccount:{namespace}:{sa}"]
    secret = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "ca")["secret"]["secretName"]
    if "--tls-secret" in op:
        assert op["--tls-secret"] == [secret]
    else:
        assert any(o["kind"] == "Certificate" and o["spec"]["secretName"] == secret for o in objects)
    job = args(next(o for o in objects if o["kind"] == "Job" and o["metadata"]["name"].endswith("-uninstall"))["spec"]["template"]["spec"]["containers"][0])
    assert job["--daemonset"] == [ds["metadata"]["name"]] and job["--namespace"] == [namespace]
    assert op["--lease-namespace"] == [namespace]
    for b in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        for subject in b["subjects"]:
            one(objects, "ServiceAccount", subject["name"])
            assert subject["namespace"] == namespace
