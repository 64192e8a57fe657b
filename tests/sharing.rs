//! The platform guide's sharing scenarios over the real socket, each as its own test.
//! Cast: alice, bob, carol (team lab) and dave (team far) are members of project "genomics";
//! erin (lab) is not. root is the admin.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

struct World {
    d: Daemon,
    c: Client,
    s: Shares,
    drive: String,
    vm: String,
}

async fn world(extra: &str) -> World {
    let w = Fixture::new(Opts {
        sharing: extra.into(),
        ..Default::default()
    })
    .users(&[
        ("alice", "lab"),
        ("bob", "lab"),
        ("carol", "lab"),
        ("dave", "far"),
        ("erin", "lab"),
    ])
    .project("genomics", &["alice", "bob", "carol", "dave"])
    .drive("alice", "genomics", "data")
    .vm("alice", "genomics", "web", &["data"])
    .build()
    .await;
    let (s, drive, vm) = (w.shares("genomics").clone(), w.drive("data"), w.vm("web"));
    let common::World { d, c, .. } = w;
    World { d, c, s, drive, vm }
}

async fn share(c: &Client, by: &str, vm: &str, to: &str, role: &str, confirm: bool) -> Resp {
    c.share(vm, by, to, role, confirm).await
}

fn raw_has(r: &Resp, needle: &str) -> bool {
    String::from_utf8_lossy(&r.raw).contains(needle)
}

