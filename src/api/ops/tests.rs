//! Request parsing without a socket: one row per shape of input.

use super::*;

fn op(method: &str, path: &str, body: &str) -> Result<Op, ApiError> {
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let (route, params) = match_route(&m, path)?;
    parse(route, &m, &params, query, body.as_bytes().to_vec())
}

const VM: &str = "6f0d3b9e-4c1a-4f7e-9d2b-1a2b3c4d5e6f";

#[test]
fn routes_match_with_params_and_methods() {
    let (r, p) = match_route(&Method::GET, "/v1/vms/abc").unwrap();
    assert_eq!((r, p), ("/v1/vms/{id}", vec!["abc".to_string()]));
    assert!(matches!(
        match_route(&Method::POST, "/v1/health"),
        Err(ApiError::Method(_))
    ));
    assert!(matches!(
        match_route(&Method::GET, "/v1/nope"),
        Err(ApiError::NoRoute(_))
    ));
    assert!(matches!(
        match_route(&Method::GET, "/v1/vms//members"),
        Err(ApiError::NoRoute(_))
    ));
}

/// One row per shape of input: what it parses into, or which error.
#[test]
fn requests_parse_into_operations() {
    let ok = |m: &str, p: &str, b: &str| op(m, p, b).unwrap_or_else(|e| panic!("{m} {p}: {e}"));
    assert!(matches!(ok("GET", "/v1/me", ""), Op::Me));
    assert!(matches!(
        ok("PUT", "/v1/users/alice", r#"{"team":"lab"}"#),
        Op::PutUser { admin: false, .. }
    ));
    assert!(matches!(
        ok("POST", &format!("/v1/vms/{VM}/stop"), ""),
        Op::Stop {
            force: false,
            wait: true,
            ..
        }
    ));
    assert!(matches!(
        ok(
            "POST",
            &format!("/v1/vms/{VM}/stop"),
            r#"{"force":true,"wait":false}"#
        ),
        Op::Stop {
            force: true,
            wait: false,
            ..
        }
    ));
    match ok(
        "DELETE",
        "/v1/projects/p1/members/bob?force=true&transfer_to=carol",
        "",
    ) {
        Op::RemoveMember(p, u, exit) => {
            assert_eq!((p.as_str(), u.as_str()), ("p1", "bob"));
            assert!(exit.force);
            assert_eq!(exit.transfer_to.unwrap().as_str(), "carol");
        }
        other => panic!("{other:?}"),
    }
    match ok("GET", "/v1/audit?user=alice&since=5&limit=3", "") {
        Op::Audit(f, None) => assert_eq!(
            (f.actor.as_deref(), f.since_ms, f.limit),
            (Some("alice"), Some(5), 3)
        ),
        other => panic!("{other:?}"),
    }
    let err = |m: &str, p: &str, b: &str| op(m, p, b).unwrap_err();
    assert!(matches!(
        err("PUT", "/v1/users/Alice", r#"{"team":"lab"}"#),
        ApiError::BadParam(_)
    ));
    assert!(matches!(
        err("PUT", "/v1/users/alice", r#"{"team":"lab","x":1}"#),
        ApiError::BadJson(_)
    ));
    assert!(matches!(
        err("GET", "/v1/vms/Not_A_Name", ""),
        ApiError::BadParam(_)
    ));
    assert!(matches!(
        err("GET", "/v1/audit?vm=X", ""),
        ApiError::BadParam(_)
    ));
    assert!(matches!(
        err("GET", "/v1/audit?bogus=1", ""),
        ApiError::BadParam(_)
    ));
    assert!(matches!(
        err("GET", "/v1/me?x=1", ""),
        ApiError::BadParam(_)
    ));
    assert!(matches!(
        err("DELETE", "/v1/projects/p/members/u?force=maybe", ""),
        ApiError::BadParam(_)
    ));
    assert!(matches!(
        err(
            "POST",
            "/v1/vms",
            r#"{"name":"<x>","project":"p","vcpus":1,"memory_mib":32}"#
        ),
        ApiError::BadJson(_)
    ));
    assert!(matches!(err("PATCH", "/v1/vms", ""), ApiError::Method(_)));
}

#[test]
fn openapi_lists_exactly_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(super::super::routes::OPENAPI).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = vec![];
    for (path, ops) in paths {
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

#[test]
fn unlock_errors_never_quote_the_body() {
    let e = op(
        "POST",
        "/v1/projects/p/unlock",
        r#"{"share":"vmw-admin-SECRET","x":1}"#,
    )
    .unwrap_err();
    assert!(!e.to_string().contains("SECRET"), "{e}");
}

#[test]
fn only_reads_are_not_mutations() {
    assert!(!op("GET", "/v1/vms", "").unwrap().mutates());
    assert!(op("POST", &format!("/v1/vms/{VM}/keepalive"), "")
        .unwrap()
        .mutates());
    assert!(op("DELETE", "/v1/users/bob", "").unwrap().mutates());
}
