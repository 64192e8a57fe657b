//! Unit tests of the libvirt module that need no libvirtd, or only the test driver.

use super::*;

#[test]
fn qemu_start_failures_keep_only_the_cause() {
    let raw = "internal error: QEMU unexpectedly closed the monitor (vm='x'): \
               2026-11-29T02:01:34.207397Z qemu-system-x86_64: -blockdev {\"node-name\":\
               \"libvirt-1-format\",\"encrypt\":{\"format\":\"luks\"}}: Invalid password, \
               cannot unlock any keyslot";
    assert_eq!(
        shorten(raw),
        "QEMU: Invalid password, cannot unlock any keyslot"
    );
    let kvm = "internal error: QEMU unexpectedly closed the monitor (vm='x'): 2026-11-29T01:55:02Z \
               qemu-system-x86_64: -accel kvm: Could not access KVM kernel module: No such file or \
               directory\n2026-11-29T01:55:02Z qemu-system-x86_64: -accel kvm: failed to initialize \
               kvm: No such file or directory";
    assert_eq!(
        shorten(kvm),
        "QEMU: failed to initialize kvm: No such file or directory"
    );
    let plain =
        "Cannot access storage file '/d/a.qcow2' (as uid:64055, gid:64055): Permission denied";
    assert_eq!(shorten(plain), plain);
    assert_eq!(shorten("  qemu-system-x86_64  "), "qemu-system-x86_64");
}

#[test]
fn versions_read_like_libvirt_prints_them() {
    assert_eq!(version_string(11_003_000), "11.3.0");
    assert_eq!(version_string(10_000_002), "10.0.2");
}

#[test]
fn new_does_not_connect_and_debug_is_short() {
    let lv = Libvirt::new("qemu+unix:///system?socket=/nonexistent", DomainType::Auto);
    assert!(lv.slot().is_none());
    let dbg = format!("{lv:?}");
    assert!(dbg.contains("Libvirt") && dbg.contains("Auto"), "{dbg}");
}

#[test]
fn counters_sum_disks_and_interfaces_and_skip_the_rest() {
    let mut c = Counters::default();
    let running = u64::from(sys::VIR_DOMAIN_RUNNING);
    for (field, v) in [
        (&b"state.state"[..], running),
        (b"state.reason", 1),
        (b"cpu.time", 5_000),
        (b"cpu.user", 7),
        (b"block.count", 2),
        (b"block.0.name", 9),
        (b"block.0.rd.bytes", 100),
        (b"block.0.wr.bytes", 20),
        (b"block.0.rd.reqs", 1_000),
        (b"block.1.rd.bytes", 3),
        (b"block.12.wr.bytes", 4),
        (b"block..rd.bytes", 1_000),
        (b"net.count", 1),
        (b"net.0.rx.bytes", 50),
        (b"net.0.tx.bytes", 5),
        (b"net.0.rx.pkts", 1_000),
    ] {
        c.add(field, v);
    }
    assert_eq!(
        c,
        Counters {
            running: true,
            cpu_time_ns: 5_000,
            block_bytes: 127,
            net_bytes: 55,
        }
    );
    for (state, running) in [
        (sys::VIR_DOMAIN_PAUSED, false),
        (sys::VIR_DOMAIN_SHUTOFF, false),
        (sys::VIR_DOMAIN_BLOCKED, true),
    ] {
        c.add(b"state.state", u64::from(state));
        assert_eq!(c.running, running, "{state}");
    }
    c.add(b"block.0.rd.bytes", u64::MAX);
    assert_eq!(c.block_bytes, u64::MAX);
}

#[test]
fn lifecycle_events_map_to_reasons() {
    let ev = |e: c_uint, d: c_uint| lifecycle_kind(e as c_int, d as c_int);
    assert_eq!(ev(sys::VIR_DOMAIN_EVENT_STARTED, 0), Some(None));
    for (detail, reason) in [
        (sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, StopReason::Shutdown),
        (
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED,
            StopReason::Destroyed,
        ),
        (sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED, StopReason::Crashed),
        (sys::VIR_DOMAIN_EVENT_STOPPED_FAILED, StopReason::Failed),
        (sys::VIR_DOMAIN_EVENT_STOPPED_SAVED, StopReason::Other),
        (sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED, StopReason::Other),
    ] {
        assert_eq!(
            ev(sys::VIR_DOMAIN_EVENT_STOPPED, detail),
            Some(Some(reason))
        );
    }
    for kind in [
        sys::VIR_DOMAIN_EVENT_DEFINED,
        sys::VIR_DOMAIN_EVENT_SUSPENDED,
        sys::VIR_DOMAIN_EVENT_RESUMED,
        sys::VIR_DOMAIN_EVENT_SHUTDOWN,
        sys::VIR_DOMAIN_EVENT_CRASHED,
    ] {
        assert_eq!(ev(kind, 0), None, "{kind}");
    }
    assert_eq!(lifecycle_kind(-1, 0), None);
}

