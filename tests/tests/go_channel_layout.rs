//! leaktrace's version table of the channel structures it reads
//! (`leaktrace/src/runtime/go/chan_layout.rs`: `g.waiting`, `runtime.sudog`,
//! `runtime.hchan`, `runtime.waitq`, `runtime.timer`, the per-P timer heap)
//! against the DWARF of a program built with every installed Go toolchain,
//! for linux/amd64 and linux/arm64.
//!
//! The program (`go_channel_layout/main.go`) prints the offsets with Go's
//! own `debug/dwarf`, so this also checks leaktrace's reading of DWARF
//! without using it. No eBPF, no root: it runs everywhere Go is installed.
use std::{collections::HashMap, path::Path};

use leaktrace_e2e::{GoToolchain, build::go_command, go_toolchains};

#[allow(dead_code)]
#[path = "../../leaktrace/src/runtime/go/chan_layout.rs"]
mod chan_layout;
use chan_layout::ChanLayout;

/// type → (size, field → offset), as the program printed them.
type Structs = HashMap<String, (u32, HashMap<String, u32>)>;

fn parse(out: &str) -> Structs {
    let mut structs = Structs::new();
    let mut current = String::new();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["type", name, "size", size] => {
                current = name.to_string();
                structs.insert(current.clone(), (size.parse().unwrap(), HashMap::new()));
            }
            ["field", name, off] => {
                let st = structs.get_mut(&current).expect("field before type");
                st.1.insert(name.to_string(), off.parse().unwrap());
            }
            _ => panic!("unexpected line from the layout program: {line}"),
        }
    }
    structs
}

/// The layout as leaktrace defines each field, from Go's DWARF.
fn layout_from(s: &Structs) -> ChanLayout {
    let f = |t: &str, field: &str| -> u32 {
        *s.get(t)
            .unwrap_or_else(|| panic!("no type {t}"))
            .1
            .get(field)
            .unwrap_or_else(|| panic!("no field {t}.{field}"))
    };
    let opt = |t: &str, field: &str| s.get(t).and_then(|st| st.1.get(field).copied());
    let size = |t: &str| s[t].0;
    // Go ≥ 1.26: sudog.c is maybeTraceableChan{maybeTraceablePtr{vp, vu}}.
    let c_inner = match opt("runtime.maybeTraceableChan", "maybeTraceablePtr") {
        Some(off) => off + f("runtime.maybeTraceablePtr", "vu"),
        None => 0,
    };
    let (p_timer_heap, stride) = match opt("runtime.timers", "heap") {
        Some(heap) => (f("runtime.p", "timers") + heap, size("runtime.timerWhen")),
        None => (f("runtime.p", "timers"), 8),
    };
    let q = |queue: &str, end: &str| f("runtime.hchan", queue) + f("runtime.waitq", end);
    ChanLayout {
        g_waiting: f("runtime.g", "waiting"),
        sudog_g: f("runtime.sudog", "g"),
        sudog_next: f("runtime.sudog", "next"),
        sudog_prev: f("runtime.sudog", "prev"),
        sudog_is_select: f("runtime.sudog", "isSelect"),
        sudog_waitlink: f("runtime.sudog", "waitlink"),
        sudog_c: f("runtime.sudog", "c") + c_inner,
        sizeof_sudog: size("runtime.sudog"),
        hchan_qcount: f("runtime.hchan", "qcount"),
        hchan_dataqsiz: f("runtime.hchan", "dataqsiz"),
        hchan_elemsize: f("runtime.hchan", "elemsize"),
        hchan_closed: f("runtime.hchan", "closed"),
        hchan_timer: opt("runtime.hchan", "timer"),
        hchan_elemtype: f("runtime.hchan", "elemtype"),
        hchan_recvq_first: q("recvq", "first"),
        hchan_recvq_last: q("recvq", "last"),
        hchan_sendq_first: q("sendq", "first"),
        hchan_sendq_last: q("sendq", "last"),
        sizeof_hchan: size("runtime.hchan"),
        timer_when: f("runtime.timer", "when"),
        timer_period: f("runtime.timer", "period"),
        timer_status: opt("runtime.timer", "state").unwrap_or_else(|| f("runtime.timer", "status")),
        timer_arg: f("runtime.timer", "arg"),
        timer_is_chan: opt("runtime.timer", "isChan"),
        sizeof_timer: size("runtime.timer"),
        p_timer_heap: Some(p_timer_heap),
        timer_heap_stride: stride,
    }
}

fn build(go: &GoToolchain, goarch: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go_channel_layout");
    let st = go_command(go, &src)
        .env("GOARCH", goarch)
        .arg("build")
        .arg("-o")
        .arg(out)
        .arg(".")
        .status()
        .expect("running go build");
    assert!(st.success(), "go build ({}, {goarch}) failed", go.full);
}

#[test]
fn channel_layout_table_matches_dwarf() {
    let gos = go_toolchains();
    assert!(
        !gos.is_empty(),
        "no Go toolchain installed: run `cargo xtask setup --all-go`"
    );
    let dir = std::env::temp_dir().join(format!("leaktrace-chanlayout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for go in &gos {
        let Some(table) = ChanLayout::for_minor(go.minor()) else {
            failures.push(format!("{}: no table entry", go.full));
            continue;
        };
        let host = dir.join(format!("{}-amd64", go.full));
        build(go, "amd64", &host);
        let arm = dir.join(format!("{}-arm64", go.full));
        build(go, "arm64", &arm);
        for (arch, bin) in [("amd64", &host), ("arm64", &arm)] {
            let out = std::process::Command::new(&host)
                .arg(bin)
                .output()
                .expect("running the layout program");
            assert!(out.status.success(), "{} {arch}: {out:?}", go.full);
            let dwarf = layout_from(&parse(&String::from_utf8_lossy(&out.stdout)));
            let diff = table.differences(&dwarf);
            println!(
                "{:<10} {arch}: {}",
                go.full,
                if diff.is_empty() {
                    "table == DWARF".to_string()
                } else {
                    format!("{diff:?}")
                }
            );
            for (field, t, d) in diff {
                failures.push(format!(
                    "{} {arch}: {field} is {t} in the table, {d} in DWARF",
                    go.full
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
