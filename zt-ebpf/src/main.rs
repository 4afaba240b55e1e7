//! zt's kernel programs. Placeholder entry points until the datapath lands.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

#[classifier]
pub fn zt_from_pod(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[classifier]
pub fn zt_to_pod(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[classifier]
pub fn zt_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
