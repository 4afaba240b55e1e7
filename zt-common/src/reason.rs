//! Verdict reason codes: every packet's verdict carries one, counted per CPU in `zt_counters`
//! (indexed by the code) and named in events. Codes below [`FIRST_DROP`] allow, the rest drop.

pub const ALLOW_NON_IP: u8 = 1;
pub const ALLOW_NDP: u8 = 2;
pub const ALLOW_NOT_ISOLATED: u8 = 3;
pub const ALLOW_UNKNOWN_ENDPOINT: u8 = 4;
pub const ALLOW_HOST: u8 = 5;
pub const ALLOW_CT_ESTABLISHED: u8 = 6;
pub const ALLOW_CT_REPLY: u8 = 7;
pub const ALLOW_CT_RELATED: u8 = 8;
pub const ALLOW_POLICY: u8 = 9;
pub const ALLOW_AUDIT: u8 = 10;

pub const FIRST_DROP: u8 = 16;
pub const DROP_MALFORMED: u8 = 16;
pub const DROP_FRAGMENT_UNKNOWN: u8 = 17;
pub const DROP_UNKNOWN_ENDPOINT: u8 = 18;
pub const DROP_SPOOFED: u8 = 19;
pub const DROP_POLICY_INGRESS: u8 = 20;
pub const DROP_POLICY_EGRESS: u8 = 21;
pub const DROP_REVOKED: u8 = 22;
/// A new flow that policy allows, but conntrack is full: it cannot be recorded, so it does not
/// start (its replies could not pass). Established flows keep their entries and pass.
pub const DROP_CT_FULL: u8 = 23;
/// The program could not get its per-CPU scratch slot (`zt_scratch`, index 0 of a one-entry
/// array: cannot happen on a loaded object). Fails closed, counted, no event.
pub const DROP_INTERNAL: u8 = 24;

/// Entries of `zt_counters`.
pub const COUNT: u32 = 32;

#[inline(always)]
pub const fn is_drop(reason: u8) -> bool {
    reason >= FIRST_DROP
}

/// A stable, human-readable name (used in metrics labels and `explain`).
pub const fn name(reason: u8) -> &'static str {
    match reason {
        ALLOW_NON_IP => "allow_non_ip",
        ALLOW_NDP => "allow_ndp",
        ALLOW_NOT_ISOLATED => "allow_not_isolated",
        ALLOW_UNKNOWN_ENDPOINT => "allow_unknown_endpoint",
        ALLOW_HOST => "allow_host",
        ALLOW_CT_ESTABLISHED => "allow_ct_established",
        ALLOW_CT_REPLY => "allow_ct_reply",
        ALLOW_CT_RELATED => "allow_ct_related",
        ALLOW_POLICY => "allow_policy",
        ALLOW_AUDIT => "allow_audit",
        DROP_MALFORMED => "drop_malformed",
        DROP_FRAGMENT_UNKNOWN => "drop_fragment_unknown",
        DROP_UNKNOWN_ENDPOINT => "drop_unknown_endpoint",
        DROP_SPOOFED => "drop_spoofed",
        DROP_POLICY_INGRESS => "drop_policy_ingress",
        DROP_POLICY_EGRESS => "drop_policy_egress",
        DROP_REVOKED => "drop_revoked",
        DROP_CT_FULL => "drop_ct_full",
        DROP_INTERNAL => "drop_internal",
        _ => "unknown",
    }
}
