use super::*;
use serde_json::json;

const NOW: i64 = 1_800_000_000_000;

#[test]
fn sizes_spans_and_ids() {
    assert_eq!(size(64), "64M");
    assert_eq!(size(2048), "2G");
    assert_eq!(size(1536), "1.5G");
    assert_eq!(size(16 * 1024 * 1024), "16T");
    assert_eq!(span(45_000), "45s");
    assert_eq!(span(72 * 60_000), "1h12m");
    assert_eq!(span(3 * 3_600_000), "3h");
    assert_eq!(span(51 * 3_600_000), "2d3h");
    assert_eq!(relative(NOW + 90_000, NOW), "in 1m");
    assert_eq!(relative(NOW - 300_000, NOW), "5m ago");
    assert_eq!(short_id("3f2a1b2c-0000-4000-8000-000000000000"), "3f2a1b2c");
}

#[test]
fn since_and_until_take_spans_and_local_times() {
    assert_eq!(parse_when("1h", NOW).unwrap(), NOW - 3_600_000);
    assert_eq!(parse_when("2d", NOW).unwrap(), NOW - 2 * 86_400_000);
    let t = parse_when("2026-11-29 14:00", NOW).unwrap();
    assert_eq!(parse_when("2026-11-29T14:00", NOW).unwrap(), t);
    assert_eq!(parse_when("2026-11-29 14:00:30", NOW).unwrap(), t + 30_000);
    assert_eq!(time(t, t), "14:00:00");
    let today_noon = parse_when("12:00", NOW).unwrap();
    assert_eq!(time(today_noon, NOW), "12:00:00");
    assert_eq!(
        parse_when("1970-01-01T00:00:01Z", NOW).unwrap(),
        1_000,
        "RFC 3339 names its own zone"
    );
    assert_eq!(parse_when("1970-01-01T01:00:01+01:00", NOW).unwrap(), 1_000);
    let e = parse_when("yesterday-ish", NOW).unwrap_err();
    assert!(e.contains("1h") && e.contains("14:00"), "{e}");
}

fn columns(t: &Table) -> Vec<&str> {
    t.headers().to_vec()
}

#[test]
fn vm_list_has_its_columns_short_ids_and_idle_deadlines() {
    let vms_json = vec![
        json!({"id": "aaaaaaaa-1111-4000-8000-000000000000", "name": "web", "project": "lab", "role": "owner",
               "state": "running", "vcpus": 2, "memory_mib": 2048, "idle": {}}),
        json!({"id": "bbbbbbbb-1111-4000-8000-000000000000", "name": "db", "project": "lab", "role": "user",
               "state": "stopped", "vcpus": 1, "memory_mib": 512, "idle": {"enabled": false}}),
        json!({"id": "cccccccc-1111-4000-8000-000000000000", "name": "ci", "project": "lab", "role": "owner",
               "state": "running", "vcpus": 1, "memory_mib": 64, "idle": {}}),
    ];
    let mut idle = HashMap::new();
    idle.insert(
        "aaaaaaaa-1111-4000-8000-000000000000".to_string(),
        json!({"enabled": true, "after": "2h", "idle_since_ms": NOW - 1000, "shutdown_at_ms": NOW + 72 * 60_000 + 500}),
    );
    idle.insert(
        "cccccccc-1111-4000-8000-000000000000".to_string(),
        json!({"enabled": true, "after": "2h"}),
    );
    let t = vms(&vms_json, &idle, NOW);
    assert_eq!(
        columns(&t),
        ["NAME", "ID", "PROJECT", "ROLE", "STATE", "VCPUS", "MEMORY", "IDLE"]
    );
    assert_eq!(
        t.rows()[0],
        ["web", "aaaaaaaa", "lab", "owner", "running", "2", "2G", "in 1h12m"]
    );
    assert_eq!(t.rows()[1][7], "off");
    assert_eq!(t.rows()[2][7], "in 2h+ (busy)");
    let text = t.render();
    assert!(text.starts_with("NAME  ID        PROJECT"), "{text}");
    assert!(!text.contains('{'), "no nested cells: {text}");
}

