use super::*;

const S: u64 = 1_000_000_000;

fn creator(thread: &str, site: Option<&str>) -> Creator {
    Creator {
        tid: 1,
        thread: thread.into(),
        site: site.map(|f| Frame {
            function: f.into(),
            file: "src/main.rs".into(),
            line: 7,
        }),
    }
}

fn new(table: &mut ThreadTable, ts_ns: u64, tid: u32, c: &Creator, name: &str) {
    table.apply(ThreadChange::New {
        ts_ns,
        tid,
        creator: c.clone(),
    });
    table.apply(ThreadChange::Rename {
        tid,
        name: name.into(),
    });
}

fn exit(table: &mut ThreadTable, ts_ns: u64, tid: u32) {
    table.apply(ThreadChange::Exit {
        ts_ns,
        tid,
        name: "".into(),
    });
}

/// The group whose folded pattern is `pattern`.
fn group<'r>(r: &'r ThreadsReport, pattern: &str) -> &'r ThreadGroupReport {
    r.groups
        .iter()
        .find(|g| g.pattern == pattern)
        .unwrap_or_else(|| panic!("no group {pattern} in {r:#?}"))
}

/// Digits are folded to group, never in what is shown: the names and the
/// creating thread's name as the program set them.
#[test]
fn names_are_shown_as_set_and_grouped_folded() {
    let mut t = ThreadTable::empty(100);
    let v8 = creator("V8 Platform 2", None);
    for (tid, name) in [(201, "V8 DefaultWorke"), (202, "V8 DefaultWorke")] {
        new(&mut t, 0, tid, &v8, name);
    }
    let main = creator("app", Some("app::serve"));
    for tid in [310, 302, 309] {
        new(&mut t, 0, tid, &main, &format!("conn-{tid}"));
    }
    new(&mut t, 0, 400, &main, "pool-2");
    new(&mut t, 0, 401, &main, "pool-10");
    let r = t.report(S);
    let g = group(&r, "V# DefaultWorke");
    assert_eq!((g.name.as_str(), g.count), ("V8 DefaultWorke", 2));
    assert_eq!(g.names, ["V8 DefaultWorke"]);
    assert_eq!(g.created_by, "thread `V8 Platform 2`");
    let g = group(&r, "conn-#");
    assert_eq!(g.name, "conn-302 … conn-310");
    assert_eq!(g.names, ["conn-302", "conn-309", "conn-310"]);
    assert_eq!(group(&r, "pool-#").name, "pool-2, pool-10");
}

#[test]
fn names_fold_digit_runs() {
    assert_eq!(fold_digits("conn-17"), "conn-#");
    assert_eq!(fold_digits("pool-1-thread-25"), "pool-#-thread-#");
    assert_eq!(fold_digits("tokio-rt-worker"), "tokio-rt-worker");
}

#[test]
fn a_group_that_only_grows_is_growing_and_a_pool_is_not() {
    let mut t = ThreadTable::empty(100);
    let main = creator("app", Some("app::serve"));
    let rt = creator("app", None);
    // A pool of 4 started at once, before the first sample.
    for tid in 200..204 {
        new(&mut t, 0, tid, &rt, "tokio-rt-worker");
    }
    let mut tid = 300;
    for tick in 0..6u64 {
        // One leaked thread per connection per tick.
        for _ in 0..2 {
            new(&mut t, tick * S, tid, &main, &format!("conn-{tid}"));
            tid += 1;
        }
        let r = t.report(tick * S + S / 2);
        let conn = group(&r, "conn-#");
        assert_eq!(conn.count, 2 * (tick + 1));
        assert_eq!(conn.created_by, "app::serve (main.rs:7)");
        let expect = if tick >= 3 {
            ThreadVerdict::Growing
        } else {
            ThreadVerdict::Ok
        };
        assert_eq!(conn.verdict, expect, "tick {tick}: {}", conn.why);
        let pool = group(&r, "tokio-rt-worker");
        assert_eq!(pool.verdict, ThreadVerdict::Ok, "{}", pool.why);
        assert_eq!(pool.created_by, "thread `app`");
        assert_eq!(pool.growth_per_s, 0.0);
    }
    let r = t.report(6 * S);
    assert_eq!(r.live, 4 + 12);
    assert_eq!((r.created, r.exited), (16, 0));
    let conn = group(&r, "conn-#");
    assert!(
        (conn.growth_per_s - 2.0).abs() < 0.2,
        "{}",
        conn.growth_per_s
    );
    assert!(conn.why.contains("only grows"), "{}", conn.why);
    assert!((conn.oldest_s - 6.0).abs() < 1e-9);
}

#[test]
fn threads_that_also_exit_are_not_growing() {
    let mut t = ThreadTable::empty(100);
    let c = creator("app", Some("app::handle"));
    let mut tid = 300;
    for tick in 0..8u64 {
        // Two start, one of the earlier ones ends: still a net rise.
        for _ in 0..2 {
            new(&mut t, tick * S, tid, &c, "handler");
            tid += 1;
        }
        if tick > 0 {
            exit(&mut t, tick * S, 300 + tick as u32);
        }
        t.report(tick * S + S / 2);
    }
    let r = t.report(8 * S);
    let g = group(&r, "handler");
    assert_eq!(g.verdict, ThreadVerdict::Ok, "{}", g.why);
    assert!(g.growth_per_s > 0.0);
    assert_eq!(r.exited, 7);
}

#[test]
fn new_event_refines_a_thread_seen_in_proc_and_keeps_its_name() {
    let mut t = ThreadTable::empty(100);
    // As if listed in /proc after it was created and renamed.
    t.threads.insert(
        101,
        Thread {
            name: "worker".into(),
            created_by: CreatedBy::BeforeAttach,
            born_ns: 5 * S,
            from_proc: true,
        },
    );
    t.apply(ThreadChange::New {
        ts_ns: 3 * S,
        tid: 101,
        creator: creator("app", Some("app::start")),
    });
    let r = t.report(10 * S);
    assert_eq!(r.live, 1);
    let g = group(&r, "worker");
    assert_eq!(g.created_by, "app::start (main.rs:7)");
    assert!((g.oldest_s - 7.0).abs() < 1e-9);
    // A second NEW for a live, announced tid: its EXIT was lost and the
    // tid reused; the old thread is replaced, not double counted.
    t.apply(ThreadChange::New {
        ts_ns: 11 * S,
        tid: 101,
        creator: creator("app", None),
    });
    assert_eq!(t.live(), 1);
    // Exits of threads never seen (gone before attach) change nothing.
    exit(&mut t, 12 * S, 999);
    assert_eq!((t.live(), t.exited), (1, 0));
}

#[test]
fn proc_stat_start_time() {
    let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 \
                3 0 123456 1000000 200 18446744073709551615";
    assert_eq!(start_ticks(stat), Some(123456));
    let c = Clocks {
        monotonic_ns: 2000 * S,
        boottime_ns: 2010 * S,
        ticks_per_s: 100,
    };
    // 1234.56 s after boot, 10 s of which the machine was suspended.
    assert_eq!(c.monotonic_from_ticks(123456), 1224 * S + 560_000_000);
}
