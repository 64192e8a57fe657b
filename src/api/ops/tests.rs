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
    match match_route(&Method::POST, "/v1/health") {
        Err(ApiError::Method { allow, .. }) => assert_eq!(allow, "GET"),
        other => panic!("{other:?}"),
    }
    match match_route(&Method::HEAD, "/v1/vms/abc") {
        Err(ApiError::Method { allow, .. }) => assert_eq!(allow, "GET, PATCH, DELETE"),
        other => panic!("{other:?}"),
    }
    // A trailing slash names no route (and no other method of the route without it).
    assert!(matches!(
        match_route(&Method::GET, "/v1/vms/"),
        Err(ApiError::NoRoute(_))
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
    assert!(matches!(
        err("PATCH", "/v1/vms", ""),
        ApiError::Method { .. }
    ));
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

/// What the document says a body or parameter is, the parser takes, and nothing else: these
/// rows are the shapes schemathesis found or could find on either side of that line.
#[test]
fn the_parser_takes_exactly_what_the_document_describes() {
    let vm = |body: &str| op("POST", "/v1/vms", body);
    // JSON Schema integers include 2.0; fractions and negatives are not integers.
    assert!(vm(r#"{"name":"a","project":"p","vcpus":2.0,"memory_mib":64.0}"#).is_ok());
    for bad in ["2.5", "-1", "1e400", "\"2\"", "4294967296"] {
        let body = format!(r#"{{"name":"a","project":"p","vcpus":{bad},"memory_mib":64}}"#);
        assert!(matches!(vm(&body), Err(ApiError::BadJson(_))), "{bad}");
    }
    // Objects only: serde would read a struct from an array.
    assert!(matches!(
        op("PUT", "/v1/users/bob", r#"["ops", false]"#),
        Err(ApiError::BadJson(_))
    ));
    assert!(matches!(
        op("PATCH", &format!("/v1/vms/{VM}"), r#"{"idle":[null,null]}"#),
        Err(ApiError::BadJson(_))
    ));
    assert!(op(
        "PATCH",
        &format!("/v1/vms/{VM}"),
        r#"{"idle":null,"vcpus":null}"#
    )
    .is_ok());
    // Durations in the API's own grammar.
    assert!(op(
        "PATCH",
        &format!("/v1/vms/{VM}"),
        r#"{"idle":{"after":"1h 30m"}}"#
    )
    .is_ok());
    assert!(matches!(
        op(
            "PATCH",
            &format!("/v1/vms/{VM}"),
            r#"{"idle":{"after":"1day"}}"#
        ),
        Err(ApiError::BadJson(_))
    ));
    // Query flags are `true` or `false`; audit bounds are the document's.
    let member = "/v1/projects/p/members/bob";
    assert!(op("DELETE", &format!("{member}?force=true"), "").is_ok());
    for bad in ["force=1", "force=", "force=yes"] {
        assert!(
            matches!(
                op("DELETE", &format!("{member}?{bad}"), ""),
                Err(ApiError::BadParam(_))
            ),
            "{bad}"
        );
    }
    for (q, ok) in [
        ("limit=1", true),
        ("limit=10000", true),
        ("limit=2.0", true),
        ("limit=0", false),
        ("limit=10001", false),
        ("since=0", true),
        ("since=-1", false),
        ("until=1.5", false),
    ] {
        assert_eq!(op("GET", &format!("/v1/audit?{q}"), "").is_ok(), ok, "{q}");
    }
}
