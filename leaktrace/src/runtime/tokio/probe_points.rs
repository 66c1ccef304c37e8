//! Where the tokio probes go, found in the binary itself (no hashes, no
//! versions compiled in).
//!
//! Default mode is once per task: spawn at `OwnedTasks<S>::bind_inner`,
//! completion at `<Arc<Handle> as Schedule>::release` (or, where LTO removed
//! it, each `Harness<T, S>::complete`), cancellation at each vtable's
//! `raw::shutdown`, and the start of each blocking-pool task (its only
//! `raw::poll`, through the vtables). Detailed mode adds every poll
//! (`raw::poll`, through the vtables, so stripped binaries too) and every
//! wake (`waker::wake_by_*`).
//!
//! `bind_inner`, `release` and `complete` are found by demangled symbol
//! name. A stripped binary has none: there [`by_code`] finds `bind_inner`
//! and `release` by the code that reaches them from the task vtables
//! (`code_points`, x86-64), checked against this symbol plan on unstripped
//! builds of the same source (`tests/tests/tokio_binary.rs`). Where that
//! finds nothing either, the plan says so in its notes, the binary gets
//! shutdown and blocking-task probes (and, detailed, every poll) only, and
//! the session falls back to heap scans for spawns and completions. Wakes
//! are probed by symbol only.
use std::collections::BTreeSet;

use leaktrace_common::tokio::{TokioEventKind, tokio_cookie};

use super::code_points::{self, CodePoints};
use super::vtables::{POLL, Relocs, SHUTDOWN, TaskVtable};
use crate::{
    probes::AttachPoint,
    target::elf::{ElfFile, Machine},
};

/// Which probes a session gets, and what they cover.
#[derive(Clone, Debug, Default)]
pub struct TokioPlan {
    pub points: Vec<AttachPoint>,
    /// Spawns are seen (else only through heap scans).
    pub sees_spawns: bool,
    /// Completions are seen.
    pub sees_completions: bool,
    pub polls: bool,
    /// Blocking-pool tasks are seen when their closure starts: their one
    /// poll is probed (also without `polls`).
    pub blocking_starts: bool,
    /// What the plan could not cover and why, for the attach warnings.
    pub notes: Vec<String>,
}

/// The demangled path without hash; v0 and legacy alike.
fn demangled(name: &str) -> Option<String> {
    rustc_demangle::try_demangle(name)
        .ok()
        .map(|d| format!("{d:#}"))
}

fn is_bind_inner(d: &str) -> bool {
    // Legacy: `tokio::…::list::OwnedTasks<S>::bind_inner`; v0:
    // `<tokio::…::list::OwnedTasks<Arc<…>>>::bind_inner`. LocalSet's
    // `LocalOwnedTasks` is a different list (and inlines its own push).
    d.contains("tokio::runtime::task::list::OwnedTasks<") && d.ends_with(">::bind_inner")
}

fn is_schedule_release(d: &str) -> bool {
    // Every `impl Schedule for …` except the blocking pool's, whose tasks
    // are never bound and so never counted.
    // Legacy: `…::<impl tokio::runtime::task::Schedule for Arc<…>>::release`;
    // v0: `<Arc<…> as tokio::runtime::task::Schedule>::release`.
    d.ends_with(">::release")
        && (d.contains(" as tokio::runtime::task::Schedule>")
            || d.contains("<impl tokio::runtime::task::Schedule for "))
        && !d.contains("BlockingSchedule")
}

fn is_harness_complete(d: &str) -> bool {
    d.contains("tokio::runtime::task::harness::Harness<") && d.ends_with(">::complete")
}

fn is_wake(d: &str) -> bool {
    matches!(
        d,
        "tokio::runtime::task::waker::wake_by_val" | "tokio::runtime::task::waker::wake_by_ref"
    )
}

/// `(address, demangled)` of every function matching `pred`, by address.
fn functions(elf: &ElfFile, pred: impl Fn(&str) -> bool) -> Vec<(u64, String)> {
    let mut found: Vec<(u64, String)> = elf
        .functions_where(|n| n.starts_with("_ZN") || n.starts_with("_R"))
        .into_iter()
        .filter_map(|s| {
            let d = demangled(&s.name)?;
            pred(&d).then_some((s.value, d))
        })
        .collect();
    found.sort();
    found.dedup_by_key(|(a, _)| *a);
    found
}

