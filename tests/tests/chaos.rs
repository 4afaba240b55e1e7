//! The quick versions of `cargo xtask chaos`: each fault under continuous traffic, at a scale
//! that fits CI. Not one allowed packet may be lost, not one denied packet may pass. Root only;
//! `--test-threads=1`; needs the agent binary (`cargo build -p zt-agent`).

use zt_agent::lab::agent::binary;
use zt_tests::chaos::{Figures, Scale, cases};

fn judge(case: &str, figures: anyhow::Result<Figures>) {
    let figures = figures.unwrap_or_else(|e| panic!("{case} could not run: {e:#}"));
    eprintln!("{case}: {}", serde_json::to_string(&figures).unwrap());
    assert!(figures.traffic.sent > 0, "{case}: no traffic was sent");
    assert_eq!(
        figures.traffic.lost, 0,
        "{case}: allowed packets lost: {figures:?}"
    );
    assert_eq!(
        figures.traffic.leaked, 0,
        "{case}: denied packets passed: {figures:?}"
    );
}

#[test]
fn restart_at_random_moments_loses_and_leaks_nothing() {
    judge(
        "restart",
        cases::restart(&binary().unwrap(), Scale::QUICK.restarts, 0xc4a05),
    );
}

#[test]
fn pods_coming_and_going_leave_nothing_and_are_enforced_at_once() {
    let figures = cases::iface_churn(&binary().unwrap(), Scale::QUICK.iface_rounds);
    if let Ok(f) = &figures {
        assert_eq!(f.extra["left_link_pins"], 0, "{f:?}");
        assert_eq!(f.extra["left_map_entries"], 0, "{f:?}");
    }
    judge("iface_churn", figures);
}

#[test]
fn policy_churn_moves_no_measured_verdict() {
    let scale = Scale::QUICK;
    judge(
        "churn",
        cases::churn(&binary().unwrap(), scale.churn_per_minute, scale.churn_for),
    );
}

#[test]
fn a_full_policy_map_opens_nothing_and_recovers() {
    let scale = Scale::QUICK;
    let figures = cases::maps_full(&binary().unwrap(), scale.full_pods, scale.full_ports);
    if let Ok(f) = &figures {
        assert!(f.extra["unwritten_entries"] > 0, "{f:?}");
        assert_eq!(f.extra["new_pod_leaked"], 0, "{f:?}");
    }
    judge("maps_full", figures);
}
