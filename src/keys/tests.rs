//! The unlock state machine as a table, shares, wrapping and redaction.

use super::*;

fn p() -> ProjectName {
    ProjectName::parse("genomics").unwrap()
}
fn admin() -> Submitter {
    Submitter {
        name: UserName::parse("root").unwrap(),
        admin: true,
        member: false,
    }
}
fn member(n: &str) -> Submitter {
    Submitter {
        name: UserName::parse(n).unwrap(),
        admin: false,
        member: true,
    }
}

const W: Duration = Duration::from_secs(600);
const TTL: Duration = Duration::from_secs(3600);

struct Fixture {
    ring: Keyring,
    ver: Vec<u8>,
    a: SecretBytes,
    m: SecretBytes,
    t0: Instant,
}

fn fixture() -> Fixture {
    let nk = generate();
    Fixture {
        ring: Keyring::new(),
        ver: verifier(&nk.key, &p()),
        a: nk.admin_share,
        m: nk.member_share,
        t0: Instant::now(),
    }
}

impl Fixture {
    fn submit(
        &self,
        tok: &SecretBytes,
        who: &Submitter,
        at: u64,
    ) -> Result<UnlockOutcome, KeyError> {
        let t = self.ring.evaluate(
            &p(),
            Verifiers {
                current: &self.ver,
                staged: None,
            },
            tok.expose(),
            who,
            W,
            TTL,
            self.t0 + Duration::from_secs(at),
        );
        self.ring.apply(t)
    }
    fn locked(&self, at: u64) -> bool {
        self.ring
            .status(&p(), self.t0 + Duration::from_secs(at))
            .locked
    }
}

