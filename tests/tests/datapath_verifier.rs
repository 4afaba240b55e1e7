//! The verifier accepts every program on this kernel with room to spare, and the object declares
//! exactly the maps the contract names. A rejection fails with the verifier log.

use zt_common::names;
use zt_tests::kernel::{Datapath, Hook};

/// The verifier gives up at 1M processed instructions, and older kernels prune less than this
/// one. Fail here first, with the numbers, when a change eats into the headroom (each program of
/// the pair takes ~94k on Linux 6.18; see README, *Datapath*).
const VERIFIER_BUDGET: u32 = 300_000;

#[test]
fn verifier_accepts_every_program() {
    let mut dp = match Datapath::load() {
        Ok(dp) => dp,
        Err(e) => panic!("{e:#}"),
    };
    for name in names::PINNED_MAPS {
        assert!(
            dp.pin_dir().join(name).exists(),
            "map {name} is not pinned by name"
        );
    }
    for hook in [Hook::FromPod, Hook::ToPod, Hook::Baseline, Hook::BenchFlow] {
        let info = dp.program(hook).info().expect("program info");
        let processed = info
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16+)");
        eprintln!(
            "{}: {processed} instructions processed by the verifier",
            hook.program_name()
        );
        assert!(
            processed < VERIFIER_BUDGET,
            "{} took {processed} verifier steps, over the {VERIFIER_BUDGET} budget",
            hook.program_name()
        );
    }
}
