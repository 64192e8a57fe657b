//! Idle shutdown: a pure decision over activity samples, and the per-VM tracker the daemon's
//! sampler feeds once per `idle.sample_interval` from one bulk-stats call.
//!
//! A VM is idle while its CPU use stays under `cpu_percent` and its disk plus network traffic
//! under `io_kib_per_sec`. Once idle for `after - warn_before` it is warned (once per idle
//! period); idle for `after`, it is shut down. Any active sample or a keepalive restarts the
//! clock. Times are `tokio::time::Instant`, so tests drive them with a paused clock.

use crate::model::{IdlePolicy, VmId};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// The policy in force for one VM: host defaults overridden by the VM's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effective {
    /// Whether idle shutdown applies.
    pub enabled: bool,
    /// Idle time before shutdown.
    pub after: Duration,
    /// Warning lead time.
    pub warn_before: Duration,
    /// CPU threshold in percent of one CPU.
    pub cpu_percent: f64,
    /// Disk + network threshold in bytes per second.
    pub io_bytes_per_sec: f64,
}

impl Effective {
    /// The host defaults with a VM's overrides applied (the VM cannot enable what the host
    /// disabled).
    pub fn with(self, vm: &IdlePolicy) -> Self {
        Self {
            enabled: self.enabled && vm.enabled.unwrap_or(true),
            after: vm.after.unwrap_or(self.after),
            cpu_percent: vm.cpu_percent.unwrap_or(self.cpu_percent),
            ..self
        }
    }
}

/// Counters of one domain at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When the sample was taken.
    pub at: Instant,
    /// Cumulative CPU time (ns).
    pub cpu_time_ns: u64,
    /// Cumulative disk + network bytes.
    pub io_bytes: u64,
}

/// What the tracker concluded from a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Active, or idle shutdown disabled, or too early to tell.
    Active,
    /// Idle since `since`; shut down at `deadline` unless it wakes up.
    Idle {
        /// Start of the idle period.
        since: Instant,
        /// Planned shutdown.
        deadline: Instant,
    },
    /// Entered the warning window now (reported once per idle period).
    Warn {
        /// Planned shutdown.
        deadline: Instant,
    },
    /// Idle for the whole period: shut it down.
    Shutdown,
}

/// Idle state of one running VM.
#[derive(Debug, Clone, Default)]
pub struct Track {
    last: Option<Sample>,
    idle_since: Option<Instant>,
    warned: bool,
    /// The idle period ended in a shutdown; nothing more is decided until the VM stops
    /// (its track goes) or a keepalive starts a new period.
    shut_down: bool,
}

impl Track {
    /// Restarts the clock: the VM counts as idle from `now`, for a full period.
    pub fn keepalive(&mut self, now: Instant) {
        self.idle_since = Some(now);
        self.warned = false;
        self.shut_down = false;
    }

    /// The current idle period and its deadline, if idle.
    pub fn status(&self, p: &Effective) -> Option<(Instant, Instant)> {
        let since = self.idle_since.filter(|_| p.enabled)?;
        Some((since, since + p.after))
    }

    /// Feeds one sample. Rates need two samples, so the first one only records.
    pub fn observe(&mut self, s: Sample, p: &Effective) -> Decision {
        let prev = self.last.replace(s);
        if self.shut_down {
            return Decision::Active;
        }
        if !p.enabled {
            self.idle_since = None;
            self.warned = false;
            return Decision::Active;
        }
        let Some(prev) = prev else {
            return Decision::Active;
        };
        let dt = s.at.saturating_duration_since(prev.at).as_secs_f64();
        if dt <= 0.0 {
            return self.decide(s.at, p);
        }
        let cpu_percent =
            s.cpu_time_ns.saturating_sub(prev.cpu_time_ns) as f64 / (dt * 1e9) * 100.0;
        let io = s.io_bytes.saturating_sub(prev.io_bytes) as f64 / dt;
        if cpu_percent >= p.cpu_percent || io >= p.io_bytes_per_sec {
            self.idle_since = None;
            self.warned = false;
            return Decision::Active;
        }
        // Idle over the whole interval just measured.
        self.idle_since.get_or_insert(prev.at);
        self.decide(s.at, p)
    }

