//! The probes' ring-buffer records: any bytes decode to a record or to
//! nothing, for every record type, and Go events decode to a task event or
//! nothing.
#![no_main]

use leaktrace::{probes::ring::decode_record, runtime::go::events::decode};
use leaktrace_common::{
    follow::ExecEvent, go::GoEvent, threads::ThreadEvent, tokio::TokioEvent,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ev) = decode_record::<GoEvent>(data) {
        let _ = decode(&ev);
    }
    let _ = decode_record::<TokioEvent>(data);
    let _ = decode_record::<ThreadEvent>(data);
    let _ = decode_record::<ExecEvent>(data);
});
