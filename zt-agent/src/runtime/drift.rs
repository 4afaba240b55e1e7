//! Drift: the maps changed by someone other than this agent (a second agent that ignored the
//! lock, a `bpftool map update`, a bug), found by a periodic read-back and repaired.
//!
//! Every `--verify-interval` the control loop reads the agent-owned maps back and compares them
//! with what it believes it wrote (`applied`). Any difference — an entry added, changed or
//! removed behind its back — is counted (`zt_map_drift_total{map}`, entries), logged, and
//! repaired: the read-back becomes `applied` and the next sync diffs the whole compiled state
//! against it, writing exactly what is needed to put the maps back. The datapath's knobs in
//! `zt_config` (fail-closed flag, event mask) are checked the same way. The policy revision is
//! left alone: every sync may bump it.

use std::time::{Duration, Instant};

use zt_common::config::Config;

use crate::datapath::{DatapathState, StateDelta};

/// How many entries of each map differ between what the agent wrote and what the maps hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub endpoints: usize,
    pub identities: usize,
    pub policy: usize,
    /// `zt_config`'s knobs differ (0 or 1).
    pub config: usize,
}

impl Drift {
    pub fn total(&self) -> usize {
        self.endpoints + self.identities + self.policy + self.config
    }

    /// `(map label, entries)` for the metric.
    pub fn by_map(&self) -> [(&'static str, usize); 4] {
        [
            ("endpoints", self.endpoints),
            ("identities", self.identities),
            ("policy", self.policy),
            ("config", self.config),
        ]
    }
}

/// What differs between `applied` (what the agent wrote) and `read` (what the maps hold).
pub fn measure(applied: &DatapathState, read: &DatapathState, config: KnobsDiffer) -> Drift {
    let StateDelta {
        endpoints,
        identities,
        policy,
    } = read.diff(applied);
    Drift {
        endpoints: endpoints.len(),
        identities: identities.len(),
        policy: policy.len(),
        config: usize::from(config.0),
    }
}

/// Whether `zt_config`'s knobs differ from what the agent set.
#[derive(Clone, Copy, Debug)]
pub struct KnobsDiffer(pub bool);

/// Compares the knobs the agent owns: flags and event mask (not the revision).
pub fn knobs_differ(expected: &Config, read: &Config) -> KnobsDiffer {
    KnobsDiffer(expected.flags != read.flags || expected.event_mask != read.event_mask)
}

/// When the next read-back is due.
#[derive(Debug)]
pub struct Schedule {
    every: Duration,
    next: Instant,
}

impl Schedule {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            next: Instant::now() + every,
        }
    }

    /// Whether a read-back is due now; if so, the next one is scheduled.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use zt_common::{endpoint::EndpointValue, policy::PolicyKey};

    use super::*;

    #[test]
    fn every_kind_of_difference_counts() {
        let mut applied = DatapathState::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        applied.endpoints.insert(ip, EndpointValue::default());
        applied.identities.insert(ip.into(), 300);
        let same = measure(&applied, &applied.clone(), KnobsDiffer(false));
        assert_eq!(same.total(), 0);

        let mut read = applied.clone();
        read.identities.insert(ip.into(), 301); // changed
        read.endpoints.clear(); // removed
        read.policy.insert(PolicyKey::default(), Default::default()); // added
        let drift = measure(&applied, &read, KnobsDiffer(true));
        assert_eq!(
            drift,
            Drift {
                endpoints: 1,
                identities: 1,
                policy: 1,
                config: 1
            }
        );
        assert_eq!(drift.total(), 4);
    }

    #[test]
    fn knobs_ignore_the_revision() {
        let expected = Config {
            flags: 1,
            event_mask: 7,
            policy_revision: 3,
            ..Default::default()
        };
        let bumped = Config {
            policy_revision: 9,
            ..expected
        };
        assert!(!knobs_differ(&expected, &bumped).0);
        let open = Config {
            flags: 0,
            ..expected
        };
        assert!(knobs_differ(&expected, &open).0);
    }

    #[test]
    fn the_schedule_fires_once_per_interval() {
        let start = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(10));
        assert!(!s.due(start));
        assert!(s.due(start + Duration::from_secs(11)));
        assert!(!s.due(start + Duration::from_secs(12)));
        assert!(s.due(start + Duration::from_secs(22)));
    }
}
