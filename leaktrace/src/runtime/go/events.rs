//! Probe records → runtime-neutral events, and the probes' configuration.
use leaktrace_common::{EventKind, GoConfig, GoEvent};

use super::{layout::GLayout, wait_reason::gstatus};
use crate::runtime::{TaskEvent, TaskEventKind};

pub fn decode(ev: &GoEvent) -> Option<TaskEvent> {
    let kind = match EventKind::from_u8(ev.kind)? {
        EventKind::Spawn => TaskEventKind::Spawn {
            created_pc: ev.gopc,
            start_pc: ev.startpc,
            parent_id: ev.parent_goid,
        },
        EventKind::Park => TaskEventKind::Park {
            reason: ev.wait_reason,
        },
        EventKind::Exit => TaskEventKind::Exit,
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
        g_startpc: l.g_startpc,
        g_waitreason: l.g_waitreason,
        g_parent_goid: l.g_parent_goid.unwrap_or(0),
        g_m: l.g_m,
        m_curg: l.m_curg,
        gstatus_dead: gstatus::DEAD,
    }
}
