//! Reads verdict events from the `zt_events` ring buffer: denied and audited ones are logged at
//! info with reason names and `ns/pod` names, new flows at debug; all are counted.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use zt_common::{
    direction,
    event::{Event, kind},
    reason,
};

use super::{
    maps::ip_of,
    metrics::{EventLabel, Metrics},
};

/// Pod names by address, for readable events (refreshed by the control loop).
pub type Names = Arc<RwLock<HashMap<IpAddr, String>>>;

/// At most this many denied/audited events are logged per second; the rest are only counted
/// (a flood of drops must not become a flood of logs).
const LOGS_PER_SECOND: u32 = 100;

/// A one-second window log budget.
struct Budget {
    window: Instant,
    used: u32,
    suppressed: u64,
}

impl Budget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::info!(
                    suppressed = self.suppressed,
                    "verdict events not logged (rate limit)"
                );
            }
            *self = Budget {
                window: now,
                used: 0,
                suppressed: 0,
            };
        }
        if self.used < LOGS_PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

pub async fn follow(ring: RingBuf<MapData>, names: Names, metrics: Metrics) {
    let mut budget = Budget {
        window: Instant::now(),
        used: 0,
        suppressed: 0,
    };
    // SAFETY: the ring buffer owns its map fd for its whole life, and the `AsyncFd` owns the
    // ring buffer, so the fd stays open and the same until the `AsyncFd` is dropped.
    let registered = unsafe { AsyncFd::register(ring) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(error) => {
            let error = error.into_parts().1;
            tracing::warn!(%error, "cannot poll the event ring buffer; events are not reported");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                metrics.events_lost.inc();
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (plain integers, any bit pattern valid) at the
            // start of the item, which is at least that long.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            drop(item);
            report(&event, &names, &metrics, &mut budget);
        }
        guard.clear_ready();
    }
}

fn report(event: &Event, names: &Names, metrics: &Metrics, budget: &mut Budget) {
    let kind_name = match event.kind {
        kind::DENIED => "denied",
        kind::NEW_FLOW => "new_flow",
        kind::AUDITED => "audited",
        _ => "unknown",
    };
    let reason_name = reason::name(event.reason);
    metrics
        .events
        .get_or_create(&EventLabel {
            kind: kind_name.to_owned(),
            reason: reason_name.to_owned(),
        })
        .inc();
    let loud = matches!(event.kind, kind::DENIED | kind::AUDITED);
    if (loud && !budget.take()) || (!loud && !tracing::enabled!(tracing::Level::DEBUG)) {
        return;
    }
    let (src, dst) = (ip_of(event.src), ip_of(event.dst));
    let name = |ip: IpAddr| {
        let names = names.read().unwrap_or_else(|e| e.into_inner());
        names.get(&ip).cloned().unwrap_or_else(|| ip.to_string())
    };
    let dir = if event.direction == direction::INGRESS {
        "ingress"
    } else {
        "egress"
    };
    let (from, to) = (name(src), name(dst));
    let (sport, dport, proto, ifindex) = (event.sport, event.dport, event.protocol, event.ifindex);
    match event.kind {
        kind::DENIED | kind::AUDITED => tracing::info!(
            verdict = kind_name, reason = reason_name, from, to, %src, %dst, sport, dport, proto,
            direction = dir, ifindex, "{kind_name}"
        ),
        _ => tracing::debug!(
            verdict = kind_name, reason = reason_name, from, to, %src, %dst, sport, dport, proto,
            direction = dir, policy_ref = event.policy_ref, "new flow"
        ),
    }
}
