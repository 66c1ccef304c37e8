//! Probe records → goroutine lifecycle events, and the probes' configuration.
use leaktrace_common::go::{GoConfig, GoEvent, GoEventKind};

use super::{layout::GLayout, wait_reason::gstatus};

/// A lifecycle event of one goroutine, in the order the probes saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The goroutine's `runtime.g` address. Unique among live goroutines;
    /// reused only after its Exit.
    pub key: u64,
    /// goid; 0 when not known yet.
    pub id: u64,
    pub kind: TaskEventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskEventKind {
    Spawn {
        /// Return address of the spawning call (gopc). (The start pc and
        /// the parent are read from the g at each refresh, not here.)
        created_pc: u64,
        /// Return addresses above the `go` statement's frame in the
        /// creator's stack (its caller, the caller's caller); 0 = unknown.
        via_pcs: [u64; 2],
    },
    /// (The wait reason is read from the g at each refresh.)
    Park,
    Exit,
}

pub fn decode(ev: &GoEvent) -> Option<TaskEvent> {
    let kind = match GoEventKind::from_raw(ev.kind)? {
        GoEventKind::Spawn => TaskEventKind::Spawn {
            created_pc: ev.gopc,
            via_pcs: ev.via_pcs,
        },
        GoEventKind::Park => TaskEventKind::Park,
        GoEventKind::Exit => TaskEventKind::Exit,
    };
    Some(TaskEvent {
        ts_ns: ev.ts_ns,
        key: ev.g,
        id: ev.goid,
        kind,
    })
}

pub fn probe_config(l: &GLayout) -> GoConfig {
    GoConfig {
        g_goid: l.g_goid,
        g_gopc: l.g_gopc,
        gstatus_dead: gstatus::DEAD,
        // The walk needs frame pointers only (from newproc1's own, see
        // leaktrace-ebpf's `creator_callers`), which every Go release on
        // amd64 keeps.
        walk_creators: 1,
    }
}
