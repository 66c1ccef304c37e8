//! `leaktrace-final`: the exit-time goroutine walk (issue #13), a probe
//! object of its own so that its ring is sized for the target at load time
//! and it loads and detaches independently of the lifecycle probes.
#![no_std]
#![no_main]

mod go_final;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects anything that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
