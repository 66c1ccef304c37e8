//! The thread tracepoints of an already loaded probes object, attached to
//! one process, and their records turned into [`ThreadChange`]s for the
//! [`ThreadTable`].
//!
//! Usage (the session owns the [`Probes`] and the table):
//! ```ignore
//! let mut threads = ThreadProbes::attach(&mut probes, pid)?;
//! let mut table = ThreadTable::seed(pid)?;          // threads alive now
//! // ... whenever convenient (non-blocking; `as_raw_fd` polls readable):
//! threads.drain(&mut table);
//! let report = table.report(now_ns);                // one sample per call
//! ```
//! Attach before seeding: a thread created in between then shows up in
//! both, which the table absorbs; the other order would miss it.

use std::{
    os::fd::{AsRawFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use leaktrace_common::threads::{ThreadConfig, ThreadEvent, ThreadEventKind, ThreadNewStack};

use super::table::{Creator, ThreadChange, ThreadTable};
use crate::{
    probes::{Probes, ring::decode_record, tracefs},
    symbols::native::{NativeSymbols, unwind::StackCopy},
};

/// Program name in the probes object → tracepoint (category, name).
const PROGRAMS: [(&str, &str, &str); 3] = [
    ("thread_newtask", "task", "task_newtask"),
    ("thread_rename", "task", "task_rename"),
    ("thread_exit", "sched", "sched_process_exit"),
];

pub struct ThreadProbes {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// Losses already answered with a /proc reconcile.
    lost_seen: u64,
    /// Creation stacks → the program's own frame (built on first use).
    symbols: NativeSymbols,
    /// Records too short or of an unknown kind (never expected: counted so
    /// a mismatch between probes and decoder cannot go unnoticed).
    pub malformed: u64,
}

impl ThreadProbes {
    /// Point the thread programs of `ebpf` at `pid` and attach them. The
    /// links live in `ebpf`: dropping it detaches them.
    pub fn attach(probes: &mut Probes, pid: u32) -> Result<Self> {
        if pid == 0 {
            bail!("pid 0 cannot be traced");
        }
        let tracefs = tracefs::ensure_mounted()?;
        let config = config_for(&tracefs, pid)?;
        let mut target: Array<&mut MapData, ThreadConfig> = Array::try_from(
            probes
                .ebpf_mut()
                .map_mut("THREAD_TARGET")
                .ok_or_else(|| anyhow!("THREAD_TARGET map missing from the probes object"))?,
        )?;
        target.set(0, config, 0).context("setting THREAD_TARGET")?;
        for (name, category, event) in PROGRAMS {
            probes.attach_tracepoint(name, category, event)?;
        }
        let ebpf = probes.ebpf_mut();
        let take = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("{name} map missing from the probes object"))
        };
        Ok(Self {
            ring: RingBuf::try_from(take(ebpf, "THREAD_EVENTS")?)?,
            lost: PerCpuArray::try_from(take(ebpf, "THREAD_LOST")?)?,
            symbols: NativeSymbols::new(pid),
            lost_seen: 0,
            malformed: 0,
        })
    }

    /// Apply every record waiting in the ring to `table`; never blocks.
    pub fn drain(&mut self, table: &mut ThreadTable) {
        loop {
            // Copy the record out first: the ring item borrows the ring.
            let record = match self.ring.next() {
                None => break,
                Some(item) => match decode_record::<ThreadEvent>(&item) {
                    Some(ev) if ev.kind == ThreadEventKind::NewStack as u32 => {
                        decode_record::<ThreadNewStack>(&item)
                            .map(|r| Record::WithStack(Box::new(r)))
                    }
                    Some(ev) => Some(Record::Plain(ev)),
                    None => None,
                },
            };
            match record {
                Some(Record::WithStack(rec)) => {
                    let change = self.new_thread(&rec.event, Some(&rec));
                    table.apply(change);
                }
                Some(Record::Plain(ev)) => match self.change(&ev) {
                    Some(change) => table.apply(change),
                    None => self.malformed += 1,
                },
                None => self.malformed += 1,
            }
        }
        let lost = self.lost();
        if lost > self.lost_seen {
            // Some NEW or EXIT never arrived: /proc has the truth.
            table.reconcile();
            self.lost_seen = lost;
        }
        table.set_lost(lost);
    }

    /// Records the probes could not deliver (ring full), summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.lost_counter(0)
    }

    /// Thread creations delivered without their creator's stack.
    pub fn stacks_lost(&self) -> u64 {
        self.lost_counter(1)
    }

    fn lost_counter(&self, index: u32) -> u64 {
        self.lost
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    fn change(&mut self, ev: &ThreadEvent) -> Option<ThreadChange> {
        let name = comm(&ev.comm);
        Some(match ThreadEventKind::from_raw(ev.kind)? {
            ThreadEventKind::New => self.new_thread(ev, None),
            ThreadEventKind::Rename => ThreadChange::Rename { tid: ev.tid, name },
            ThreadEventKind::Exit => ThreadChange::Exit {
                ts_ns: ev.ts_ns,
                tid: ev.tid,
                name,
            },
            // Only ever sent with its stack, as a `ThreadNewStack`.
            ThreadEventKind::NewStack => return None,
        })
    }

    fn new_thread(&mut self, ev: &ThreadEvent, stack: Option<&ThreadNewStack>) -> ThreadChange {
        let site = stack.and_then(|rec| {
            let len = (rec.stack_len as usize).min(rec.stack.len());
            self.symbols.spawn_site(&StackCopy {
                ip: rec.ip,
                sp: rec.sp,
                bp: rec.bp,
                bytes: &rec.stack[..len],
            })
        });
        ThreadChange::New {
            ts_ns: ev.ts_ns,
            tid: ev.tid,
            creator: Creator {
                tid: ev.by_tid,
                thread: comm(&ev.comm),
                site,
            },
        }
    }
}

impl AsRawFd for ThreadProbes {
    /// Readable when records wait in the ring.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

enum Record {
    Plain(ThreadEvent),
    WithStack(Box<ThreadNewStack>),
}

fn config_for(tracefs: &Path, pid: u32) -> Result<ThreadConfig> {
    let field = |event: &str, name: &str, size: u32| -> Result<u32> {
        let f = tracefs::field(tracefs, event, name)?;
        if f.size != size {
            bail!(
                "{event}.{name} is {} bytes on this kernel, the probes expect {size}",
                f.size
            );
        }
        Ok(f.offset)
    };
    Ok(ThreadConfig {
        tgid: pid,
        newtask_pid: field("task/task_newtask", "pid", 4)?,
        newtask_clone_flags: field("task/task_newtask", "clone_flags", 8)?,
        rename_pid: field("task/task_rename", "pid", 4)?,
        rename_newcomm: field("task/task_rename", "newcomm", 16)?,
    })
}

/// A kernel `comm`: up to 15 bytes and a NUL, not necessarily UTF-8.
pub fn comm(raw: &[u8]) -> std::sync::Arc<str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into()
}
