//! Word-aligned views of the `zt_common` map types, for the kernel side only.
//!
//! `zt_common` stores addresses as `[u8; 16]` (alignment 1). Copying or comparing those makes
//! LLVM's BPF backend call byte-at-a-time `memcpy`/`memset`/`bcmp` loops: slow on the packet
//! path and costly for the verifier. These views have the same size and field offsets (asserted
//! below) but hold addresses as `[u32; 4]` in network byte order, so copies are word moves.

use zt_common::{conntrack, endpoint, event};

/// An address as four words of network-order bytes (the same bytes as `zt_common::Addr`).
pub type Addr32 = [u32; 4];

/// Zeroes the `T` at `p` (here: this CPU's scratch slot, see `scratch`) in place, word by word,
/// and returns it initialised.
///
/// `Default::default()`, a literal full of zeros, or even moving a zeroed value becomes a call to
/// a byte-loop `memset`/`memcpy` on BPF (LLVM does not expand those inline there); volatile word
/// stores into the final location cannot be fused into one.
///
/// # Safety
/// `p` must be valid for writes of a `T`, aligned for it, and not aliased while the returned
/// reference lives.
#[inline(always)]
pub unsafe fn zero_in_place<'a, T>(p: *mut T) -> &'a mut T {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let words = p.cast::<u32>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: within `*p`, suitably aligned (asserted above, and by the caller).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written, all-zero is a valid value of every type used here, and
    // the caller guarantees validity and exclusivity.
    unsafe { &mut *p }
}

/// Copies the `T` at `src` (map memory) to `dst` (here: the scratch slot) word by word. A plain
/// assignment of a struct between two map values becomes a `memmove` call on BPF.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of a `T`, both aligned for it.
#[inline(always)]
pub unsafe fn copy_words<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 4 {
        // SAFETY: within `*src` and `*dst`, suitably aligned (asserted above, and by the caller).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// `[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]` as the third word of an IPv4-mapped address.
pub const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[inline(always)]
pub const fn ipv4_mapped(v4: u32) -> Addr32 {
    [0, 0, MAPPED_WORD, v4]
}

/// Copies an address out of packet (or map) memory word by word. A plain assignment becomes a
/// `memmove` call on BPF.
#[inline(always)]
pub fn copy_addr(src: &Addr32) -> Addr32 {
    // SAFETY: volatile reads of four initialised words behind a valid reference; volatile only
    // keeps LLVM from fusing them back into a `memmove`.
    unsafe {
        [
            core::ptr::read_volatile(&src[0]),
            core::ptr::read_volatile(&src[1]),
            core::ptr::read_volatile(&src[2]),
            core::ptr::read_volatile(&src[3]),
        ]
    }
}

#[inline(always)]
pub const fn is_ipv4_mapped(a: &Addr32) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == MAPPED_WORD
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CtKey4 {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CtKey6 {
    pub src: Addr32,
    pub dst: Addr32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FragKey {
    pub src: Addr32,
    pub dst: Addr32,
    pub id: u32,
    pub protocol: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EndpointKey {
    pub addr: Addr32,
}

#[repr(C)]
pub struct Event {
    pub src: Addr32,
    pub dst: Addr32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub kind: u8,
    pub reason: u8,
    pub local_identity: u32,
    pub peer_identity: u32,
    pub policy_ref: u32,
    pub ifindex: u32,
}

/// The LPM trie keys (`aya_ebpf::maps::lpm_trie::Key<[u8; N]>`, a packed struct) with the
/// address word-aligned.
#[repr(C)]
pub struct Lpm4 {
    pub prefix_len: u32,
    pub data: u32,
}

#[repr(C)]
pub struct Lpm6 {
    pub prefix_len: u32,
    pub data: Addr32,
}

macro_rules! same_layout {
    ($ours:ty, $theirs:ty, $($field:ident),*) => {
        const _: () = {
            assert!(core::mem::size_of::<$ours>() == core::mem::size_of::<$theirs>());
            $(assert!(
                core::mem::offset_of!($ours, $field) == core::mem::offset_of!($theirs, $field)
            );)*
        };
    };
}

same_layout!(
    CtKey4,
    conntrack::CtKey4,
    src,
    dst,
    sport,
    dport,
    protocol,
    direction,
    _pad
);
same_layout!(
    CtKey6,
    conntrack::CtKey6,
    src,
    dst,
    sport,
    dport,
    protocol,
    direction,
    _pad
);
same_layout!(FragKey, conntrack::FragKey, src, dst, id, protocol);
same_layout!(EndpointKey, endpoint::EndpointKey, addr);
same_layout!(
    Event,
    event::Event,
    src,
    dst,
    sport,
    dport,
    protocol,
    direction,
    kind,
    reason,
    local_identity,
    peer_identity,
    policy_ref,
    ifindex
);
const _: () = assert!(core::mem::size_of::<Lpm4>() == 4 + 4);
const _: () = assert!(core::mem::size_of::<Lpm6>() == 4 + 16);
