//! Peer identity (decision procedure step 9b): the address's own entry in the family's host map,
//! else the longest prefix in the family's trie, else `WORLD`.

use zt_common::identity::WORLD;

use crate::{family::Family, keys::Addr32};

#[inline(always)]
pub fn lookup<F: Family>(addr: &Addr32) -> u32 {
    match F::identity(addr) {
        Some(v) => v.identity,
        None => WORLD,
    }
}
