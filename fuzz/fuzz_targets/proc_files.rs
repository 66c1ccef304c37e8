//! `harness::proc_files` under libFuzzer (what it parses: `fuzz/harness.rs`).
#![no_main]

#[allow(dead_code)] // each target uses one of the harness's functions
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::proc_files(data));