#[test]
fn every_other_table_has_its_columns() {
    let names: HashMap<String, String> = [(
        "aaaaaaaa-1111-4000-8000-000000000000".to_string(),
        "web".to_string(),
    )]
    .into();
    let d = drives(
        &[
            json!({"id": "dddddddd-1111-4000-8000-000000000000", "name": "disk", "project": "lab",
                 "size_mib": 1024, "owners": ["alice", "bob"], "attached_to": "aaaaaaaa-1111-4000-8000-000000000000"}),
        ],
        &names,
    );
    assert_eq!(
        columns(&d),
        ["NAME", "ID", "PROJECT", "SIZE", "OWNERS", "ATTACHED"]
    );
    assert_eq!(
        d.rows()[0],
        ["disk", "dddddddd", "lab", "1G", "alice,bob", "web"]
    );

    let p = projects(
        &[
            json!({"name": "lab", "members": ["alice"], "locked": false, "waiting_for": [], "pending": [], "until_ms": NOW + 3_600_000}),
            json!({"name": "old", "members": [], "locked": true, "waiting_for": ["admin", "member"], "pending": []}),
            json!({"name": "new", "members": [], "locked": true, "waiting_for": ["member"], "pending": ["admin"], "until_ms": NOW + 60_000}),
        ],
        NOW,
    );
    assert_eq!(columns(&p), ["NAME", "MEMBERS", "KEY"]);
    assert!(p.rows()[0][2].starts_with("unlocked until ") && p.rows()[0][2].ends_with("(in 1h)"));
    assert_eq!(p.rows()[1][2], "locked");
    assert!(p.rows()[2][2].starts_with("locked, waiting for the member share until "));

    let u = users(&[
        json!({"name": "root", "team": "ops", "admin": true, "admin_in_registry": false}),
        json!({"name": "alice", "team": "ops", "admin": false, "admin_in_registry": false}),
    ]);
    assert_eq!(columns(&u), ["NAME", "TEAM", "ADMIN"]);
    assert_eq!(u.rows()[0][2], "yes (config)");
    assert_eq!(u.rows()[1][2], "no");

    let h = host_vms(&[
        json!({"id": "aaaaaaaa-1111-4000-8000-000000000000", "name": "web", "project": "lab",
        "state": "running", "state_reason": "start", "vcpus": 1, "memory_mib": 64, "idle_enabled": true}),
    ]);
    assert_eq!(
        columns(&h),
        ["NAME", "ID", "PROJECT", "STATE", "VCPUS", "MEMORY", "IDLE"]
    );
    assert_eq!(h.rows()[0][6], "on");

    let a = audit(
        &[
            json!({"id": 2, "at_ms": NOW - 300_000, "actor": "alice", "action": "vm.start",
                   "target": "aaaaaaaa-1111-4000-8000-000000000000", "vm": "aaaaaaaa-1111-4000-8000-000000000000",
                   "outcome": "ok", "detail": ""}),
            json!({"id": 1, "at_ms": NOW - 600_000, "actor": "root", "action": "user.put",
                   "target": "alice", "outcome": "ok", "detail": "team=ops"}),
        ],
        &names,
        NOW,
    );
    assert_eq!(
        columns(&a),
        ["TIME", "AGO", "ACTOR", "ACTION", "VM", "TARGET", "OUTCOME", "DETAIL"]
    );
    assert_eq!(
        a.rows()[0][1..],
        ["5m ago", "alice", "vm.start", "web", "-", "ok", "-"]
    );
    assert_eq!(a.rows()[1][4..6], ["-", "alice"]);

    let m = members(&json!({"owners": ["alice"], "users": ["bob", "carol"]}));
    assert_eq!(columns(&m), ["USER", "ROLE"]);
    assert_eq!(m.rows().len(), 3);
    assert_eq!(Table::new(&["A"]).render(), "(none)\n");
}

#[test]
fn details_have_no_nested_objects() {
    let v = json!({"id": "aaaaaaaa-1111-4000-8000-000000000000", "name": "web", "project": "lab", "team": "ops",
        "role": "owner", "state": "running", "state_reason": "start", "vcpus": 1, "memory_mib": 64,
        "idle": {"after": "30m"}, "idle_status": {"enabled": true, "after": "30m", "shutdown_at_ms": NOW + 600_000},
        "drives": [{"id": "dddddddd-1111-4000-8000-000000000000", "name": "disk", "size_mib": 64, "owners": ["alice"]}]});
    let text = vm(&v, NOW);
    assert!(text.contains("Idle policy:    after 30m idle"), "{text}");
    assert!(text.contains("Idle shutdown:  in 10m"), "{text}");
    assert!(text.contains("State:          running (start)"), "{text}");
    assert!(text.contains("  disk  dddddddd  64M   alice"), "{text}");
    assert!(!text.contains('{'), "{text}");
}

#[test]
fn events_read_as_sentences() {
    let names: HashMap<String, String> = [(
        "aaaaaaaa-1111-4000-8000-000000000000".to_string(),
        "web".to_string(),
    )]
    .into();
    let line = |ev: serde_json::Value| event_line(&ev, &names, NOW);
    let at = NOW - 5_000;
    let l = line(
        json!({"kind": "vm.state", "vm": "aaaaaaaa-1111-4000-8000-000000000000", "at_ms": at,
        "data": {"id": "aaaaaaaa-1111-4000-8000-000000000000", "state": "stopped", "reason": "stop", "via": "destroy"}}),
    );
    assert!(
        l.ends_with("vm.state                VM web (aaaaaaaa) is stopped (stop, destroyed)"),
        "{l}"
    );
    assert!(l.starts_with(&time(at, NOW)));
    let l = line(
        json!({"kind": "vm.shared", "vm": "aaaaaaaa-1111-4000-8000-000000000000", "at_ms": at,
        "data": {"id": "aaaaaaaa-1111-4000-8000-000000000000", "user": "bob", "role": "user"}}),
    );
    assert!(l.ends_with("VM web (aaaaaaaa): bob is now user"), "{l}");
    let l = line(
        json!({"kind": "project.locked", "project": "lab", "at_ms": at, "data": {"project": "lab", "reason": "ttl"}}),
    );
    assert!(
        l.ends_with("project lab locked (its unlock time ran out)"),
        "{l}"
    );
    let l = line(
        json!({"kind": "vm.created", "vm": "eeeeeeee-1111-4000-8000-000000000000", "project": "lab", "at_ms": at,
        "data": {"id": "eeeeeeee-1111-4000-8000-000000000000", "name": "ci"}}),
    );
    assert!(
        l.ends_with("VM ci (eeeeeeee) created in project lab"),
        "{l}"
    );
    for kind in crate::service::EventKind::ALL {
        let l = line(json!({"kind": kind.as_str(), "at_ms": at, "data": {}}));
        assert!(!l.contains('{'), "{kind}: {l}");
    }
}
