//! Partial deadlocks: tasks a memory walk proved are waiting for each other
//! (see `runtime::go::reachability`), listed member by member so a person
//! can check each one against a goroutine dump: its id, where it was
//! created, where it is stuck, and on which channel.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::runtime::{Stranded, TaskView};

#[derive(Clone, Debug, Serialize)]
pub struct PartialDeadlock {
    /// How many tasks are in it (`participants` lists at most ten).
    pub members: u64,
    pub participants: Vec<Participant>,
    /// How long the most recently blocked participant has been blocked.
    pub blocked_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Participant {
    pub id: u64,
    /// `function (file:line)` of the `go` statement.
    pub created_by: String,
    pub blocked_at: Option<String>,
    /// Each operation it waits in: `send on chan 0xc000012345`.
    pub waits: Vec<String>,
}

/// Most deadlocks listed, and members shown per deadlock (the count is
/// always complete).
const MAX_SHOWN: usize = 10;

/// The deadlocks among `views`, largest first.
pub fn partial<'v>(
    views: impl IntoIterator<Item = &'v TaskView>,
    now_ns: u64,
) -> Vec<PartialDeadlock> {
    let mut by_id: BTreeMap<u64, Vec<&TaskView>> = BTreeMap::new();
    for v in views {
        if let Some(Stranded::Deadlock(id)) = v.stranded.get() {
            by_id.entry(id).or_default().push(v);
        }
    }
    let mut out: Vec<PartialDeadlock> = by_id
        .into_values()
        .map(|mut members| {
            members.sort_by_key(|v| v.id);
            let blocked_s = members
                .iter()
                .filter_map(|v| v.blocked_since)
                .map(|s| now_ns.saturating_sub(s.ns()) as f64 / 1e9)
                .fold(f64::INFINITY, f64::min);
            let participants = members
                .iter()
                .take(MAX_SHOWN)
                .map(|v| Participant {
                    id: v.id,
                    created_by: format!(
                        "{} ({}:{})",
                        v.place.created_by.function,
                        v.place.created_by.file,
                        v.place.created_by.line
                    ),
                    blocked_at: v.place.blocked_at.as_ref().map(|f| f.function.to_string()),
                    waits: v
                        .waits_on
                        .iter()
                        .map(|w| format!("{} on chan {:#x}", w.dir.label(), w.chan))
                        .collect(),
                })
                .collect();
            PartialDeadlock {
                members: members.len() as u64,
                participants,
                blocked_s: if blocked_s.is_finite() {
                    blocked_s
                } else {
                    0.0
                },
            }
        })
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(d.members));
    out.truncate(MAX_SHOWN);
    out
}
