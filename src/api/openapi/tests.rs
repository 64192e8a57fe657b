use super::*;
use crate::api::ops::ROUTES;

fn doc() -> Value {
    document(&Config::default())
}

#[test]
fn the_document_lists_exactly_the_routes() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = vec![];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            documented.push((m.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
}

/// Every `$ref` names a schema the document holds.
#[test]
fn every_reference_resolves() {
    let doc = doc();
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            schemas.contains_key(name),
            "{name} is referenced but missing"
        );
    }
}

/// Every operation has a success answer, a schema for each answer, a body schema where it
/// reads a body, and request schemas that refuse unknown fields.
#[test]
fn every_operation_is_described_completely() {
    let doc = doc();
    for s in SPECS {
        let op = &doc["paths"][s.path][s.method.to_lowercase()];
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.keys().any(|k| k.starts_with('2')), "{}", s.id);
        for (status, r) in responses {
            let content = r["content"].as_object().unwrap();
            assert!(!content.is_empty(), "{} {status}", s.id);
            for media in content.values() {
                assert!(media["schema"].is_object(), "{} {status}", s.id);
            }
        }
        let reads_body = matches!(s.method, "POST" | "PUT" | "PATCH");
        assert_eq!(op["requestBody"].is_object(), reads_body, "{}", s.id);
        for p in s.params {
            assert!(
                s.path.contains(&format!("{{{}}}", p.name)) == p.in_path,
                "{} {}",
                s.id,
                p.name
            );
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if name.ends_with("Request") {
            assert_eq!(schema["additionalProperties"], false, "{name}");
        }
    }
}

/// The problem codes a route declares are ones the error mapping gives with that status.
#[test]
fn declared_codes_come_with_their_status() {
    let mapped = crate::api::error::every_status_and_code();
    for s in SPECS {
        for (status, code) in s.problems.iter().flat_map(|g| g.iter()) {
            assert!(
                mapped.contains(&(*status, *code)) || *code == "too_many_connections",
                "{} declares {status} {code}, which no error maps to",
                s.id
            );
        }
    }
    // And every code the mapping can give is declared somewhere.
    for (status, code) in &mapped {
        assert!(
            SPECS
                .iter()
                .any(|s| declared(s.method, s.path, *status, Some(code)))
                || ["no_route", "method_not_allowed"].contains(code),
            "{status} {code} is declared by no route"
        );
    }
}

#[test]
fn host_limits_become_schema_bounds() {
    let mut cfg = Config::default();
    cfg.limits.max_vcpus = 3;
    cfg.limits.max_memory_mib = 512;
    cfg.limits.max_drive_mib = 64;
    let doc = document(&cfg);
    let s = &doc["components"]["schemas"];
    assert_eq!(s["CreateVmRequest"]["properties"]["vcpus"]["maximum"], 3);
    assert_eq!(s["CreateVmRequest"]["properties"]["vcpus"]["minimum"], 1);
    assert_eq!(
        s["UpdateVmRequest"]["properties"]["memory_mib"]["maximum"],
        512
    );
    assert_eq!(
        s["CreateDriveRequest"]["properties"]["size_mib"]["maximum"],
        64
    );
}

/// `declared` is what the router's debug check asks: a status and code listed for the route
/// pass, anything else does not; requests that matched no route are not described.
#[test]
fn declared_answers_per_route() {
    assert!(declared(
        "POST",
        "/v1/vms/{id}/start",
        409,
        Some("vm_running")
    ));
    assert!(declared(
        "POST",
        "/v1/vms/{id}/start",
        409,
        Some("project_locked")
    ));
    assert!(declared("POST", "/v1/vms/{id}/stop", 202, None));
    assert!(!declared("POST", "/v1/vms/{id}/start", 202, None));
    assert!(!declared("GET", "/v1/me", 409, Some("vm_running")));
    assert!(!declared("GET", "/v1/me", 404, Some("vm_running")));
    assert!(declared("GET", "unmatched", 404, Some("no_route")));
}
