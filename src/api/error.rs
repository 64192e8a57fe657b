//! Every failure becomes an `application/problem+json` answer here, and only here:
//! `status_and_code` is the one mapping from errors to HTTP statuses and stable codes.

use crate::service::{Denial, HypervisorError, KeyError, ServiceError, StoreError};
use hyper::StatusCode;
use serde::Serialize;

/// Errors of the API layer: its own parsing failures, or the service's.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON for this endpoint (unknown fields included).
    #[error("Invalid request body: {0}")]
    BadJson(String),
    /// A path or query parameter is malformed.
    #[error("{0}")]
    BadParam(String),
    /// The body exceeds `limits.max_body_bytes`.
    #[error("Request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive in time.
    #[error("Request body not received within the timeout")]
    BodyTimeout,
    /// No such route.
    #[error("No route for {0}")]
    NoRoute(String),
    /// The route exists with other methods.
    #[error("Method {method} not allowed here; allowed: {allow}")]
    Method {
        /// The method asked for.
        method: String,
        /// The methods the path takes, for the `Allow` header.
        allow: String,
    },
    /// The peer's uid has no user name.
    #[error("Peer uid {0} has no user name on this host")]
    UnknownPeer(u32),
    /// The `Vmwarden-User` header is not a valid user name.
    #[error("Header Vmwarden-User: {0}")]
    BadActingUser(String),
    /// The principal holds as many event streams as it may.
    #[error("You already hold {0} event streams; close one first")]
    TooManyStreams(usize),
    /// The service refused or failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The problem+json body (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the status.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened, for a person.
    pub detail: String,
    /// Stable machine code.
    pub code: &'static str,
}

/// The one mapping from an error to an HTTP status and a stable code.
pub fn status_and_code(e: &ApiError) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match e {
        ApiError::BadJson(_) => (S::BAD_REQUEST, "invalid_body"),
        ApiError::BadParam(_) => (S::BAD_REQUEST, "invalid_parameter"),
        ApiError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "body_too_large"),
        ApiError::BodyTimeout => (S::REQUEST_TIMEOUT, "body_timeout"),
        ApiError::NoRoute(_) => (S::NOT_FOUND, "no_route"),
        ApiError::Method { .. } => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ApiError::UnknownPeer(_) => (S::FORBIDDEN, "unregistered"),
        ApiError::BadActingUser(_) => (S::BAD_REQUEST, "invalid_parameter"),
        ApiError::TooManyStreams(_) => (S::TOO_MANY_REQUESTS, "too_many_streams"),
        ApiError::Service(s) => (service_status(s), s.code()),
    }
}

