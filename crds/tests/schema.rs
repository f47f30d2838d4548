//! The generated CRDs: names, scope, printer columns, and every validation rule, checked by
//! evaluating the schema (OpenAPI bounds here, CEL with `kube-cel`) against objects the API
//! server must admit or reject, and cross-checked against the conversion, which must accept
//! exactly what the schema accepts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube_cel::{compile_schema, CompiledSchema, ScopeContext, Validator};
use palisade_crds::palisade::{Tier, TieredNetworkPolicy};
use palisade_crds::parse_manifests;
use serde_json::{json, Value};

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    assert_eq!(crd.spec.versions.len(), 1);
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("an openAPIV3Schema");
    serde_json::to_value(schema).expect("schema as JSON")
}

fn tier_schema() -> Value {
    schema_of(&Tier::crd())
}

fn tnp_schema() -> Value {
    schema_of(&TieredNetworkPolicy::crd())
}

/// Every `x-kubernetes-validations` rule of a schema, with its JSON pointer.
fn rules(schema: &Value, pointer: &str, out: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get("x-kubernetes-validations") {
                for rule in list {
                    let text = rule["rule"].as_str().expect("a rule").to_string();
                    assert!(
                        rule["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "rule at {pointer} has no message: {text}"
                    );
                    out.push((pointer.to_string(), text));
                }
            }
            for (key, value) in map {
                rules(value, &format!("{pointer}/{key}"), out);
            }
        }
        Value::Array(list) => {
            for (i, value) in list.iter().enumerate() {
                rules(value, &format!("{pointer}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn rule_at<'a>(schema: &'a Value, pointer: &str) -> Vec<&'a str> {
    schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"))
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no rules at {pointer}"))
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .collect()
}

// ------------------------------------------------------------------ names and columns

#[test]
fn tier_crd_names_scope_and_columns() {
    let crd = Tier::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("tiers.palisade.dev"));
    assert_eq!(crd.spec.group, "palisade.dev");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "Tier");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let columns: Vec<(String, String, String)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("Priority".into(), "integer".into(), ".spec.priority".into()),
            (
                "Default-Action".into(),
                "string".into(),
                ".spec.defaultAction".into()
            ),
            (
                "Age".into(),
                "date".into(),
                ".metadata.creationTimestamp".into()
            ),
        ]
    );
}

#[test]
fn tiered_network_policy_crd_names_scope_and_columns() {
    let crd = TieredNetworkPolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("tierednetworkpolicies.palisade.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tnp".to_string()]));
    let version = &crd.spec.versions[0];
    let columns: Vec<(String, String)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("Tier".into(), ".spec.tier".into()),
            ("Priority".into(), ".spec.priority".into()),
            ("Ingress".into(), ".status.ingressRules".into()),
            ("Egress".into(), ".status.egressRules".into()),
            ("Age".into(), ".metadata.creationTimestamp".into()),
        ]
    );
    // The rule counts are status fields the operator writes (JSONPath cannot count).
    let schema = tnp_schema();
    for field in ["ingressRules", "egressRules"] {
        assert_eq!(
            schema.pointer(&format!("/properties/status/properties/{field}/type")),
            Some(&json!("integer"))
        );
    }
    assert!(version
        .subresources
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .is_some());
}

// ------------------------------------------------------------------ rules are present

#[test]
fn tier_schema_has_its_rules() {
    let s = tier_schema();
    let root = rule_at(&s, "");
    assert!(root
        .iter()
        .any(|r| r.contains("'admin', 'networkpolicy', 'baseline'")));
    assert!(root
        .iter()
        .any(|r| r.contains("self.metadata.name.matches(")));
    assert_eq!(
        rule_at(&s, "/properties/spec/properties/priority"),
        vec!["!(self in [100, 1000, 10000])"]
    );
    let priority = &s["properties"]["spec"]["properties"]["priority"];
    assert_eq!(priority["minimum"].as_f64(), Some(0.0));
    assert_eq!(priority["maximum"].as_f64(), Some(20000.0));
    let action = &s["properties"]["spec"]["properties"]["defaultAction"];
    assert_eq!(action["enum"], json!(["Pass", "Deny"]));
    assert_eq!(action["default"], json!("Pass"));
    assert_eq!(s["properties"]["spec"]["required"], json!(["priority"]));
}