pub fn plan(elf: &ElfFile, vtables: &[TaskVtable], detailed: bool) -> TokioPlan {
    let mut plan = TokioPlan::default();
    let add = |plan: &mut TokioPlan,
               va: u64,
               kind: TokioEventKind,
               arg: u8,
               by_ref: bool,
               what: String| {
        if let Some(file_offset) = elf.va_to_file_offset(va) {
            plan.points.push(AttachPoint {
                va,
                file_offset,
                cookie: tokio_cookie(kind, arg, by_ref),
                what,
            });
            true
        } else {
            plan.notes
                .push(format!("{what} at {va:#x} is not in the file; not probed"));
            false
        }
    };

    // bind_inner(&self, task: Task<S>, notified): the header is the 2nd
    // argument by value.
    let bind_inners = functions(elf, is_bind_inner);
    let releases = functions(elf, is_schedule_release);
    let completes = if releases.is_empty() {
        functions(elf, is_harness_complete)
    } else {
        Vec::new()
    };
    let need_code = bind_inners.is_empty() || (releases.is_empty() && completes.is_empty());
    for (va, d) in bind_inners {
        plan.sees_spawns |= add(&mut plan, va, TokioEventKind::Spawn, 1, false, d);
    }
    // release(&self, task: &Task<S>): `&Task` in the 2nd argument, or the
    // header itself after LTO's argument promotion; the probe tries both.
    let completes = if releases.is_empty() {
        // Harness::complete(self): the header, 1st argument.
        completes
            .into_iter()
            .map(|(va, d)| (va, d, 0, false))
            .collect::<Vec<_>>()
    } else {
        releases
            .into_iter()
            .map(|(va, d)| (va, d, 1, true))
            .collect()
    };
    for (va, d, arg, by_ref) in completes {
        plan.sees_completions |= add(&mut plan, va, TokioEventKind::Complete, arg, by_ref, d);
    }
    // Without those symbols, the same functions by the code that reaches
    // them (x86-64), with the same arguments.
    if need_code && let Some(found) = by_code(elf, vtables) {
        let by_shape = [
            (
                !plan.sees_spawns,
                &found.spawns,
                TokioEventKind::Spawn,
                false,
                "tokio::runtime::task::list::OwnedTasks::bind_inner",
            ),
            (
                !plan.sees_completions,
                &found.releases,
                TokioEventKind::Complete,
                true,
                "tokio::runtime::task::Schedule::release",
            ),
        ];
        for (missing, points, kind, by_ref, name) in by_shape {
            for (&va, &n) in points.iter().filter(|_| missing) {
                let what = format!(
                    "{name} (by code shape, {n} of {} task types)",
                    found.vtables
                );
                let seen = add(&mut plan, va, kind, 1, by_ref, what);
                match kind {
                    TokioEventKind::Spawn => plan.sees_spawns |= seen,
                    _ => plan.sees_completions |= seen,
                }
            }
        }
        plan.notes.extend(found.notes);
    }

    // The vtable functions exist in every build (their addresses are
    // taken), with the header as first argument by the fn-pointer ABI.
    // Under identical-code folding several vtables can share one function.
    let slot = |i: usize| vtables.iter().map(|v| v.fns[i]).collect::<BTreeSet<u64>>();
    for va in slot(SHUTDOWN) {
        add(
            &mut plan,
            va,
            TokioEventKind::Shutdown,
            0,
            false,
            "tokio::runtime::task::raw::shutdown".into(),
        );
    }
    if detailed {
        for va in slot(POLL) {
            plan.polls |= add(
                &mut plan,
                va,
                TokioEventKind::Poll,
                0,
                false,
                "tokio::runtime::task::raw::poll".into(),
            );
        }
        for (va, d) in functions(elf, is_wake) {
            add(&mut plan, va, TokioEventKind::Wake, 0, false, d);
        }
        plan.blocking_starts = plan.polls;
    } else {
        // A blocking-pool task is polled once, for its whole closure: a
        // probe there costs one hit per task, and sees it start (they are
        // never bound, so the spawn probe does not). Not where identical
        // code folding shares the function with an async task's poll, which
        // would fire at every poll of that task.
        let async_polls: BTreeSet<u64> = vtables
            .iter()
            .filter(|v| !v.runs_on_blocking_pool())
            .map(TaskVtable::poll)
            .collect();
        let blocking_polls: BTreeSet<u64> = vtables
            .iter()
            .filter(|v| v.runs_on_blocking_pool())
            .map(TaskVtable::poll)
            .filter(|va| !async_polls.contains(va))
            .collect();
        for va in blocking_polls {
            plan.blocking_starts |= add(
                &mut plan,
                va,
                TokioEventKind::Poll,
                0,
                false,
                "tokio::runtime::task::raw::poll (blocking task)".into(),
            );
        }
    }
    if !plan.sees_spawns {
        plan.notes.push(
            "no `OwnedTasks::bind_inner` symbol, and the code search (x86-64 only) did not \
             find it: new tasks are found by heap scans at each refresh, or at their first \
             poll with --detailed"
                .into(),
        );
    }
    if !plan.sees_completions {
        plan.notes.push(
            "no `Schedule::release` or `Harness::complete` symbol, and the code search \
             (x86-64 only) did not find `release`: finished tasks are noticed when a refresh \
             reads them"
                .into(),
        );
    }
    plan
}

/// The spawn and completion points found by code shape alone, ignoring any
/// symbols (what a stripped build of the same source gets). `None` where
/// the search does not apply (not x86-64).
pub fn by_code(elf: &ElfFile, vtables: &[TaskVtable]) -> Option<CodePoints> {
    if elf.machine() != Machine::X86_64 {
        return None;
    }
    let relocs = Relocs::read(elf);
    let word = |va: u64| relocs.word(elf, va).map(|(w, _)| w);
    Some(code_points::find(elf, vtables, &word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_shapes_in_both_manglings() {
        assert!(is_bind_inner(
            "tokio::runtime::task::list::OwnedTasks<S>::bind_inner"
        ));
        assert!(is_bind_inner(
            "<tokio::runtime::task::list::OwnedTasks<alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>>>::bind_inner"
        ));
        assert!(!is_bind_inner(
            "tokio::runtime::task::list::LocalOwnedTasks<S>::bind_inner"
        ));
        assert!(is_schedule_release(
            "tokio::runtime::scheduler::multi_thread::handle::<impl tokio::runtime::task::Schedule for alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>>::release"
        ));
        assert!(is_schedule_release(
            "<alloc::sync::Arc<tokio::runtime::scheduler::current_thread::Handle> as tokio::runtime::task::Schedule>::release"
        ));
        assert!(!is_schedule_release(
            "<tokio::runtime::blocking::schedule::BlockingSchedule as tokio::runtime::task::Schedule>::release"
        ));
        assert!(is_harness_complete(
            "tokio::runtime::task::harness::Harness<T,S>::complete"
        ));
    }
}