    fn decide(&mut self, now: Instant, p: &Effective) -> Decision {
        let Some(since) = self.idle_since else {
            return Decision::Active;
        };
        let deadline = since + p.after;
        // Always warn first: when `after` is shorter than `warn_before`, or a sample came
        // late, the warning goes out at once and the shutdown waits for the next sample.
        if !self.warned && now + p.warn_before >= deadline {
            self.warned = true;
            Decision::Warn {
                deadline: deadline.max(now),
            }
        } else if now >= deadline {
            self.shut_down = true;
            Decision::Shutdown
        } else {
            Decision::Idle { since, deadline }
        }
    }
}

/// Tracks of every running VM; entries of VMs that stopped are dropped at each sweep.
#[derive(Debug, Default)]
pub struct Tracker {
    tracks: HashMap<VmId, Track>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// One sweep: a sample per running VM (with its policy) in, a decision per VM out.
    pub fn sweep(
        &mut self,
        samples: impl IntoIterator<Item = (VmId, Sample, Effective)>,
    ) -> Vec<(VmId, Decision)> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for (id, s, p) in samples {
            seen.push(id);
            out.push((id, self.tracks.entry(id).or_default().observe(s, &p)));
        }
        if seen.len() != self.tracks.len() {
            let seen: std::collections::HashSet<VmId> = seen.into_iter().collect();
            self.tracks.retain(|id, _| seen.contains(id));
        }
        out
    }

    /// Restarts a VM's clock.
    pub fn keepalive(&mut self, id: VmId, now: Instant) {
        self.tracks.entry(id).or_default().keepalive(now);
    }

    /// Forgets a VM (stopped).
    pub fn forget(&mut self, id: VmId) {
        self.tracks.remove(&id);
    }

    /// Idle period and deadline of a VM, if idle.
    pub fn status(&self, id: VmId, p: &Effective) -> Option<(Instant, Instant)> {
        self.tracks.get(&id)?.status(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Effective {
        Effective {
            enabled: true,
            after: Duration::from_secs(600),
            warn_before: Duration::from_secs(120),
            cpu_percent: 5.0,
            io_bytes_per_sec: 64.0 * 1024.0,
        }
    }

    /// Activity per 60 s step: CPU percent and I/O bytes/s.
    #[derive(Clone, Copy)]
    struct Act(f64, f64);
    const IDLE: Act = Act(0.5, 10.0);
    const BUSY_CPU: Act = Act(80.0, 0.0);
    const BUSY_IO: Act = Act(0.5, 1e6);

    /// Rows: name, steps of (activity over the last minute, keepalive before the sample?),
    /// and the decision expected after the last step ("A" active, "I" idle, "W" warn, "S").
    #[tokio::test(start_paused = true)]
    async fn idle_decisions_table() {
        type Row = (&'static str, Vec<(Act, bool)>, Vec<&'static str>);
        let rows: Vec<Row> = vec![
            ("first sample only records", vec![(IDLE, false)], vec!["A"]),
            (
                "busy CPU stays active",
                vec![(BUSY_CPU, false); 12],
                vec!["A"; 12],
            ),
            (
                "busy I/O stays active",
                vec![(BUSY_IO, false); 12],
                vec!["A"; 12],
            ),
            (
                "idle 10 min: warn at 8, shut down at 10",
                vec![(IDLE, false); 11],
                vec!["A", "I", "I", "I", "I", "I", "I", "I", "W", "I", "S"],
            ),
            (
                "activity restarts the clock",
                [
                    vec![(IDLE, false); 8],
                    vec![(BUSY_CPU, false)],
                    vec![(IDLE, false); 3],
                ]
                .concat(),
                vec!["A", "I", "I", "I", "I", "I", "I", "I", "A", "I", "I", "I"],
            ),
            (
                "one idle period ends in exactly one shutdown",
                vec![(IDLE, false); 14],
                vec![
                    "A", "I", "I", "I", "I", "I", "I", "I", "W", "I", "S", "A", "A", "A",
                ],
            ),
            (
                "keepalive during the warning buys a full period",
                [
                    vec![(IDLE, false); 9],
                    vec![(IDLE, true)],
                    vec![(IDLE, false); 10],
                ]
                .concat(),
                [
                    vec!["A", "I", "I", "I", "I", "I", "I", "I", "W", "I"],
                    vec!["I", "I", "I", "I", "I", "I", "I", "W", "I", "S"],
                ]
                .concat(),
            ),
        ];
        for (name, steps, expected) in rows {
            let t0 = Instant::now();
            let mut track = Track::default();
            let (mut cpu, mut io) = (0u64, 0u64);
            let p = policy();
            let mut got = vec![];
            for (i, (act, keepalive)) in steps.iter().enumerate() {
                if i > 0 {
                    tokio::time::advance(Duration::from_secs(60)).await;
                    cpu += (act.0 / 100.0 * 60.0 * 1e9) as u64;
                    io += (act.1 * 60.0) as u64;
                }
                if *keepalive {
                    track.keepalive(Instant::now());
                }
                let d = track.observe(
                    Sample {
                        at: Instant::now(),
                        cpu_time_ns: cpu,
                        io_bytes: io,
                    },
                    &p,
                );
                got.push(match d {
                    Decision::Active => "A",
                    Decision::Idle { .. } => "I",
                    Decision::Warn { .. } => "W",
                    Decision::Shutdown => "S",
                });
            }
            assert_eq!(got, expected, "{name}");
            let _ = t0;
        }
    }

    /// `after` shorter than `warn_before`, and a sample that arrives past the deadline:
    /// the warning still comes first, the shutdown at the next sample.
    #[tokio::test(start_paused = true)]
    async fn warning_always_precedes_the_shutdown() {
        for (after, gaps, expected) in [
            (120, vec![60, 60, 60, 60], vec!["A", "W", "S", "A", "A"]),
            (120, vec![300, 60, 60], vec!["A", "W", "S", "A"]),
            (600, vec![60, 900, 60], vec!["A", "W", "S", "A"]),
        ] {
            let p = Effective {
                after: Duration::from_secs(after),
                warn_before: Duration::from_secs(600),
                ..policy()
            };
            let mut t = Track::default();
            let mut got = vec![];
            for i in 0..=gaps.len() {
                if i > 0 {
                    tokio::time::advance(Duration::from_secs(gaps[i - 1])).await;
                }
                got.push(
                    match t.observe(
                        Sample {
                            at: Instant::now(),
                            cpu_time_ns: 0,
                            io_bytes: 0,
                        },
                        &p,
                    ) {
                        Decision::Active => "A",
                        Decision::Idle { .. } => "I",
                        Decision::Warn { .. } => "W",
                        Decision::Shutdown => "S",
                    },
                );
            }
            assert_eq!(got, expected, "after {after}s, gaps {gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn warning_carries_the_deadline() {
        let mut t = Track::default();
        let p = policy();
        let t0 = Instant::now();
        let mut last = Decision::Active;
        for _ in 0..9 {
            last = t.observe(
                Sample {
                    at: Instant::now(),
                    cpu_time_ns: 0,
                    io_bytes: 0,
                },
                &p,
            );
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        assert_eq!(
            last,
            Decision::Warn {
                deadline: t0 + Duration::from_secs(600)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_policy_never_shuts_down() {
        let mut t = Track::default();
        let p = Effective {
            enabled: false,
            ..policy()
        };
        for _ in 0..30 {
            assert_eq!(
                t.observe(
                    Sample {
                        at: Instant::now(),
                        cpu_time_ns: 0,
                        io_bytes: 0
                    },
                    &p
                ),
                Decision::Active
            );
            tokio::time::advance(Duration::from_secs(60)).await;
        }
    }

    #[test]
    fn effective_policy_combines_host_and_vm() {
        let vm = IdlePolicy {
            enabled: None,
            after: Some(Duration::from_secs(60)),
            cpu_percent: Some(1.0),
        };
        let e = policy().with(&vm);
        assert_eq!(
            (e.enabled, e.after, e.cpu_percent),
            (true, Duration::from_secs(60), 1.0)
        );
        assert_eq!(e.warn_before, policy().warn_before);
        let off = Effective {
            enabled: false,
            ..policy()
        };
        let on = IdlePolicy {
            enabled: Some(true),
            ..IdlePolicy::default()
        };
        assert!(
            !off.with(&on).enabled,
            "a VM cannot enable what the host disabled"
        );
        let vm_off = IdlePolicy {
            enabled: Some(false),
            ..IdlePolicy::default()
        };
        assert!(!policy().with(&vm_off).enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn tracker_forgets_vms_that_stopped() {
        let mut tr = Tracker::new();
        let (a, b) = (VmId::new_random(), VmId::new_random());
        let s = Sample {
            at: Instant::now(),
            cpu_time_ns: 0,
            io_bytes: 0,
        };
        tr.sweep([(a, s, policy()), (b, s, policy())]);
        tr.keepalive(a, Instant::now());
        assert!(tr.status(a, &policy()).is_some());
        tr.sweep([(b, s, policy())]);
        assert!(tr.status(a, &policy()).is_none());
    }
}
