//! Every record the probes write, round-tripped through userspace's decoders:
//! the bytes a probe would put in the ring (the struct's memory, as
//! `RingBuf::output` copies it) come back as the same values, batches split
//! them at the right stride, and every event kind survives its integer form.
use leaktrace::{
    probes::ring::{RecordBatch, decode_record},
    runtime::go::events::{TaskEventKind, decode},
};
use leaktrace_common::{
    go::{GoEvent, GoEventKind},
    threads::{THREAD_STACK_BYTES, ThreadEvent, ThreadEventKind, ThreadNewStack},
    tokio::{TokioEvent, TokioEventKind, tokio_cookie},
};

/// The bytes of a record as the probe writes them.
fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: reading the memory of a plain-old-data value.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

#[test]
fn go_records_round_trip_into_task_events() {
    let kinds = [
        (GoEventKind::Spawn, 1),
        (GoEventKind::Park, 2),
        (GoEventKind::Exit, 3),
    ];
    for (i, (kind, raw)) in kinds.into_iter().enumerate() {
        assert_eq!(kind as u8, raw);
        assert_eq!(GoEventKind::from_raw(raw), Some(kind));
        let ev = GoEvent {
            ts_ns: 1_000 + i as u64,
            g: 0x00c0_0000_1000 + i as u64,
            goid: 42,
            gopc: 0x4a_1234,
            startpc: 0x4a_5678,
            parent_goid: 7,
            kind: kind as u8,
            wait_reason: 15,
            _pad: [0; 6],
            via_pcs: [0x4a_9abc, 0x4a_def0],
        };
        let back: GoEvent = decode_record(&bytes_of(&ev)).expect("a whole record");
        assert_eq!(back, ev);
        let task = decode(&back).expect("a known kind");
        assert_eq!((task.ts_ns, task.key, task.id), (ev.ts_ns, ev.g, ev.goid));
        match (kind, task.kind) {
            (
                GoEventKind::Spawn,
                TaskEventKind::Spawn {
                    created_pc,
                    via_pcs,
                },
            ) => assert_eq!((created_pc, via_pcs), (0x4a_1234, [0x4a_9abc, 0x4a_def0])),
            (GoEventKind::Park, TaskEventKind::Park) => {}
            (GoEventKind::Exit, TaskEventKind::Exit) => {}
            other => panic!("kind changed on the way: {other:?}"),
        }
    }
    assert_eq!(GoEventKind::from_raw(0), None);
    let unknown = GoEvent {
        kind: 9,
        ..GoEvent::default()
    };
    assert!(decode(&unknown).is_none(), "an unknown kind is dropped");
    // A short record is refused, not read past its end.
    assert!(decode_record::<GoEvent>(&[0u8; 71]).is_none());
}

#[test]
fn tokio_records_and_cookies_round_trip() {
    for kind in [
        TokioEventKind::Spawn,
        TokioEventKind::Complete,
        TokioEventKind::Shutdown,
        TokioEventKind::Poll,
        TokioEventKind::Wake,
    ] {
        assert_eq!(TokioEventKind::from_raw(kind as u8), Some(kind));
        // The probe reads the kind from the cookie's low byte, the argument
        // register from the next, the by-reference flag from bit 16.
        let cookie = tokio_cookie(kind, 2, true);
        assert_eq!(cookie as u8, kind as u8);
        assert_eq!((cookie >> 8) as u8, 2);
        assert_eq!(cookie >> 16 & 1, 1);
        let ev = TokioEvent {
            ts_ns: 5,
            header: 0x7f00_dead_beef,
            id: 12,
            vtable: 0x55_0000_1000,
            tid: 4321,
            kind: kind as u8,
            found_as: 3,
            _pad: [0; 2],
        };
        let back: TokioEvent = decode_record(&bytes_of(&ev)).expect("a whole record");
        assert_eq!(back, ev);
    }
    assert_eq!(TokioEventKind::from_raw(0), None);
    assert!(decode_record::<TokioEvent>(&[0u8; 39]).is_none());
}

#[test]
fn thread_records_round_trip_and_tell_their_type_apart() {
    for kind in [
        ThreadEventKind::New,
        ThreadEventKind::Rename,
        ThreadEventKind::Exit,
        ThreadEventKind::NewStack,
    ] {
        assert_eq!(ThreadEventKind::from_raw(kind as u32), Some(kind));
    }
    let mut comm = [0u8; 16];
    comm[..6].copy_from_slice(b"worker");
    let head = ThreadEvent {
        kind: ThreadEventKind::NewStack as u32,
        tid: 11,
        ts_ns: 99,
        by_tid: 10,
        _pad: 0,
        comm,
    };
    let mut stack = [0u8; THREAD_STACK_BYTES];
    stack[..4].copy_from_slice(&[1, 2, 3, 4]);
    let rec = ThreadNewStack {
        event: head,
        ip: 0x1000,
        sp: 0x7ffc_0000,
        bp: 0x7ffc_0040,
        stack_len: 4,
        _pad: 0,
        stack,
    };
    let bytes = bytes_of(&rec);
    // Userspace reads the head first to learn the record's type.
    let first: ThreadEvent = decode_record(&bytes).expect("head");
    assert_eq!(first, head);
    let back: ThreadNewStack = decode_record(&bytes).expect("whole record");
    assert_eq!(
        (back.ip, back.sp, back.bp, back.stack_len),
        (0x1000, 0x7ffc_0000, 0x7ffc_0040, 4)
    );
    assert_eq!(&back.stack[..4], &[1, 2, 3, 4]);
    assert!(decode_record::<ThreadNewStack>(&bytes[..bytes.len() - 1]).is_none());
}

#[test]
fn batches_split_at_the_record_size() {
    let evs: Vec<GoEvent> = (0..3)
        .map(|i| GoEvent {
            g: i,
            kind: GoEventKind::Exit as u8,
            ..GoEvent::default()
        })
        .collect();
    let batch = RecordBatch {
        bytes: evs.iter().flat_map(bytes_of).collect(),
        stride: size_of::<GoEvent>(),
    };
    assert_eq!(batch.len(), 3);
    let back: Vec<GoEvent> = batch
        .records()
        .map(|r| decode_record(r).expect("record"))
        .collect();
    assert_eq!(back, evs);
}
