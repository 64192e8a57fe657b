//! What to do about each problem, in the command line's terms: one sentence per problem
//! code, added to (or, where the daemon's words name API fields, in place of) the daemon's
//! detail. The daemon's detail already names the VM, the team (the VM's own, never another
//! user's), the limit or the project concerned.

/// How a code's sentence combines with the daemon's detail.
#[derive(Debug, Clone, Copy)]
pub enum Advice {
    /// The detail, then this sentence.
    Then(&'static str),
    /// This sentence instead of the detail (which speaks of API fields).
    Instead(&'static str),
}

use Advice::{Instead, Then};

/// Every problem code the daemon answers, with its sentence.
pub const ADVICE: &[(&str, Advice)] = &[
    ("invalid_parameter", Then("Check the names and values you gave (vmwarden <command> --help).")),
    ("invalid_body", Then("Check the values you gave (vmwarden <command> --help).")),
    ("body_timeout", Then("The request did not arrive in time; try again.")),
    ("body_too_large", Then("Send less at once.")),
    ("no_route", Then("This vmwarden and the daemon differ in version; update one of them.")),
    ("method_not_allowed", Then("This vmwarden and the daemon differ in version; update one of them.")),
    ("unregistered", Then("Ask an admin to register you: vmwarden user put <you> --team <team>.")),
    ("admin_required", Then("Ask an admin (root or a user in [access] admins) to do it.")),
    ("owner_required", Then("Ask one of the VM's owners (vmwarden vm members <vm>).")),
    ("role_required", Then("Ask an owner to share the VM with you: vmwarden vm share <vm> <you>.")),
    ("not_project_member", Then("An admin adds members: vmwarden project add-member <project> <user>.")),
    ("member_required", Then("The member share must be submitted by a member of the project.")),
    ("team_mismatch", Then("A VM is shared only within its team.")),
    ("confirmation_required", Instead("Making someone an owner hands over the VM's drives: run again with --confirm-drive-access.")),
    ("max_owners_reached", Then("Remove an owner first (vmwarden vm unshare <vm> <user>), or share with --role user.")),
    ("last_owner", Then("Make someone else an owner first: vmwarden vm share <vm> <user> --role owner --confirm-drive-access.")),
    ("invalid_request", Then("Stay within this host's limits (vmwarden status shows the daemon; the admin sets [limits]).")),
    ("not_found", Then("It may have been removed meanwhile; list what you can see (vmwarden vm list, drive list).")),
    ("vm_not_found", Then("List the VMs you hold a role on: vmwarden vm list.")),
    ("drive_not_found", Then("List the drives you own: vmwarden drive list.")),
    ("project_not_found", Then("List the projects you are a member of: vmwarden project list.")),
    ("user_not_found", Then("Register the user first: vmwarden user put <user> --team <team>.")),
    ("vm_running", Then("Stop it first: vmwarden vm stop <vm>.")),
    ("vm_stopping", Then("Wait until it has stopped (vmwarden events --vm <vm>), then try again.")),
    ("vm_not_running", Then("Start it first: vmwarden vm start <vm>.")),
    ("no_drive", Then("An owner attaches one: vmwarden vm attach <vm> <drive>.")),
    ("drive_attached", Then("Detach it first: vmwarden vm detach <vm> <drive>.")),
    ("project_mismatch", Then("A VM takes drives of its own project only.")),
    ("user_has_roles", Then("Unshare their VMs and hand their drives over first (vmwarden project remove-member <project> <user> --force --transfer-to <member>).")),
    ("project_not_empty", Then("Delete its VMs and drives first (vmwarden vm delete, drive delete).")),
    ("member_owns", Then("Run again with --force --transfer-to <member> to hand over what they own.")),
    ("changed_meanwhile", Then("Something else changed it at the same time; try again.")),
    ("ambiguous", Then("Give a longer id prefix, or narrow the name with --project.")),
    ("idle_out_of_bounds", Then("Choose an --idle-after within those bounds.")),
    ("idle_required", Then("Leave idle shutdown on, or ask the host's admin to set [idle] owners_may_disable.")),
    ("no_team", Then("Register yourself with a team first: vmwarden user put <you> --team <team>.")),
    ("name_reserved", Then("Choose another name.")),
    ("already_exists", Then("Choose another name, or use the one that exists.")),
    ("project_locked", Then("Unlock it: an admin and a member each run vmwarden project unlock <project> --share-file <file>.")),
    ("malformed_share", Instead("That is not a share: give the file vmwarden project create or resplit wrote (it starts with vmw-admin- or vmw-member-).")),
    ("wrong_submitter", Then("The admin share is submitted by an admin, the member share by a project member.")),
    ("invalid_share", Then("The two shares do not belong together: use the pair from the same create or resplit.")),
    ("half_already_pending", Then("That half is already in; the other half must come from someone else.")),
    ("two_people_required", Then("The other half must come from another person.")),
    ("drive_secret_invalid", Then("A drive's stored passphrase is damaged: see the daemon's log (journalctl -u vmwarden).")),
    ("hypervisor_unavailable", Then("Is libvirtd running? Check with: virsh -c qemu:///system version; then try again.")),
    ("hypervisor_error", Then("The daemon's log has libvirt's own message (journalctl -u vmwarden).")),
    ("detach_timeout", Then("The guest did not let the drive go: stop the VM (vmwarden vm stop <vm>), then detach.")),
    ("image_error", Then("The daemon's log has qemu-img's own message (journalctl -u vmwarden).")),
    ("insufficient_storage", Then("Free space in the daemon's state directory, then try again.")),
    ("store_error", Then("See the daemon's log (journalctl -u vmwarden).")),
    ("store_unavailable", Then("The fleet's database is unreachable; nothing was changed. Try again shortly, or check PostgreSQL.")),
    ("vm_running_elsewhere", Then("Run this on the host the message names (its agent holds the VM), or stop the VM there first.")),
    ("host_not_enrolled", Then("Ask an admin to compare this host's fingerprint and run vmwarden fleet enroll HOST FINGERPRINT.")),
    ("fingerprint_mismatch", Then("Read the fingerprint on the host itself (its agent logs it at start) and compare it with vmwarden fleet hosts.")),
    ("host_up", Then("Only a host that is down and powered off may be fenced; power it off, wait until vmwarden fleet hosts shows it down, then fence it.")),
    ("not_a_fleet", Then("This agent uses SQLite: there is no fleet to manage ([store] url names a PostgreSQL database).")),
    ("internal", Then("See the daemon's log (journalctl -u vmwarden).")),
    ("too_many_streams", Then("Close one of your other vmwarden events first.")),
    ("too_many_connections", Then("Close some of your other connections to vmwarden, then try again.")),
    ("undeclared", Then("This is a bug in vmwardend; please report it with this message.")),
];

/// The message for a problem: the daemon's detail and what to do, in CLI terms.
pub fn explain(code: &str, detail: &str) -> String {
    let detail = detail.trim_end_matches('.');
    match ADVICE.iter().find(|(c, _)| *c == code) {
        Some((_, Then(s))) => format!("{detail}. {s}"),
        Some((_, Instead(s))) => (*s).to_owned(),
        None => format!("{detail}."),
    }
}

/// The message when the socket cannot be reached.
pub fn unreachable(socket: &std::path::Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "vmwardend is not listening on {}: start it (systemctl start vmwarden), or point \
             --socket or VMWARDEN_SOCKET at the socket it uses.",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "You may not connect to {}: ask an admin to add you to the socket's group \
             (vmwarden by default), then log in again.",
            socket.display()
        ),
        _ => format!("Cannot connect to {}: {e}.", socket.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code any operation of the document may answer has exactly one sentence, and
    /// each sentence is a sentence.
    #[test]
    fn every_code_has_one_sentence() {
        let mut codes: Vec<&str> = crate::api::openapi::SPECS
            .iter()
            .flat_map(|s| s.problems.iter().flat_map(|g| g.iter().map(|(_, c)| *c)))
            .collect();
        codes.extend(["no_route", "method_not_allowed", "undeclared"]);
        codes.sort_unstable();
        codes.dedup();
        for code in &codes {
            let n = ADVICE.iter().filter(|(c, _)| c == code).count();
            assert_eq!(n, 1, "{code} has {n} sentences");
        }
        for (code, a) in ADVICE {
            assert!(codes.contains(code), "{code} is answered by no operation");
            let s = match a {
                Then(s) | Instead(s) => s,
            };
            assert!(
                s.starts_with(|c: char| c.is_uppercase()) && s.ends_with('.'),
                "{code}: {s}"
            );
            let out = explain(code, "The detail");
            assert!(out.contains(s), "{code}: {out}");
        }
    }

    #[test]
    fn api_words_are_replaced_by_flags() {
        let out = explain(
            "confirmation_required",
            "Co-ownership hands over the VM's drives: set confirm_drive_access to true",
        );
        assert!(out.contains("--confirm-drive-access") && !out.contains("confirm_drive_access"));
        assert_eq!(
            explain("vm_running", "VM web is running."),
            "VM web is running. Stop it first: vmwarden vm stop <vm>."
        );
        assert_eq!(explain("no_such_code", "Odd"), "Odd.");
    }
}