#[test]
fn test_driver_stats_report_state_only() {
    // test:///default is one state per process, shared with the other tests here: look
    // only at its "test" domain, which nothing stops.
    let lv = Libvirt::new("test:///default", DomainType::Auto);
    let stats = lv.stats().unwrap();
    let test = stats.iter().find(|s| s.name == "test");
    assert_eq!(
        test,
        Some(&DomainStats {
            name: "test".to_owned(),
            vm: None,
            running: true,
            cpu_time_ns: 0,
            block_bytes: 0,
            net_bytes: 0,
        }),
        "{stats:?}"
    );
}

/// The next event within 5 s, skipping those about domains other than `name`'s (other
/// tests may share test:///default).
fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<LifecycleEvent>,
    name: Option<&str>,
) -> Option<LifecycleEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match rx.try_recv() {
            Ok(ev) => {
                let about = match &ev {
                    LifecycleEvent::Started { name } | LifecycleEvent::Stopped { name, .. } => {
                        Some(name.as_str())
                    }
                    LifecycleEvent::Reconnected => None,
                };
                if about == name {
                    return Some(ev);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    None
}

/// Senders alive: the test's own plus the ones libvirt holds.
fn wait_senders(tx: &UnboundedSender<LifecycleEvent>, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tx.strong_count() != n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    tx.strong_count()
}

#[test]
fn test_driver_events_reach_the_sink_and_are_released() {
    let lv = Libvirt::new("test:///default", DomainType::Auto);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // A sink set before any connection: set_event_sink connects and registers.
    lv.set_event_sink(tx.clone());
    assert_eq!(next_event(&mut rx, None), Some(LifecycleEvent::Reconnected));
    // Ours, the sink's, the callback's.
    assert_eq!(wait_senders(&tx, 3), 3);
    // Domains of its own: test:///default is shared by every connection of the process.
    let name = format!("events-{}", Uuid::new_v4());
    let xml = format!(
        "<domain type='test'><name>{name}</name><memory>1024</memory>\
         <os><type>hvm</type></os></domain>"
    );
    let conn = lv.connection().unwrap();
    let dom = conn.create_domain_xml(&xml, 0).unwrap();
    assert_eq!(
        next_event(&mut rx, Some(&name)),
        Some(LifecycleEvent::Started { name: name.clone() })
    );
    dom.destroy().unwrap();
    assert_eq!(
        next_event(&mut rx, Some(&name)),
        Some(LifecycleEvent::Stopped {
            name: name.clone(),
            reason: StopReason::Destroyed,
        })
    );
    let dom = conn.create_domain_xml(&xml, 0).unwrap();
    assert_eq!(
        next_event(&mut rx, Some(&name)),
        Some(LifecycleEvent::Started { name: name.clone() })
    );

    // A new sink replaces the registration; the old callback's sender is freed.
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    lv.set_event_sink(tx2.clone());
    assert_eq!(
        next_event(&mut rx2, None),
        Some(LifecycleEvent::Reconnected)
    );
    assert_eq!(wait_senders(&tx, 1), 1);
    assert_eq!(wait_senders(&tx2, 3), 3);
    dom.destroy().unwrap();
    assert_eq!(
        next_event(&mut rx2, Some(&name)),
        Some(LifecycleEvent::Stopped {
            name: name.clone(),
            reason: StopReason::Destroyed,
        })
    );
    // The old sink hears nothing more.
    assert!(rx.try_recv().is_err());

    // Dropping the hypervisor deregisters: libvirt frees its sender.
    drop(conn);
    drop(lv);
    assert_eq!(wait_senders(&tx2, 1), 1);
}

#[test]
fn unreachable_libvirt_is_unavailable_and_fast() {
    let lv = Libvirt::new(
        "qemu+unix:///system?socket=/nonexistent/sock",
        DomainType::Auto,
    );
    let t = Instant::now();
    match lv.ping() {
        Err(HypervisorError::Unavailable(m)) => assert!(m.starts_with("Cannot connect"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        lv.domain_type(),
        Err(HypervisorError::Unavailable(_))
    ));
    assert!(matches!(lv.stats(), Err(HypervisorError::Unavailable(_))));
    // A sink on an unreachable libvirtd: nothing registered, nothing blocks, and the
    // keeper lets go of the sink when the hypervisor is dropped.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    lv.set_event_sink(tx.clone());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(rx.try_recv().is_err());
    assert_eq!(tx.strong_count(), 2);
    drop(lv);
    assert_eq!(wait_senders(&tx, 1), 1);
}