#[test]
fn tiered_network_policy_schema_has_its_rules() {
    let s = tnp_schema();
    let spec = "/properties/spec/properties";
    assert_eq!(
        rule_at(&s, &format!("{spec}/tier")),
        vec!["self != 'networkpolicy'"]
    );
    assert_eq!(
        s.pointer(&format!("{spec}/tier/pattern")),
        Some(&json!("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    );
    assert_eq!(
        s.pointer(&format!("{spec}/priority/maximum"))
            .and_then(Value::as_f64),
        Some(1000.0)
    );
    for dir in ["ingress", "egress"] {
        assert_eq!(
            s.pointer(&format!("{spec}/{dir}/maxItems"))
                .and_then(Value::as_u64),
            Some(100),
            "{dir} rule count"
        );
    }
    assert!(rule_at(&s, &format!("{spec}/subject"))[0].contains("has(self.namespaces)"));
    let ingress_peer = format!("{spec}/ingress/items/properties/from/items");
    assert!(rule_at(&s, &ingress_peer)[0].contains("has(self.networks)"));
    let egress_peer = format!("{spec}/egress/items/properties/to/items");
    assert!(rule_at(&s, &egress_peer)[0].contains("has(self.domainNames)"));
    for peer in [&ingress_peer, &egress_peer] {
        assert_eq!(
            rule_at(&s, &format!("{peer}/properties/networks/items")),
            vec!["isCIDR(self)"]
        );
    }
    let protocol = format!("{spec}/ingress/items/properties/protocols/items");
    assert!(rule_at(&s, &protocol)[0].contains("has(self.destinationNamedPort)"));
    let port = format!("{protocol}/properties/tcp/properties/destinationPort");
    assert_eq!(
        rule_at(&s, &port),
        vec!["has(self.number) != has(self.range)"]
    );
    assert_eq!(
        rule_at(&s, &format!("{port}/properties/range")),
        vec!["self.start <= self.end"]
    );
    assert!(rule_at(&s, &format!("{spec}/egress/items"))[0].contains("destinationNamedPort"));
    assert_eq!(
        s.pointer(&format!("{spec}/audit/enum")),
        Some(&json!(["All", "Deny", "None", null]))
    );
}

#[test]
fn every_cel_rule_compiles_and_uses_only_crd_variables() {
    for schema in [tier_schema(), tnp_schema()] {
        let mut all = Vec::new();
        rules(&schema, "", &mut all);
        assert!(!all.is_empty());
        for (pointer, rule) in all {
            let node = if pointer.is_empty() {
                &schema
            } else {
                schema.pointer(&pointer).expect("node")
            };
            let compiled: CompiledSchema = compile_schema(node);
            assert!(
                !compiled.has_errors(),
                "{pointer}: {rule}: {:?}",
                compiled.compilation_errors()
            );
            let warnings: Vec<_> =
                kube_cel::analyze_rule(&rule, &compiled, ScopeContext::CrdValidation)
                    .into_iter()
                    // kube-cel's scope check does not know macro-bound variables
                    // (`self.to.exists(peer, ...)`): those are not real scope errors.
                    .filter(|w| {
                        let bound = w
                            .message
                            .strip_prefix("variable '")
                            .and_then(|m| m.split_once('\''))
                            .is_some_and(|(var, _)| rule.contains(&format!("({var}, ")));
                        !(w.kind == kube_cel::WarningKind::WrongScope && bound)
                    })
                    .collect();
            assert!(warnings.is_empty(), "{pointer}: {rule}: {warnings:?}");
        }
    }
}

// ---------------------------------------------------- the schema as the API server sees it

/// The OpenAPI part of the API server's validation, for the keywords the CRDs use.
fn openapi_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            errors.push(format!("{path}: may not be null"));
        }
        return;
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            errors.push(format!("{path}: {value} is not one of {options:?}"));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(map) = value.as_object() else {
                errors.push(format!("{path}: not an object"));
                return;
            };
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().expect("a key");
                if map.get(key).is_none_or(Value::is_null) {
                    errors.push(format!("{path}.{key}: required"));
                }
            }
            if let Some(min) = schema["minProperties"].as_u64() {
                if (map.len() as u64) < min {
                    errors.push(format!("{path}: fewer than {min} properties"));
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64() {
                if map.len() as u64 > max {
                    errors.push(format!("{path}: more than {max} properties"));
                }
            }
            for (key, child) in map {
                let at = format!("{path}.{key}");
                if let Some(sub) = schema["properties"].get(key) {
                    openapi_errors(sub, child, &at, errors);
                } else if schema["additionalProperties"].is_object() {
                    openapi_errors(&schema["additionalProperties"], child, &at, errors);
                }
                // Anything else is pruned by the API server (a structural schema).
            }
        }
        Some("array") => {
            let Some(list) = value.as_array() else {
                errors.push(format!("{path}: not an array"));
                return;
            };
            if let Some(min) = schema["minItems"].as_u64() {
                if (list.len() as u64) < min {
                    errors.push(format!("{path}: fewer than {min} items"));
                }
            }
            if let Some(max) = schema["maxItems"].as_u64() {
                if list.len() as u64 > max {
                    errors.push(format!("{path}: more than {max} items"));
                }
            }
            for (i, item) in list.iter().enumerate() {
                openapi_errors(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                errors.push(format!("{path}: not a string"));
                return;
            };
            let len = text.chars().count() as u64;
            if schema["minLength"].as_u64().is_some_and(|min| len < min) {
                errors.push(format!("{path}: too short"));
            }
            if schema["maxLength"].as_u64().is_some_and(|max| len > max) {
                errors.push(format!("{path}: too long"));
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                if !regex::Regex::new(pattern)
                    .expect("a pattern")
                    .is_match(text)
                {
                    errors.push(format!("{path}: does not match {pattern}"));
                }
            }
        }
        Some("integer") => {
            let Some(n) = value.as_i64() else {
                errors.push(format!("{path}: not an integer"));
                return;
            };
            if schema["minimum"]
                .as_f64()
                .is_some_and(|min| (n as f64) < min)
            {
                errors.push(format!("{path}: below the minimum"));
            }
            if schema["maximum"]
                .as_f64()
                .is_some_and(|max| (n as f64) > max)
            {
                errors.push(format!("{path}: above the maximum"));
            }
        }
        _ => {}
    }
}

/// Whether the API server would admit `object` (YAML) under `schema`: OpenAPI, then CEL.
fn admits(schema: &Value, yaml: &str) -> Result<(), Vec<String>> {
    let object: Value = serde_yaml::from_str(yaml).expect("YAML");
    let mut errors = Vec::new();
    openapi_errors(schema, &object, "", &mut errors);
    if let Err(cel) = Validator::new().validate(schema, &object, None) {
        errors.extend(cel.iter().map(|e| format!("CEL {e} ({:?})", e.kind)));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Asserts what the API server does with `yaml`, and that the conversion agrees.
#[track_caller]
fn check(schema: &Value, yaml: &str, admitted: bool) {
    let by_schema = admits(schema, yaml);
    assert_eq!(by_schema.is_ok(), admitted, "schema: {by_schema:?}\n{yaml}");
    let converted = parse_manifests(yaml);
    assert_eq!(
        converted.is_ok(),
        admitted,
        "conversion disagrees with the schema: {:?}\n{yaml}",
        converted.err().map(|e| e.to_string())
    );
}

fn tier(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

#[test]
fn tier_objects_admitted_and_rejected() {
    let s = tier_schema();
    check(&s, &tier("gold", "{priority: 50}"), true);
    check(
        &s,
        &tier("gold", "{priority: 0, defaultAction: Deny}"),
        true,
    );
    check(
        &s,
        &tier(
            "g",
            "{priority: 20000, defaultAction: Pass, description: x}",
        ),
        true,
    );
    for name in ["admin", "networkpolicy", "baseline"] {
        check(&s, &tier(name, "{priority: 50}"), false);
    }
    check(&s, &tier("gold.example", "{priority: 50}"), false);
    check(&s, &tier("gold-", "{priority: 50}"), false);
    for priority in ["100", "1000", "10000", "20001", "-1"] {
        check(
            &s,
            &tier("gold", &format!("{{priority: {priority}}}")),
            false,
        );
    }
    check(
        &s,
        &tier("gold", "{priority: 50, defaultAction: Accept}"),
        false,
    );
    check(&s, &tier("gold", "{defaultAction: Deny}"), false);
}

fn tnp(spec: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: TieredNetworkPolicy\nmetadata: {{name: t}}\nspec: {spec}\n"
    )
}

/// A TNP in tier gold with the given rules.
fn tnp_rules(rules: &str) -> String {
    tnp(&format!(
        "{{tier: gold, priority: 1, subject: {{namespaces: {{}}}}, {rules}}}"
    ))
}

fn ingress(rule: &str) -> String {
    tnp_rules(&format!("ingress: [{rule}]"))
}

fn egress(rule: &str) -> String {
    tnp_rules(&format!("egress: [{rule}]"))
}

#[test]
fn tiered_network_policy_valid_objects_are_admitted() {
    let s = tnp_schema();
    check(
        &s,
        &tnp("{tier: gold, priority: 0, subject: {namespaces: {}}}"),
        true,
    );
    check(
        &s,
        &tnp("{tier: admin, priority: 1000, audit: All, subject: {pods: {namespaceSelector: {matchLabels: {a: b}}, podSelector: {}}}}"),
        true,
    );
    check(
        &s,
        &ingress("{name: web, action: Accept, from: [{namespaces: {}}, {pods: {podSelector: {}}}, {networks: [10.0.0.0/8, 'fd00::/8']}], protocols: [{tcp: {destinationPort: {number: 80}}}, {udp: {destinationPort: {range: {start: 1000, end: 1000}}}}, {destinationNamedPort: http}]}"),
        true,
    );
    check(
        &s,
        &egress("{action: Deny, to: [{nodes: {}}, {networks: [192.0.2.0/24]}, {domainNames: [example.com, '*.example.org']}], protocols: [{sctp: {destinationPort: {number: 9}}}]}"),
        true,
    );
    check(
        &s,
        &egress("{action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {}}}], protocols: [{destinationNamedPort: dns}]}"),
        true,
    );
    let hundred = vec!["{action: Deny, from: [{namespaces: {}}]}"; 100].join(", ");
    check(&s, &tnp_rules(&format!("ingress: [{hundred}]")), true);
}

#[test]
fn tiered_network_policy_invalid_spec_is_rejected() {
    let s = tnp_schema();
    check(
        &s,
        &tnp("{tier: networkpolicy, priority: 0, subject: {namespaces: {}}}"),
        false,
    );
    check(
        &s,
        &tnp("{tier: Admin, priority: 0, subject: {namespaces: {}}}"),
        false,
    );
    check(
        &s,
        &tnp("{tier: gold.x, priority: 0, subject: {namespaces: {}}}"),
        false,
    );
    check(
        &s,
        &tnp("{tier: gold, priority: 1001, subject: {namespaces: {}}}"),
        false,
    );
    check(
        &s,
        &tnp("{tier: gold, priority: -1, subject: {namespaces: {}}}"),
        false,
    );
    check(&s, &tnp("{tier: gold, priority: 0, subject: {}}"), false);
    check(
        &s,
        &tnp("{tier: gold, priority: 0, subject: {namespaces: {}, pods: {podSelector: {}}}}"),
        false,
    );
    check(
        &s,
        &tnp("{tier: gold, priority: 0, audit: Some, subject: {namespaces: {}}}"),
        false,
    );
    let many = vec!["{action: Deny, to: [{namespaces: {}}]}"; 101].join(", ");
    check(&s, &tnp_rules(&format!("egress: [{many}]")), false);
}

#[test]
fn tiered_network_policy_invalid_rules_are_rejected() {
    let s = tnp_schema();
    let long = "n".repeat(101);
    check(
        &s,
        &ingress(&format!(
            "{{name: {long}, action: Deny, from: [{{namespaces: {{}}}}]}}"
        )),
        false,
    );
    check(
        &s,
        &ingress("{action: Allow, from: [{namespaces: {}}]}"),
        false,
    );
    check(&s, &ingress("{action: Deny, from: []}"), false);
    check(&s, &ingress("{action: Deny, from: [{}]}"), false);
    check(
        &s,
        &ingress("{action: Deny, from: [{namespaces: {}, networks: [10.0.0.0/8]}]}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{networks: [not-a-cidr]}]}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{networks: [10.0.0.0]}]}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{networks: []}]}"),
        false,
    );
    check(
        &s,
        &egress("{action: Deny, to: [{nodes: {}, networks: [10.0.0.0/8]}]}"),
        false,
    );
    check(
        &s,
        &egress("{action: Deny, to: [{domainNames: ['bad domain']}]}"),
        false,
    );
    check(
        &s,
        &egress("{action: Deny, to: [{domainNames: []}]}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{namespaces: {}}], protocols: []}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{namespaces: {}}], protocols: [{}]}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}]}"),
        false,
    );
    check(
        &s,
        &ingress("{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}"),
        false,
    );
    for port in [
        "{number: 0}",
        "{number: 65536}",
        "{number: 80, range: {start: 1, end: 2}}",
        "{range: {start: 2, end: 1}}",
        "{range: {start: 0, end: 1}}",
        "{range: {start: 1, end: 65536}}",
    ] {
        check(
            &s,
            &ingress(&format!(
                "{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{udp: {{destinationPort: {port}}}}}]}}"
            )),
            false,
        );
    }
    for peer in [
        "{networks: [10.0.0.0/8]}",
        "{nodes: {}}",
        "{domainNames: [a.example]}",
    ] {
        check(
            &s,
            &egress(&format!(
                "{{action: Accept, to: [{peer}], protocols: [{{destinationNamedPort: http}}]}}"
            )),
            false,
        );
    }
}
