//! Errors of the service layer, their stable codes, and the words of each refusal.

use super::*;

codes! {
    /// The stable codes of state and rule conflicts (409).
    ConflictCode {
        /// The VM runs (start, delete).
        VmRunning = "vm_running",
        /// A stop is in progress.
        VmStopping = "vm_stopping",
        /// The VM has no drive to start from.
        NoDrive = "no_drive",
        /// The drive is attached to a VM.
        DriveAttached = "drive_attached",
        /// The drive belongs to another project.
        ProjectMismatch = "project_mismatch",
        /// The user holds roles or drives.
        UserHasRoles = "user_has_roles",
        /// The project still holds VMs or drives.
        ProjectNotEmpty = "project_not_empty",
        /// The member owns VMs or drives in the project.
        MemberOwns = "member_owns",
        /// Another change interfered; nothing was written.
        ChangedMeanwhile = "changed_meanwhile",
        /// A name or id prefix names more than one object the caller sees.
        Ambiguous = "ambiguous",
        /// An idle timeout outside the host's bounds.
        IdleOutOfBounds = "idle_out_of_bounds",
        /// Owners may not disable idle shutdown on this host.
        IdleRequired = "idle_required",
        /// The caller has no team, so cannot own a VM.
        NoTeam = "no_team",
        /// The name belongs to the daemon.
        NameReserved = "name_reserved",
        /// This host is not enrolled, so it may not receive key material (fleet).
        HostNotEnrolled = "host_not_enrolled",
        /// The fingerprint does not match the key the host published (fleet).
        FingerprintMismatch = "fingerprint_mismatch",
        /// The host heartbeats: only a host that is down may be fenced (fleet).
        HostUp = "host_up",
        /// The operation needs a fleet (`[store] url` on PostgreSQL).
        NotAFleet = "not_a_fleet",
    }
}

/// Errors of the service layer; the API maps each to one status in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Refused by policy.
    #[error("{0}")]
    Denied(DenialMsg),
    /// Bad input that parsing could not catch (ranges, references).
    #[error("{0}")]
    Invalid(String),
    /// The object does not exist (or is hidden).
    #[error("{0}")]
    NotFound(String),
    /// A rule or state conflict with a stable code.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: ConflictCode,
        /// What happened.
        message: String,
    },
    /// The project key is not unlocked.
    #[error("{0}")]
    Locked(String),
    /// A share was refused.
    #[error("{0}")]
    Share(KeyError),
    /// A wrapped passphrase failed authentication.
    #[error("{0}")]
    SecretCorrupt(String),
    /// libvirt or the image tool failed.
    #[error("{0}")]
    Hypervisor(#[from] HypervisorError),
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("Internal task failed")]
    Task,
}

impl ServiceError {
    /// The stable API code of this error (also the `<code>` of `denied:`/`failed:` audit
    /// outcomes).
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Denied(d) => d.denial.code(),
            ServiceError::Invalid(_) => "invalid_request",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Conflict { code, .. } => code.as_str(),
            ServiceError::Locked(_) => "project_locked",
            ServiceError::Share(k) => k.code(),
            ServiceError::SecretCorrupt(_) => "drive_secret_invalid",
            ServiceError::Hypervisor(h) => match h {
                HypervisorError::Unavailable(_) => "hypervisor_unavailable",
                HypervisorError::NoDomain => "vm_not_running",
                HypervisorError::AlreadyRunning => "vm_running",
                HypervisorError::DetachTimeout(_) => "detach_timeout",
                HypervisorError::Failed(_) => "hypervisor_error",
                HypervisorError::Image(_) => "image_error",
                HypervisorError::NoSpace(_) => "insufficient_storage",
            },
            ServiceError::Store(s) => match s {
                StoreError::Exists(_) => "already_exists",
                StoreError::NotFound | StoreError::Missing(..) => "not_found",
                StoreError::Full => "insufficient_storage",
                StoreError::Changed(_) => "changed_meanwhile",
                StoreError::Attached(_) => "drive_attached",
                StoreError::Holdings { .. } => "user_has_roles",
                StoreError::NotEmpty { .. } => "project_not_empty",
                StoreError::Elsewhere(_) => "vm_running_elsewhere",
                StoreError::Unavailable(_) => "store_unavailable",
                StoreError::Sqlite(_)
                | StoreError::Postgres(_)
                | StoreError::Io(_)
                | StoreError::HostTaken(_)
                | StoreError::TooNew(..) => "store_error",
            },
            ServiceError::Task => "internal",
        }
    }

    /// The audit outcome of an attempt that failed with this error.
    pub(super) fn outcome(&self) -> String {
        match self {
            ServiceError::Denied(_) | ServiceError::Share(_) => format!("denied:{}", self.code()),
            _ => format!("failed:{}", self.code()),
        }
    }
}

