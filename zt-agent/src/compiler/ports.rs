//! Port ranges as aligned prefix blocks, the form `zt_policy` keys hold them in.

/// The minimal set of aligned `(base, prefix)` blocks covering `lo..=hi`: at most 2 per bit.
pub fn range_blocks(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut blocks = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // The largest block aligned at `lo` that does not pass `hi`.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        blocks.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    blocks
}

/// The IP protocol number for a NetworkPolicy or container port protocol name.
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(zt_common::proto::TCP),
        "UDP" => Some(zt_common::proto::UDP),
        "SCTP" => Some(zt_common::proto::SCTP),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use zt_common::policy::tuple::mask_port;

    use super::*;

    #[test]
    fn known_ranges() {
        assert_eq!(range_blocks(80, 80), vec![(80, 16)]);
        assert_eq!(range_blocks(0, 65535), vec![(0, 0)]);
        assert_eq!(range_blocks(8080, 8083), vec![(8080, 14)]);
        assert_eq!(range_blocks(1, 3), vec![(1, 16), (2, 15)]);
    }

    proptest! {
        #[test]
        fn blocks_cover_exactly_the_range(a: u16, b: u16, probe: u16) {
            let (lo, hi) = (a.min(b), a.max(b));
            let blocks = range_blocks(lo, hi);
            prop_assert!(blocks.len() <= 32);
            let covered = blocks.iter().filter(|(base, prefix)| mask_port(probe, *prefix) == *base).count();
            prop_assert_eq!(covered, usize::from((lo..=hi).contains(&probe)));
        }
    }
}
