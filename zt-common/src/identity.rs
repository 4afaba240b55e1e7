//! Identities: numbers for equivalence classes of peers.
//!
//! Two tables per family map addresses to an [`IdentityValue`]:
//! - the hash maps `zt_ident_host4` (key: 4 address bytes, network order) and `zt_ident_host6`
//!   (16 bytes) hold single addresses: pods and this node;
//! - the LPM tries `zt_ident_v4` and `zt_ident_v6` hold every shorter prefix: ipBlock CIDRs and
//!   their `except` holes.
//!
//! An address's identity is its host entry if it has one (a full-length prefix is always the
//! longest match), else the longest prefix in the trie, else [`WORLD`]. Splitting the table keeps
//! the common lookup, a pod address, one hash probe instead of a walk down a trie as deep as the
//! number of pods makes it.

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

/// Value of every identity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityValue {
    pub identity: u32,
}
assert_size!(IdentityValue, 4);
user_pod!(IdentityValue);
