//! The verifier accepts every program on this kernel, and the object declares exactly the maps
//! the contract names. A rejection fails with the verifier log.

use zt_common::names;
use zt_tests::kernel::Datapath;

#[test]
fn verifier_accepts_every_program() {
    let dp = match Datapath::load() {
        Ok(dp) => dp,
        Err(e) => panic!("{e:#}"),
    };
    for name in names::PINNED_MAPS {
        assert!(
            dp.pin_dir().join(name).exists(),
            "map {name} is not pinned by name"
        );
    }
}
