//! What the exports (pprof, folded stacks, metrics) call each group and
//! which groups they cover: every group of a report, shown or omitted, so
//! their counts add up to `live`.
use super::{
    model::{GroupReport, Report},
    text::site,
};
use crate::{aggregate::verdict::Verdict, symbols::Frame};

/// Every group of the report: those shown first, then those `--top` and
/// `--older` left out of the text and JSON.
pub fn all_groups(report: &Report) -> impl Iterator<Item = &GroupReport> {
    report.groups.iter().chain(&report.omitted)
}

/// The group's stack, innermost first; a group whose stack could not be
/// read (a tokio task without DWARF) is its start frame alone, so each
/// group still has a place in a profile.
pub fn frames(g: &GroupReport) -> Vec<&Frame> {
    if g.stack.is_empty() {
        vec![&g.start]
    } else {
        g.stack.iter().collect()
    }
}

pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Leak => "leak",
        Verdict::Suspect => "suspect",
        Verdict::Ok => "ok",
    }
}

/// The creation site as the text report says it, with the spawn helper's
/// caller when the group was split by it.
pub fn created_by(g: &GroupReport) -> String {
    match &g.created_via {
        Some(via) => format!("{} via {}", site(&g.created_by), site(via)),
        None => site(&g.created_by),
    }
}

/// Where the members wait (the first frame of the program's own code),
/// empty when they do not.
pub fn wait(g: &GroupReport) -> String {
    g.blocked_at.as_ref().map(site).unwrap_or_default()
}

/// How long the longest-blocked member has been blocked, in seconds (a
/// lower bound for tasks blocked since before attach); None when the group
/// is not blocked or durations are unknown (tokio without `--detailed`).
pub fn blocked_max_s(g: &GroupReport) -> Option<f64> {
    g.blocked_s.map(|b| b.max)
}
