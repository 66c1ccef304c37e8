//! leaktrace's probes. One module per runtime; shared maps in `maps`.
//!
//! Everything specific to the traced binary (field offsets, status values)
//! comes in through read-only globals set by the loader, so one object serves
//! every Go version.
#![no_std]
#![no_main]

mod follow;
mod go;
mod maps;
mod threads;
mod tokio;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects anything that could reach here; the loop only
    // satisfies the type system.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