#[test]
fn user_launches_a_shared_vm_which_boots_from_its_encrypted_drive() {
    rt().block_on(async {
        let w = world("").await;
        write_boot_sector(
            &w.d,
            &w.s,
            "genomics",
            &w.drive,
            &boot_sector("SHARED-BOOT", false),
        );
        // Before the share bob cannot see the VM; right after it he can (no re-login), also in
        // the list he fetched before (which the daemon caches until the store changes).
        assert_eq!(
            w.c.get(&format!("/v1/vms/{}", w.vm), "bob").await.status,
            404
        );
        assert!(w
            .c
            .get("/v1/vms", "bob")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(
            share(&w.c, "alice", &w.vm, "bob", "user", false)
                .await
                .status,
            200
        );
        let r = w.c.get("/v1/vms", "bob").await;
        assert_eq!(r.body.as_array().unwrap().len(), 1, "{r:?}");
        let r =
            w.c.req(
                "POST",
                &format!("/v1/vms/{}/start", w.vm),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!raw_has(&r, &w.drive));
        assert_eq!(w.c.get("/v1/vms", "bob").await.body[0]["state"], "running");
        assert!(wait_for_file_containing(
            &serial_log(&w.d, &w.vm),
            "SHARED-BOOT",
            Duration::from_secs(20)
        ));
        let r =
            w.c.req(
                "POST",
                &format!("/v1/vms/{}/stop", w.vm),
                Some("bob"),
                Some(json!({"force": true})),
            )
            .await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn user_cannot_see_or_touch_its_drives() {
    rt().block_on(async {
        let w = world("").await;
        let (c, vm, drv) = (&w.c, w.vm.as_str(), w.drive.as_str());
        assert_eq!(
            share(c, "alice", vm, "bob", "user", false).await.status,
            200
        );
        // Owners see the drives; the user's view has none, anywhere.
        assert!(raw_has(
            &c.get(&format!("/v1/vms/{vm}"), "alice").await,
            drv
        ));
        // Drive history on the VM: the audit log holds drive.detach and drive.attach rows.
        for m in ["DELETE", "PUT"] {
            let r = c
                .req(
                    m,
                    &format!("/v1/vms/{vm}/drives/{drv}"),
                    Some("alice"),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{r:?}");
        }
        let all = c.get(&format!("/v1/audit?vm={vm}"), "alice").await;
        assert!(
            raw_has(&all, drv),
            "the owner's audit view shows the drive rows"
        );
        for path in [
            format!("/v1/vms/{vm}"),
            "/v1/vms".into(),
            format!("/v1/vms/{vm}/members"),
            "/v1/drives".into(),
            "/v1/audit".into(),
            format!("/v1/audit?vm={vm}"),
            "/v1/me".into(),
        ] {
            let r = c.get(&path, "bob").await;
            assert_eq!(r.status, 200, "{path}: {r:?}");
            assert!(!raw_has(&r, drv), "{path} leaks the drive to a user: {r:?}");
            assert!(!raw_has(&r, "size_mib"), "{path} leaks drive details");
        }
        assert!(c
            .get(&format!("/v1/vms/{vm}"), "bob")
            .await
            .body
            .get("drives")
            .is_none());
        // Every drive operation answers as if the drive did not exist.
        let r = c.get(&format!("/v1/drives/{drv}"), "bob").await;
        assert_eq!((r.status, r.code()), (404, "drive_not_found"));
        let r = c
            .req("DELETE", &format!("/v1/drives/{drv}"), Some("bob"), None)
            .await;
        assert_eq!(r.status, 404);
        let r = c
            .req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (404, "drive_not_found"));
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (404, "drive_not_found"));
        // Nor can bob put the drive into a VM of his own.
        let mine = vm_of(c, "bob", "mine").await;
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{mine}/drives/{drv}"),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (404, "drive_not_found"));
    });
}

async fn vm_of(c: &Client, user: &str, name: &str) -> String {
    vm(c, user, "genomics", name, &[]).await
}

#[test]
fn user_reshares_within_the_team_but_not_across_teams() {
    rt().block_on(async {
        let w = world("").await;
        assert_eq!(
            share(&w.c, "alice", &w.vm, "bob", "user", false)
                .await
                .status,
            200
        );
        let r = share(&w.c, "bob", &w.vm, "carol", "user", false).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["users"], json!(["bob", "carol"]));
        let r = share(&w.c, "bob", &w.vm, "dave", "user", false).await;
        assert_eq!((r.status, r.code()), (409, "team_mismatch"));
        let r = share(&w.c, "alice", &w.vm, "dave", "user", false).await;
        assert_eq!((r.status, r.code()), (409, "team_mismatch"));
        // Same team but outside the project.
        let r = share(&w.c, "alice", &w.vm, "erin", "user", false).await;
        assert_eq!((r.status, r.code()), (409, "not_project_member"));
        // A user removes itself; not others.
        let r =
            w.c.req(
                "DELETE",
                &format!("/v1/vms/{}/members/bob", w.vm),
                Some("carol"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (403, "owner_required"));
        let r =
            w.c.req(
                "DELETE",
                &format!("/v1/vms/{}/members/carol", w.vm),
                Some("carol"),
                None,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            w.c.get(&format!("/v1/vms/{}", w.vm), "carol").await.status,
            404
        );
    });
}

#[test]
fn user_cannot_grant_owner() {
    rt().block_on(async {
        let w = world("").await;
        assert_eq!(
            share(&w.c, "alice", &w.vm, "bob", "user", false)
                .await
                .status,
            200
        );
        let r = share(&w.c, "bob", &w.vm, "carol", "owner", true).await;
        assert_eq!((r.status, r.code()), (403, "owner_required"));
        let r = share(&w.c, "bob", &w.vm, "bob", "owner", true).await;
        assert_eq!((r.status, r.code()), (403, "owner_required"));
        let m = w.c.get(&format!("/v1/vms/{}/members", w.vm), "alice").await;
        assert_eq!(m.body["owners"], json!(["alice"]));
    });
}

#[test]
fn coownership_needs_confirmation_and_a_third_owner_is_refused() {
    rt().block_on(async {
        let w = world("max_owners = 2").await;
        let r = share(&w.c, "alice", &w.vm, "bob", "owner", false).await;
        assert_eq!((r.status, r.code()), (409, "confirmation_required"));
        let r = share(&w.c, "alice", &w.vm, "bob", "owner", true).await;
        assert_eq!(
            (r.status, r.body["change"].as_str()),
            (200, Some("created")),
            "{r:?}"
        );
        assert_eq!(r.body["owners"], json!(["alice", "bob"]));
        // Idempotent.
        let r = share(&w.c, "alice", &w.vm, "bob", "owner", true).await;
        assert_eq!(r.body["change"], "unchanged");
        // Rule 7: bob now owns the drive and sees it.
        assert!(raw_has(
            &w.c.get(&format!("/v1/drives/{}", w.drive), "bob").await,
            &w.drive
        ));
        let r = share(&w.c, "alice", &w.vm, "carol", "owner", true).await;
        assert_eq!((r.status, r.code()), (409, "max_owners_reached"));
        // Revoking ownership takes the drive away again.
        let r = share(&w.c, "alice", &w.vm, "bob", "user", false).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            w.c.get(&format!("/v1/drives/{}", w.drive), "bob")
                .await
                .status,
            404
        );
        // The last owner stays.
        let r =
            w.c.req(
                "DELETE",
                &format!("/v1/vms/{}/members/alice", w.vm),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!((r.status, r.code()), (409, "last_owner"));
    });
}

#[test]
fn coowner_takes_a_drive_into_their_own_vm_and_the_original_refuses_to_start() {
    rt().block_on(async {
        let w = world("").await;
        let (c, vm, drv) = (&w.c, w.vm.as_str(), w.drive.as_str());
        assert_eq!(
            share(c, "alice", vm, "bob", "owner", true).await.status,
            200
        );
        let own = vm_of(c, "bob", "bobs").await;
        let r = c
            .req(
                "DELETE",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{own}/drives/{drv}"),
                Some("bob"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        // alice no longer owns it; the original VM has no drive and refuses to start.
        assert_eq!(
            c.get(&format!("/v1/drives/{drv}"), "alice").await.status,
            404
        );
        let r = c.start(vm, "alice").await;
        assert_eq!((r.status, r.code()), (409, "no_drive"));
        // Audited, and visible to the other owner in the audit and members views.
        let r = c.get(&format!("/v1/audit?vm={vm}"), "alice").await;
        let rows = r.body.as_array().unwrap();
        assert!(
            rows.iter().any(|e| e["action"] == "drive.detach"
                && e["actor"] == "bob"
                && e["target"] == drv),
            "{r:?}"
        );
        let m = c.get(&format!("/v1/vms/{vm}/members"), "alice").await;
        assert_eq!(m.body["owners"], json!(["alice", "bob"]));
        let r = c.get(&format!("/v1/audit?vm={own}"), "root").await;
        assert!(r
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "drive.attach" && e["actor"] == "bob"));
        // A drive in use elsewhere cannot be attached by its former owner.
        let r = c
            .req(
                "PUT",
                &format!("/v1/vms/{vm}/drives/{drv}"),
                Some("alice"),
                None,
            )
            .await;
        assert_eq!(r.status, 404);
    });
}

/// DESIGN 3, member removal: an owner is refused (409 `member_owns`, naming what they
/// own) unless forced; forced, what they alone owned goes to `transfer_to`, they lose sight
/// at once, and the running VM is not touched. Re-adding them gives nothing back.
#[test]
fn owner_removed_from_the_project_hands_over_and_loses_sight() {
    rt().block_on(async {
        let w = world("").await;
        let (c, vm) = (&w.c, w.vm.as_str());
        assert_eq!(c.start(vm, "alice").await.status, 200);
        assert_eq!(
            share(c, "alice", vm, "carol", "user", false).await.status,
            200
        );
        let remove = |q: &str| {
            let path = format!("/v1/projects/genomics/members/alice{q}");
            async move { c.req("DELETE", &path, Some("root"), None).await }
        };
        let r = remove("").await;
        assert_eq!((r.status, r.code()), (409, "member_owns"), "{r:?}");
        assert!(raw_has(&r, vm) && raw_has(&r, &w.drive), "{r:?}");
        let r = remove("?force=true").await;
        assert_eq!((r.status, r.code()), (409, "member_owns"), "{r:?}");
        let r = remove("?force=true&transfer_to=alice").await;
        assert_eq!(
            (r.status, r.code()),
            (409, "member_owns"),
            "to themselves: {r:?}"
        );
        let r = remove("?force=true&transfer_to=dave").await;
        assert_eq!((r.status, r.code()), (409, "team_mismatch"), "{r:?}");
        let r = remove("?force=true&transfer_to=erin").await;
        assert_eq!((r.status, r.code()), (409, "not_project_member"), "{r:?}");
        // Nothing changed through the refusals.
        assert_eq!(c.get(&format!("/v1/vms/{vm}"), "alice").await.status, 200);
        let r = remove("?force=true&transfer_to=carol").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(c.get(&format!("/v1/vms/{vm}"), "alice").await.status, 404);
        for path in ["/v1/vms", "/v1/drives"] {
            assert!(c
                .get(path, "alice")
                .await
                .body
                .as_array()
                .unwrap()
                .is_empty());
        }
        assert_eq!(
            c.req("POST", &format!("/v1/vms/{vm}/stop"), Some("alice"), None)
                .await
                .status,
            404
        );
        let m = c.get(&format!("/v1/vms/{vm}/members"), "carol").await;
        assert_eq!(m.body["owners"], json!(["carol"]), "{m:?}");
        assert_eq!(
            c.get(&format!("/v1/drives/{}", w.drive), "carol")
                .await
                .status,
            200
        );
        // The running VM is not touched.
        assert!(domain_running(vm));
        // Back in the project: no role comes back.
        c.req(
            "PUT",
            "/v1/projects/genomics/members/alice",
            Some("root"),
            None,
        )
        .await;
        assert_eq!(c.get(&format!("/v1/vms/{vm}"), "alice").await.status, 404);
        let audit = c.get(&format!("/v1/audit?vm={vm}"), "carol").await;
        assert!(raw_has(&audit, "vm.start"), "{audit:?}");
    });
}

#[test]
fn admin_cannot_start_or_see_drives_of_a_vm_in_a_project_they_are_not_in() {
    rt().block_on(async {
        let d = Daemon::start(Opts::default());
        let c = d.client();
        users(&c, &[("alice", "lab")]).await;
        let s = project(&c, "secret", &["alice"]).await;
        unlock(&c, "secret", &s, "alice").await;
        let drv = drive(&c, "alice", "secret", "data").await;
        let vm = vm(&c, "alice", "secret", "web", &[&drv]).await;
        for (m, p) in [
            ("GET", format!("/v1/vms/{vm}")),
            ("POST", format!("/v1/vms/{vm}/start")),
            ("GET", format!("/v1/vms/{vm}/members")),
            ("GET", format!("/v1/drives/{drv}")),
            ("PUT", format!("/v1/vms/{vm}/members/root")),
        ] {
            let body = (m == "PUT").then(|| json!({"role": "owner", "confirm_drive_access": true}));
            let r = c.req(m, &p, Some("root"), body).await;
            assert_eq!(r.status, 404, "{m} {p}: {r:?}");
        }
        assert!(!domain_running(&vm));
        assert!(c
            .get("/v1/vms", "root")
            .await
            .body
            .as_array()
            .unwrap()
            .is_empty());
        // The host inventory shows the VM, without drive details; the admin may stop it.
        let r = c.get("/v1/host/vms", "root").await;
        assert_eq!(r.body.as_array().unwrap().len(), 1);
        assert!(!raw_has(&r, &drv) && !raw_has(&r, "drives"), "{r:?}");
        assert_eq!(c.start(&vm, "alice").await.status, 200);
        let r = c
            .req(
                "POST",
                &format!("/v1/host/vms/{vm}/stop"),
                Some("root"),
                Some(json!({"force": true})),
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!domain_running(&vm));
        let r = c.get(&format!("/v1/vms/{vm}"), "alice").await;
        assert_eq!(
            (r.body["state"].as_str(), r.body["state_reason"].as_str()),
            (Some("stopped"), Some("admin"))
        );
        let r = c.get(&format!("/v1/audit?vm={vm}"), "root").await;
        assert!(r
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "host.stop"
                && e["detail"].as_str().unwrap().contains("reason=admin")));
    });
}
