//! Identities: numbers for equivalence classes of peers.
//!
//! The LPM tries `zt_ident_v4` (key data: 4 address bytes, network order) and `zt_ident_v6` (16
//! bytes) map prefixes to an [`IdentityValue`]. Pod addresses are /32 and /128 entries; ipBlock
//! CIDRs and their `except` holes are shorter prefixes. An address that matches nothing is
//! [`WORLD`].

use crate::{assert_size, user_pod};

/// In a policy key: any peer. Never assigned to an address.
pub const ANY: u32 = 0;
/// Every address no prefix in the trie covers.
pub const WORLD: u32 = 1;
/// This node's own addresses. Traffic between a pod and its node is always allowed
/// (NetworkPolicy cannot block it).
pub const HOST: u32 = 2;
/// First identity the agent allocates for pods.
pub const FIRST_POD: u32 = 256;
/// First identity the agent allocates for CIDR blocks (addresses outside pods).
pub const FIRST_CIDR: u32 = 1 << 24;

/// Value of both identity tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityValue {
    pub identity: u32,
}
assert_size!(IdentityValue, 4);
user_pod!(IdentityValue);
