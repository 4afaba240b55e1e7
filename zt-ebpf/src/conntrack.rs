//! Conntrack lookups and admissions (decision procedure steps 5, 8a and 10).
//!
//! A flow is keyed by the tuple of its first packet and the direction it was admitted in, in the
//! map of its address family; its entry counts only on the interface it was admitted on. See
//! `zt_common::conntrack` for why. Generic over the address family (see `family`).
//!
//! Every write to an existing entry goes through the pointer its lookup returned (a map update
//! costs a new element and an RCU swap), and only when it changes something: the clock stamp
//! moves once a second at most, the state flags once per flow.

use aya_ebpf::bindings::BPF_NOEXIST;
use zt_common::{
    conntrack::{CtValue, flags},
    reason,
};

use crate::{
    family::{CtFields, Family},
    keys::Addr32,
    packet::{Packet, Tuple, class, tcp},
};

/// `-EEXIST`, as a map update with `BPF_NOEXIST` returns it for a key already present.
const EEXIST: i32 = -17;

/// A flow as an entry is keyed: a tuple read off a packet (the packet's own, or for an ICMP error
/// the one it quotes), possibly reversed, and the direction it was admitted in.
#[derive(Clone, Copy)]
pub struct Flow<'p> {
    tuple: &'p Tuple,
    reversed: bool,
    direction: u8,
}

impl Flow<'_> {
    /// The admitted flow's source address.
    #[inline(always)]
    pub fn src(&self) -> &Addr32 {
        if self.reversed {
            &self.tuple.dst
        } else {
            &self.tuple.src
        }
    }

    /// The admitted flow's destination address.
    #[inline(always)]
    pub fn dst(&self) -> &Addr32 {
        if self.reversed {
            &self.tuple.src
        } else {
            &self.tuple.dst
        }
    }

    /// The admitted flow's destination port (network byte order).
    #[inline(always)]
    pub fn dport(&self) -> u16 {
        if self.reversed {
            self.tuple.sport
        } else {
            self.tuple.dport
        }
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.tuple.protocol
    }

    #[inline(always)]
    pub fn direction(&self) -> u8 {
        self.direction
    }

    #[inline(always)]
    fn sport(&self) -> u16 {
        if self.reversed {
            self.tuple.dport
        } else {
            self.tuple.sport
        }
    }

    #[inline(always)]
    fn key<F: Family>(&self) -> F::CtKey {
        F::ct_key(&CtFields {
            src: self.src(),
            dst: self.dst(),
            sport: self.sport(),
            dport: self.dport(),
            protocol: self.tuple.protocol,
            direction: self.direction,
        })
    }

    /// The entry on interface `ifindex`, if any.
    #[inline(always)]
    fn get<F: Family>(&self, ifindex: u32) -> Option<*mut CtValue> {
        let entry = F::conntrack().get_ptr_mut(&self.key::<F>())?;
        // SAFETY: a map value pointer returned by the kernel, valid for this program run.
        (unsafe { (*entry).ifindex } == ifindex).then_some(entry)
    }

    /// Records the flow: a new element, or (a retransmitted SYN, a reused port) the existing
    /// entry overwritten in place. `false` when the map is full: nothing is evicted for it.
    #[inline(always)]
    fn insert<F: Family>(&self, value: &CtValue) -> bool {
        let key = self.key::<F>();
        match F::conntrack().insert(&key, value, u64::from(BPF_NOEXIST)) {
            Ok(()) => true,
            Err(e) if e == EEXIST => match F::conntrack().get_ptr_mut(&key) {
                Some(entry) => {
                    // SAFETY: a map value pointer returned by the kernel, valid for this run.
                    unsafe {
                        (*entry).revision = value.revision;
                        (*entry).flags = value.flags;
                        (*entry).ifindex = value.ifindex;
                        (*entry).seen = value.seen;
                    }
                    true
                }
                // Deleted (by the agent's sweep) since: one more try.
                None => F::conntrack()
                    .insert(&key, value, u64::from(BPF_NOEXIST))
                    .is_ok(),
            },
            Err(_) => false,
        }
    }

    /// Step 8c: a revoked flow is forgotten, so its next packet is a new flow again.
    #[inline(always)]
    pub fn forget<F: Family>(&self) {
        let _ = F::conntrack().remove(&self.key::<F>());
    }
}

/// A conntrack hit: the flow as admitted, its entry, and the reason an up-to-date entry allows
/// with.
pub struct Hit<'p> {
    pub flow: Flow<'p>,
    pub entry: *mut CtValue,
    pub reason: u8,
}

/// The packet passes on `entry`, found for `reason`: stamp the clock, and record a reply or a
/// TCP close.
#[inline(always)]
pub fn touch(entry: *mut CtValue, reason: u8, pkt: &Packet, clock: u32) {
    let mut add = 0;
    if reason == reason::ALLOW_CT_REPLY {
        add |= flags::REPLIED;
    }
    if pkt.tcp & tcp::CLOSE != 0 && reason != reason::ALLOW_CT_RELATED {
        add |= flags::CLOSING;
    }
    let e = entry;
    // SAFETY: a map value pointer returned by the kernel, valid for this program run.
    unsafe {
        if (*e).seen != clock {
            (*e).seen = clock;
        }
        if (*e).flags & add != add {
            (*e).flags |= add;
        }
    }
}

/// Step 5: the packet's own flow, then the flow it replies to.
#[inline(always)]
pub fn lookup<F: Family>(pkt: &Packet, dir: u8, ifindex: u32) -> Option<Hit<'_>> {
    let own = Flow {
        tuple: &pkt.tuple,
        reversed: false,
        direction: dir,
    };
    if let Some(entry) = own.get::<F>(ifindex) {
        return Some(Hit {
            flow: own,
            entry,
            reason: reason::ALLOW_CT_ESTABLISHED,
        });
    }
    let reply = Flow {
        tuple: &pkt.tuple,
        reversed: true,
        direction: dir ^ 1,
    };
    reply.get::<F>(ifindex).map(|entry| Hit {
        flow: reply,
        entry,
        reason: reason::ALLOW_CT_REPLY,
    })
}

/// Step 8a for an ICMP error: the flow of the packet it quotes, admitted in the other direction
/// on this interface.
#[inline(always)]
pub fn related<F: Family>(pkt: &Packet, dir: u8, ifindex: u32) -> Option<Hit<'_>> {
    if pkt.class != class::ICMP_ERROR || pkt.quoted_valid == 0 {
        return None;
    }
    let quoted = Flow {
        tuple: &pkt.quoted,
        reversed: false,
        direction: dir ^ 1,
    };
    quoted.get::<F>(ifindex).map(|entry| Hit {
        flow: quoted,
        entry,
        reason: reason::ALLOW_CT_RELATED,
    })
}

/// Step 10: records a new flow admitted in `dir` on `ifindex` at `clock`. `false` when
/// conntrack is full.
#[inline(always)]
pub fn admit<F: Family>(
    pkt: &Packet,
    dir: u8,
    ifindex: u32,
    revision: u32,
    flags: u32,
    clock: u32,
) -> bool {
    let own = Flow {
        tuple: &pkt.tuple,
        reversed: false,
        direction: dir,
    };
    own.insert::<F>(&CtValue {
        revision,
        flags,
        ifindex,
        seen: clock,
    })
}