/// One row per scenario: steps of (which share, who, seconds after start, expected).
#[test]
fn unlock_state_machine_table() {
    use UnlockOutcome::*;
    #[derive(Clone, Copy)]
    enum S {
        A,
        M,
        Bad,
    }
    #[derive(Clone, Copy)]
    enum Who {
        Admin,
        Alice,
        Bob,
    }
    type Exp = Result<UnlockOutcome, &'static str>;
    type Row = (&'static str, Vec<(S, Who, u64, Exp)>, bool);
    let rows: Vec<Row> = vec![
        (
            "admin then member",
            vec![
                (S::A, Who::Admin, 0, Ok(Pending)),
                (S::M, Who::Alice, 5, Ok(Unlocked)),
            ],
            false,
        ),
        (
            "member then admin",
            vec![
                (S::M, Who::Alice, 0, Ok(Pending)),
                (S::A, Who::Admin, 5, Ok(Unlocked)),
            ],
            false,
        ),
        (
            "window expired",
            vec![
                (S::A, Who::Admin, 0, Ok(Pending)),
                (S::M, Who::Alice, 601, Ok(Pending)),
            ],
            true,
        ),
        (
            "wrong share",
            vec![
                (S::A, Who::Admin, 0, Ok(Pending)),
                (S::Bad, Who::Alice, 1, Err("invalid")),
                (S::M, Who::Alice, 2, Ok(Pending)),
            ],
            true,
        ),
        (
            "same half twice",
            vec![
                (S::A, Who::Admin, 0, Ok(Pending)),
                (S::A, Who::Admin, 1, Err("already")),
                (S::M, Who::Alice, 2, Ok(Unlocked)),
            ],
            false,
        ),
        (
            "member half twice by two members",
            vec![
                (S::M, Who::Alice, 0, Ok(Pending)),
                (S::M, Who::Bob, 1, Err("already")),
            ],
            true,
        ),
        (
            "member share from admin who is no member",
            vec![(S::M, Who::Admin, 0, Err("submitter"))],
            true,
        ),
        (
            "admin share from a member",
            vec![(S::A, Who::Alice, 0, Err("submitter"))],
            true,
        ),
        (
            "again after unlock",
            vec![
                (S::A, Who::Admin, 0, Ok(Pending)),
                (S::M, Who::Alice, 1, Ok(Unlocked)),
                (S::A, Who::Admin, 2, Ok(AlreadyUnlocked)),
            ],
            false,
        ),
    ];
    for (name, steps, locked_after) in rows {
        let f = fixture();
        let bad = generate().member_share;
        let mut last = 0;
        for (i, (s, who, at, exp)) in steps.into_iter().enumerate() {
            let tok = match s {
                S::A => &f.a,
                S::M => &f.m,
                S::Bad => &bad,
            };
            let who = match who {
                Who::Admin => admin(),
                Who::Alice => member("alice"),
                Who::Bob => member("bob"),
            };
            let got = f.submit(tok, &who, at);
            match (exp, &got) {
                (Ok(e), Ok(g)) => assert_eq!(e, *g, "{name}: step {i}"),
                (Err("invalid"), Err(KeyError::InvalidShare)) => {}
                (Err("already"), Err(KeyError::HalfAlreadyPending(..))) => {}
                (Err("submitter"), Err(KeyError::WrongSubmitter(..))) => {}
                (e, g) => panic!("{name}: step {i}: expected {e:?}, got {g:?}"),
            }
            last = at;
        }
        assert_eq!(f.locked(last), locked_after, "{name}");
    }
}

#[test]
fn one_person_holding_both_shares_cannot_unlock() {
    let f = fixture();
    let both = Submitter {
        name: UserName::parse("carol").unwrap(),
        admin: true,
        member: true,
    };
    assert_eq!(f.submit(&f.a, &both, 0), Ok(UnlockOutcome::Pending));
    assert!(matches!(
        f.submit(&f.m, &both, 1),
        Err(KeyError::SamePrincipal(_))
    ));
    assert!(f.locked(1));
    // The pending half survives the refusal, so a second person can still finish.
    assert_eq!(
        f.submit(&f.m, &member("alice"), 2),
        Ok(UnlockOutcome::Unlocked)
    );
}

#[test]
fn lock_during_pending_discards_the_half() {
    let f = fixture();
    f.submit(&f.a, &admin(), 0).unwrap();
    assert!(f.ring.lock(&p()));
    assert_eq!(
        f.submit(&f.m, &member("alice"), 1),
        Ok(UnlockOutcome::Pending)
    );
    let st = f.ring.status(&p(), f.t0 + Duration::from_secs(1));
    assert_eq!(st.waiting_for, vec![Half::Admin]);
}

#[test]
fn ttl_expiry_locks_again() {
    let f = fixture();
    f.submit(&f.a, &admin(), 0).unwrap();
    f.submit(&f.m, &member("alice"), 1).unwrap();
    assert!(!f.locked(3600));
    assert!(f.locked(3601));
    let err = f
        .ring
        .with_key(&p(), f.t0 + Duration::from_secs(3602), |_| ())
        .unwrap_err();
    assert!(err.to_string().contains("admin share"), "{err}");
}

#[test]
fn restart_leaves_project_locked() {
    let f = fixture();
    f.submit(&f.a, &admin(), 0).unwrap();
    f.submit(&f.m, &member("alice"), 1).unwrap();
    // A restart is a new, empty keyring; the verifier alone opens nothing.
    let after_restart = Keyring::new();
    assert!(after_restart.status(&p(), f.t0).locked);
    assert!(after_restart.with_key(&p(), f.t0, |_| ()).is_err());
}

#[test]
fn misplaced_and_malformed_shares() {
    assert_eq!(parse_share(b"hello").unwrap_err(), KeyError::Malformed);
    assert_eq!(
        parse_share(b"vmw-admin-AAAA").unwrap_err(),
        KeyError::Malformed
    );
    let nk = generate();
    assert_eq!(parse_share(nk.admin_share.expose()).unwrap().0, Half::Admin);
    assert_eq!(
        parse_share(nk.member_share.expose()).unwrap().0,
        Half::Member
    );
}

#[test]
fn wrap_roundtrip_and_tamper() {
    let k = Key32::random();
    let pass = new_passphrase();
    let w = wrap(&k, &p(), "d1", &pass);
    assert_eq!(unwrap(&k, &p(), "d1", &w).unwrap(), pass);
    assert!(
        unwrap(&k, &p(), "d2", &w).is_err(),
        "AAD binds the drive id"
    );
    let other = ProjectName::parse("other").unwrap();
    assert!(
        unwrap(&k, &other, "d1", &w).is_err(),
        "AAD binds the project"
    );
    for i in 0..w.len() {
        let mut t = w.clone();
        t[i] ^= 1;
        assert!(unwrap(&k, &p(), "d1", &t).is_err(), "flip at {i} accepted");
    }
    assert!(unwrap(&Key32::random(), &p(), "d1", &w).is_err());
}

#[test]
fn secrets_are_redacted_in_debug() {
    let nk = generate();
    let s = format!("{nk:?} {:?}", new_passphrase());
    assert!(!s.contains("vmw-"), "{s}");
    assert_eq!(s.matches("[REDACTED]").count(), 4, "{s}");
}

/// Every string of the documented share form is a well-formed share, whatever its last
/// character's unused bits hold; the key check, not the parser, refuses a wrong one.
#[test]
fn every_token_of_the_documented_form_parses() {
    let re = regex_lite_match;
    for last in "AQgw_-Zz".chars() {
        for label in ["vmw-admin-", "vmw-member-"] {
            let token = format!("{label}{}{last}", "B".repeat(42));
            assert!(re(&token), "{token}");
            let (half, _) = parse_share(token.as_bytes()).unwrap();
            assert_eq!(half == Half::Admin, label == "vmw-admin-");
        }
    }
    assert_eq!(
        parse_share(format!("vmw-admin-{}", "B".repeat(44)).as_bytes()).unwrap_err(),
        KeyError::Malformed
    );
}

/// `SHARE_PATTERN`, checked by hand for the test (the crate has no regex engine).
fn regex_lite_match(s: &str) -> bool {
    assert_eq!(SHARE_PATTERN, "^vmw-(admin|member)-[A-Za-z0-9_-]{43}$");
    let body = s
        .strip_prefix("vmw-admin-")
        .or_else(|| s.strip_prefix("vmw-member-"));
    body.is_some_and(|b| {
        b.len() == 43
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    })
}

mod host_keys {
    use super::super::host::{fingerprint, seal, HostKey, HostKeyError, Sealed};
    use super::super::Key32;
    use crate::model::ProjectName;
    use std::os::unix::fs::PermissionsExt;

    fn project(s: &str) -> ProjectName {
        s.parse().unwrap()
    }

    #[test]
    fn an_envelope_opens_with_its_host_key_only() {
        let (a, b) = (HostKey::generate(), HostKey::generate());
        let k = Key32::random();
        let body = seal(a.public(), &project("p"), Sealed::Key, 7, &k);
        let opened = a.open(&project("p"), Sealed::Key, 7, &body).unwrap();
        assert_eq!(opened.expose(), k.expose());
        assert!(b.open(&project("p"), Sealed::Key, 7, &body).is_none());
    }

    #[test]
    fn an_envelope_moved_to_another_project_or_slot_does_not_open() {
        let a = HostKey::generate();
        let k = Key32::random();
        let body = seal(a.public(), &project("p"), Sealed::AdminHalf, 7, &k);
        assert!(a.open(&project("q"), Sealed::AdminHalf, 7, &body).is_none());
        assert!(a.open(&project("p"), Sealed::Key, 7, &body).is_none());
        // An expiry extended in the store does not open either.
        assert!(a.open(&project("p"), Sealed::AdminHalf, 8, &body).is_none());
        assert!(a.open(&project("p"), Sealed::AdminHalf, 7, &body).is_some());
        let mut bad = body.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(a.open(&project("p"), Sealed::AdminHalf, 7, &bad).is_none());
    }

    #[test]
    fn the_envelope_does_not_carry_the_secret_in_clear() {
        let a = HostKey::generate();
        let k = Key32::random();
        let body = seal(a.public(), &project("p"), Sealed::Key, 7, &k);
        assert!(!body.windows(32).any(|w| w == k.expose()));
    }

    #[test]
    fn the_host_key_file_is_private_and_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-key");
        let first = HostKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = HostKey::load_or_create(&path).unwrap();
        assert_eq!(first.public(), again.public());
        assert!(first.public().as_str().starts_with("age1"));
        assert_eq!(
            first.public().fingerprint(),
            fingerprint(first.public().as_str())
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            HostKey::load_or_create(&path),
            Err(HostKeyError::Exposed(..))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            HostKey::load_or_create(&path),
            Err(HostKeyError::Malformed(..))
        ));
    }

    #[test]
    fn the_host_key_debug_output_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-key");
        let k = HostKey::load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let shown = format!("{k:?}");
        assert!(shown.contains("[REDACTED]"));
        assert!(!shown.contains(text.trim()));
        assert!(!shown.to_lowercase().contains("age-secret-key"));
    }
}