/// A policy denial with the message shown to the caller.
#[derive(Debug)]
pub struct DenialMsg {
    /// The reason.
    pub denial: Denial,
    /// Caller-facing text.
    pub message: String,
}

impl std::fmt::Display for DenialMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub(super) fn deny(d: Denial, what: &str) -> ServiceError {
    use policy::Hidden;
    let message = match d {
        Denial::Unregistered => "You are not a registered vmwarden user".into(),
        Denial::Hidden(Hidden::Vm) => format!("VM {what} not found"),
        Denial::Hidden(Hidden::Drive) => format!("Drive {what} not found"),
        Denial::Hidden(Hidden::Project) => format!("Project {what} not found"),
        Denial::Hidden(Hidden::User) => format!("User {what} not found"),
        Denial::AdminRequired => "Only admins may do this".into(),
        Denial::OwnerRequired => format!("Only owners of VM {what} may do this"),
        Denial::RoleRequired => format!("You hold no role on VM {what}"),
        Denial::NotProjectMemberCaller => format!("You are not a member of project {what}"),
        Denial::MemberRequired => {
            format!("The member share must come from a member of project {what}")
        }
        Denial::TeamMismatch => "Sharer and target must both be in the VM's team".into(),
        Denial::ConfirmationRequired => {
            "Co-ownership hands over the VM's drives: set confirm_drive_access to true".into()
        }
        Denial::MaxOwnersReached => format!("VM {what} already has the most owners allowed"),
        Denial::NotProjectMember => {
            format!("The target is not a member of the VM's project {what}")
        }
        Denial::LastOwner => format!("VM {what} must keep at least one owner"),
    };
    ServiceError::Denied(DenialMsg { denial: d, message })
}

pub(super) fn conflict(code: ConflictCode, message: String) -> ServiceError {
    ServiceError::Conflict { code, message }
}

/// The refusal of a principal that is neither registered nor an admin.
pub fn unregistered(name: &UserName) -> ServiceError {
    ServiceError::Denied(DenialMsg {
        denial: Denial::Unregistered,
        message: format!("{name} is not a registered vmwarden user"),
    })
}

pub(super) fn holdings_conflict(e: ServiceError, what: &str) -> ServiceError {
    match e {
        ServiceError::Store(StoreError::Holdings {
            user,
            roles,
            drives,
        }) => conflict(ConflictCode::UserHasRoles,
            format!(
                "Cannot {what} user {user}: they hold {roles} VM roles and {drives} drives; unshare and hand them over first"
            ),
        ),
        e => e,
    }
}

/// The refusal of a share or unshare, in words that name what is wrong. A target outside
/// the caller's team is named with the caller's own team only (the VM's, which every role
/// holder is in): never the target's team, which the caller may not know.
pub(super) fn role_denial(
    d: Denial,
    target: &UserName,
    vm: &Vm,
    max_owners: usize,
) -> ServiceError {
    let message = match d {
        Denial::TeamMismatch => format!("{target} is not in your team {}", vm.team),
        Denial::NotProjectMember => {
            format!("{target} is not a member of project {}", vm.project)
        }
        Denial::MaxOwnersReached => format!(
            "VM {} ({}) already has {max_owners} owners, the most sharing.max_owners allows",
            vm.name, vm.id
        ),
        Denial::ConfirmationRequired => format!(
            "Co-ownership of VM {} hands over its drives to {target}: confirm with confirm_drive_access",
            vm.name
        ),
        Denial::LastOwner => format!(
            "{target} is the last owner of VM {}: make someone else owner first",
            vm.name
        ),
        Denial::OwnerRequired => format!("Only owners of VM {} may do this", vm.name),
        other => return deny(other, &vm.id.to_string()),
    };
    ServiceError::Denied(DenialMsg { denial: d, message })
}

pub(super) fn stopping_conflict(id: VmId) -> ServiceError {
    conflict(
        ConflictCode::VmStopping,
        format!("VM {id} is stopping; start it again once it has stopped"),
    )
}
