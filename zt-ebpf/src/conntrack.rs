//! Conntrack lookups and admissions (decision procedure steps 5, 8a and 10).
//!
//! A flow is keyed by the tuple of its first packet and the direction it was admitted in, in the
//! map of its address family; its entry counts only on the interface it was admitted on. See
//! `zt_common::conntrack` for why. Generic over the address family (see `family`).

use zt_common::{conntrack::CtValue, reason};

use crate::{
    family::{CtFields, Family},
    keys::Addr32,
    packet::{Packet, Tuple, class},
};

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

    /// Records the flow. A full LRU evicts its least recently used flow.
    #[inline(always)]
    fn insert<F: Family>(&self, value: &CtValue) {
        let _ = F::conntrack().insert(&self.key::<F>(), value, 0);
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

/// Step 10: records a new flow admitted in `dir` on `ifindex`.
#[inline(always)]
pub fn admit<F: Family>(pkt: &Packet, dir: u8, ifindex: u32, revision: u32, flags: u32) {
    let own = Flow {
        tuple: &pkt.tuple,
        reversed: false,
        direction: dir,
    };
    own.insert::<F>(&CtValue {
        revision,
        flags,
        ifindex,
        _pad: 0,
    });
}