fn service_status(e: &ServiceError) -> StatusCode {
    use StatusCode as S;
    match e {
        ServiceError::Denied(d) => match d.denial {
            Denial::Unregistered
            | Denial::AdminRequired
            | Denial::OwnerRequired
            | Denial::RoleRequired
            | Denial::NotProjectMemberCaller
            | Denial::MemberRequired => S::FORBIDDEN,
            Denial::Hidden(_) => S::NOT_FOUND,
            Denial::TeamMismatch
            | Denial::ConfirmationRequired
            | Denial::MaxOwnersReached
            | Denial::NotProjectMember
            | Denial::LastOwner => S::CONFLICT,
        },
        ServiceError::Invalid(_) => S::BAD_REQUEST,
        ServiceError::NotFound(_) => S::NOT_FOUND,
        ServiceError::Conflict { .. } => S::CONFLICT,
        ServiceError::Locked(_) => S::CONFLICT,
        ServiceError::Share(k) => match k {
            KeyError::Malformed => S::BAD_REQUEST,
            KeyError::WrongSubmitter(..) => S::FORBIDDEN,
            KeyError::InvalidShare
            | KeyError::HalfAlreadyPending(..)
            | KeyError::SamePrincipal(_) => S::CONFLICT,
            KeyError::Locked { .. } => S::CONFLICT,
            KeyError::Unwrap(_) => S::INTERNAL_SERVER_ERROR,
        },
        ServiceError::SecretCorrupt(_) => S::INTERNAL_SERVER_ERROR,
        ServiceError::Hypervisor(h) => match h {
            HypervisorError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            HypervisorError::NoDomain
            | HypervisorError::AlreadyRunning
            | HypervisorError::DetachTimeout(_) => S::CONFLICT,
            HypervisorError::Failed(_) => S::BAD_GATEWAY,
            HypervisorError::Image(_) => S::INTERNAL_SERVER_ERROR,
            HypervisorError::NoSpace(_) => S::INSUFFICIENT_STORAGE,
        },
        ServiceError::Store(s) => match s {
            StoreError::Exists(_)
            | StoreError::Changed(_)
            | StoreError::Attached(_)
            | StoreError::Holdings { .. }
            | StoreError::Elsewhere(_)
            | StoreError::NotEmpty { .. } => S::CONFLICT,
            StoreError::Unavailable(_) => S::SERVICE_UNAVAILABLE,
            StoreError::NotFound | StoreError::Missing(..) => S::NOT_FOUND,
            StoreError::Full => S::INSUFFICIENT_STORAGE,
            StoreError::Sqlite(_)
            | StoreError::Postgres(_)
            | StoreError::Io(_)
            | StoreError::HostTaken(_)
            | StoreError::TooNew(..) => S::INTERNAL_SERVER_ERROR,
        },
        ServiceError::Task => S::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The problem body and the Retry-After seconds, if any.
    pub fn problem(&self) -> (Problem, Option<u32>) {
        let (status, code) = status_and_code(self);
        let retry = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(5);
        (
            Problem {
                kind: format!("https://vmwarden.invalid/problems/{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: self.to_string(),
                code,
            },
            retry,
        )
    }
}

/// Every (status, code) pair the mapping gives, for the document's tests.
#[cfg(test)]
pub(crate) fn every_status_and_code() -> Vec<(u16, &'static str)> {
    tests::table().into_iter().map(|(_, s, c)| (s, c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{DenialMsg, Hidden};
    use std::time::Duration;

    fn denied(d: Denial) -> ApiError {
        ApiError::Service(ServiceError::Denied(DenialMsg {
            denial: d,
            message: "x".into(),
        }))
    }

    /// One row per branch of `status_and_code` (and per conflict code).
    pub(crate) fn table() -> Vec<(ApiError, u16, &'static str)> {
        let svc = ApiError::Service;
        let hv = |h| ApiError::Service(ServiceError::Hypervisor(h));
        let share = |k| ApiError::Service(ServiceError::Share(k));
        let mut rows: Vec<(ApiError, u16, &'static str)> = vec![
            (ApiError::BadJson("x".into()), 400, "invalid_body"),
            (ApiError::BadParam("x".into()), 400, "invalid_parameter"),
            (ApiError::TooLarge(1), 413, "body_too_large"),
            (ApiError::BodyTimeout, 408, "body_timeout"),
            (ApiError::NoRoute("x".into()), 404, "no_route"),
            (
                ApiError::Method {
                    method: "x".into(),
                    allow: "GET".into(),
                },
                405,
                "method_not_allowed",
            ),
            (ApiError::UnknownPeer(7), 403, "unregistered"),
            (
                ApiError::BadActingUser("x".into()),
                400,
                "invalid_parameter",
            ),
            (ApiError::TooManyStreams(8), 429, "too_many_streams"),
            (denied(Denial::Unregistered), 403, "unregistered"),
            (denied(Denial::Hidden(Hidden::Vm)), 404, "vm_not_found"),
            (
                denied(Denial::Hidden(Hidden::Drive)),
                404,
                "drive_not_found",
            ),
            (
                denied(Denial::Hidden(Hidden::Project)),
                404,
                "project_not_found",
            ),
            (denied(Denial::Hidden(Hidden::User)), 404, "user_not_found"),
            (denied(Denial::AdminRequired), 403, "admin_required"),
            (denied(Denial::OwnerRequired), 403, "owner_required"),
            (denied(Denial::RoleRequired), 403, "role_required"),
            (
                denied(Denial::NotProjectMemberCaller),
                403,
                "not_project_member",
            ),
            (denied(Denial::MemberRequired), 403, "member_required"),
            (denied(Denial::TeamMismatch), 409, "team_mismatch"),
            (
                denied(Denial::ConfirmationRequired),
                409,
                "confirmation_required",
            ),
            (denied(Denial::MaxOwnersReached), 409, "max_owners_reached"),
            (denied(Denial::NotProjectMember), 409, "not_project_member"),
            (denied(Denial::LastOwner), 409, "last_owner"),
            (
                svc(ServiceError::Invalid("x".into())),
                400,
                "invalid_request",
            ),
            (svc(ServiceError::NotFound("x".into())), 404, "not_found"),
            (
                svc(ServiceError::Conflict {
                    code: crate::service::ConflictCode::NoDrive,
                    message: "x".into(),
                }),
                409,
                "no_drive",
            ),
            (svc(ServiceError::Locked("x".into())), 409, "project_locked"),
            (share(KeyError::Malformed), 400, "malformed_share"),
            (
                share(KeyError::WrongSubmitter("a", "b")),
                403,
                "wrong_submitter",
            ),
            (share(KeyError::InvalidShare), 409, "invalid_share"),
            (
                share(KeyError::HalfAlreadyPending("a", "b")),
                409,
                "half_already_pending",
            ),
            (
                share(KeyError::SamePrincipal("a".into())),
                409,
                "two_people_required",
            ),
            (
                share(KeyError::Locked {
                    project: "p".into(),
                    waiting: "w".into(),
                }),
                409,
                "project_locked",
            ),
            (
                share(KeyError::Unwrap("d".into())),
                500,
                "drive_secret_invalid",
            ),
            (
                svc(ServiceError::SecretCorrupt("x".into())),
                500,
                "drive_secret_invalid",
            ),
            (
                hv(HypervisorError::Unavailable("x".into())),
                503,
                "hypervisor_unavailable",
            ),
            (hv(HypervisorError::NoDomain), 409, "vm_not_running"),
            (hv(HypervisorError::AlreadyRunning), 409, "vm_running"),
            (
                hv(HypervisorError::DetachTimeout(Duration::from_secs(1))),
                409,
                "detach_timeout",
            ),
            (
                hv(HypervisorError::Failed("x".into())),
                502,
                "hypervisor_error",
            ),
            (hv(HypervisorError::Image("x".into())), 500, "image_error"),
            (
                hv(HypervisorError::NoSpace("x".into())),
                507,
                "insufficient_storage",
            ),
            (
                svc(ServiceError::Store(StoreError::Exists("x".into()))),
                409,
                "already_exists",
            ),
            (
                svc(ServiceError::Store(StoreError::NotFound)),
                404,
                "not_found",
            ),
            (
                svc(ServiceError::Store(StoreError::Missing("VM", "x".into()))),
                404,
                "not_found",
            ),
            (
                svc(ServiceError::Store(StoreError::Full)),
                507,
                "insufficient_storage",
            ),
            (
                svc(ServiceError::Store(StoreError::Changed("x".into()))),
                409,
                "changed_meanwhile",
            ),
            (
                svc(ServiceError::Store(StoreError::Attached("d".into()))),
                409,
                "drive_attached",
            ),
            (
                svc(ServiceError::Store(StoreError::Holdings {
                    user: "u".into(),
                    roles: 1,
                    drives: 0,
                })),
                409,
                "user_has_roles",
            ),
            (
                svc(ServiceError::Store(StoreError::NotEmpty {
                    project: "p".into(),
                    vms: 1,
                    drives: 0,
                })),
                409,
                "project_not_empty",
            ),
            (
                svc(ServiceError::Store(StoreError::TooNew(2, 1))),
                500,
                "store_error",
            ),
            (
                svc(ServiceError::Store(StoreError::HostTaken("h".into()))),
                500,
                "store_error",
            ),
            (
                svc(ServiceError::Store(StoreError::Unavailable("x".into()))),
                503,
                "store_unavailable",
            ),
            (
                svc(ServiceError::Store(StoreError::Elsewhere("h2".into()))),
                409,
                "vm_running_elsewhere",
            ),
            (svc(ServiceError::Task), 500, "internal"),
        ];
        for c in crate::service::ConflictCode::ALL {
            rows.push((
                svc(ServiceError::Conflict {
                    code: *c,
                    message: "x".into(),
                }),
                409,
                c.as_str(),
            ));
        }
        rows
    }

    #[test]
    fn every_error_maps_to_its_status_and_code() {
        for (e, status, code) in table() {
            let (s, c) = status_and_code(&e);
            assert_eq!((s.as_u16(), c), (status, code), "{e:?}");
        }
    }

    #[test]
    fn unavailable_carries_retry_after() {
        let e = ApiError::Service(ServiceError::Hypervisor(HypervisorError::Unavailable(
            "down".into(),
        )));
        let (p, retry) = e.problem();
        assert_eq!(p.status, 503);
        assert_eq!(retry, Some(5));
        assert!(p.detail.starts_with("Hypervisor unavailable"));
    }
}