/// What the envelopes say replaces a slot: a waiting half keeps its submitter, K keeps a
/// staged K' only when K is the same, and forgetting empties everything.
#[test]
fn restore_follows_the_envelopes_and_forget_all_empties() {
    let ring = Keyring::new();
    let now = Instant::now();
    let nk = generate();
    let (_, a) = parse_share(nk.admin_share.expose()).unwrap();
    ring.restore(
        &p(),
        Restored::Pending {
            half: Half::Admin,
            share: a,
            from: UserName::parse("root").unwrap(),
            left: Duration::from_secs(60),
        },
        now,
    );
    let st = ring.status(&p(), now);
    assert_eq!((st.locked, st.pending.clone()), (true, vec![Half::Admin]));
    // The member half from another person rebuilds K against the verifier.
    let v = verifier(&nk.key, &p());
    let t = ring.evaluate(
        &p(),
        Verifiers {
            current: &v,
            staged: None,
        },
        nk.member_share.expose(),
        &member("alice"),
        Duration::from_secs(60),
        Duration::from_secs(60),
        now,
    );
    assert_eq!(ring.apply(t).unwrap(), UnlockOutcome::Unlocked);
    ring.stage(&p(), Key32::random(), now).unwrap();
    // The same K again keeps the staged K'; another K drops it.
    let same = Key32::from_slice(nk.key.expose()).unwrap();
    ring.restore(
        &p(),
        Restored::Unlocked {
            key: same,
            left: Duration::from_secs(60),
        },
        now,
    );
    assert!(ring.with_keys(&p(), now, |_, next| next.is_some()).unwrap());
    ring.restore(
        &p(),
        Restored::Unlocked {
            key: Key32::random(),
            left: Duration::from_secs(60),
        },
        now,
    );
    assert!(!ring.with_keys(&p(), now, |_, next| next.is_some()).unwrap());
    // An envelope at its end: locked once its time is up.
    ring.restore(
        &p(),
        Restored::Unlocked {
            key: Key32::random(),
            left: Duration::from_secs(1),
        },
        now,
    );
    assert!(ring
        .with_key(&p(), now + Duration::from_secs(2), |_| ())
        .is_err());
    ring.restore(
        &p(),
        Restored::Unlocked {
            key: Key32::random(),
            left: Duration::from_secs(60),
        },
        now,
    );
    ring.forget_all();
    assert!(ring.status(&p(), now).locked);
    ring.restore(
        &p(),
        Restored::Unlocked {
            key: Key32::random(),
            left: Duration::from_secs(60),
        },
        now,
    );
    ring.restore(&p(), Restored::Locked, now);
    assert!(ring.status(&p(), now).locked);
}
