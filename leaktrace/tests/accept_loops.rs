//! A server's connection goroutines are known for what they are by the
//! accept loop that made them: a function seen blocked accepting
//! connections stays an accept loop for the session. CI once called a
//! net/http server's 32 keep-alive connections a leak at 2 s because the
//! report was taken while the accept loop was between two accepts
//! (running, not in `accept`), so nothing on screen said those goroutines
//! were its connections (499e08f). These reports are built here from views,
//! as the session builds them.
use std::{collections::HashMap, sync::Arc};

use leaktrace::{
    aggregate::verdict::Rules,
    report::{
        build::{Moment, ReportBuilder, Shape},
        model::{EventTotals, Report, TargetInfo},
    },
    runtime::{Place, Since, TaskState, TaskView, go::GO},
    symbols::Frame,
    target::clock::monotonic_ns,
};

fn frame(function: &str, line: u32) -> Frame {
    Frame {
        function: Arc::from(function),
        file: Arc::from("/usr/lib/go/src/net/http/server.go"),
        line,
    }
}

/// Goroutines that have lived 5 s, created by `created_by`, in `state`
/// with `stack` (innermost first).
fn views(n: u64, created_by: &str, start: &str, state: TaskState, stack: &[&str]) -> Vec<TaskView> {
    let now = monotonic_ns();
    let waiting = state.is_waiting();
    let stack: Arc<[Frame]> = stack.iter().map(|f| frame(f, 100)).collect();
    let place = Arc::new(Place {
        state,
        never_ends: false,
        system: false,
        blocking: false,
        created_by: frame(created_by, 3300),
        via: None,
        start: frame(start, 2000),
        blocked_at: None,
        stack: if waiting { stack } else { Arc::from([]) },
        main: false,
        stack_unstable: false,
    });
    (0..n)
        .map(|i| TaskView {
            key: 0x1000 + i * 0x100 + (created_by.len() as u64) * 0x100_000,
            id: 100 + i,
            place: place.clone(),
            blocked_since: waiting.then(|| Since::Exact(now - 5_000_000_000)),
            alive_since: Since::Exact(now - 5_000_000_000),
            waits_on: Default::default(),
            stranded: Default::default(),
        })
        .collect()
}

fn accept_loop(state: TaskState) -> Vec<TaskView> {
    views(
        1,
        "main.main",
        "net/http.(*Server).Serve",
        state,
        &[
            "runtime.gopark",
            "internal/poll.(*FD).Accept",
            "net.(*netFD).accept",
            "net.(*TCPListener).accept",
            "net/http.(*Server).Serve",
        ],
    )
}

fn connections() -> Vec<TaskView> {
    views(
        32,
        "net/http.(*Server).Serve",
        "net/http.(*conn).serve",
        TaskState::Waiting("IO wait".into()),
        &[
            "runtime.gopark",
            "internal/poll.(*FD).Read",
            "net/http.(*connReader).Read",
            "net/http.(*conn).serve",
        ],
    )
}

fn builder() -> ReportBuilder {
    let target = TargetInfo {
        pid: 4242,
        exe: "/srv/api".into(),
        cmdline: None,
        runtime: GO,
        runtime_version: "go1.27.3".into(),
        symbols: "dwarf",
        warnings: Vec::new(),
    };
    let shape = Shape {
        top: 20,
        system: false,
        window_ns: 10_000_000_000,
        hang_s: 60.0,
    };
    ReportBuilder::new(shape, target, Rules::default(), Vec::new())
}

fn report(b: &ReportBuilder, views: &[TaskView]) -> Report {
    b.build(
        false,
        Moment::Live,
        EventTotals::default(),
        views,
        &HashMap::new(),
    )
}

fn connections_reason(r: &Report) -> String {
    r.groups
        .iter()
        .find(|g| &*g.created_by.function == "net/http.(*Server).Serve")
        .map(|g| g.why.clone())
        .expect("the connections' group")
}

#[test]
fn connections_stay_known_while_the_accept_loop_runs() {
    let mut b = builder();
    // A refresh saw the loop blocked in accept, with its connections.
    let mut first = accept_loop(TaskState::Waiting("IO wait".into()));
    first.extend(connections());
    b.record(&first, Some(33));
    // The report's own read catches the loop between two accepts.
    let mut later = accept_loop(TaskState::Running);
    later.extend(connections());
    let why = connections_reason(&report(&b, &later));
    assert!(
        why.contains("accept loop is serving"),
        "the accept loop seen earlier was forgotten: {why}"
    );

    // Control: a session that never saw the loop in accept cannot say it.
    let fresh = builder();
    let why = connections_reason(&report(&fresh, &later));
    assert!(
        !why.contains("accept loop"),
        "named an accept loop nobody saw: {why}"
    );
}
