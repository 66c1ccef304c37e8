//! The leak corpus: every leak class from the field and the controls that
//! must not be called leaks, each checked against its own runtime's count
//! and goroutine profile, on the Go version matrix. `cargo xtask test
//! --all-go` runs every installed release instead of the default four.
mod common;

use common::*;
use leaktrace_e2e::{BuildMode, Expect, GoToolchain, Kind, pick};

const VERSIONS: &[&str] = &["1.19", "1.22", "1.24", "1.26"];

fn check(name: &str, go: &GoToolchain, mode: BuildMode) -> String {
    let bin = build(name, go, mode);
    let run = run_command_mode(&bin, &["-leak-for", "2s", "-hold", "20s"], "4s");
    match Expect::load(name).kind {
        Kind::Leak => check_leak(name, go, mode, &run),
        Kind::Control => check_control(name, go, mode, &run),
    }
}

fn corpus(name: &str) {
    if !ebpf_available(name) {
        return;
    }
    let gos = matrix(VERSIONS);
    for go in &gos {
        println!("{}", check(name, go, BuildMode::Plain));
    }
}

/// `-s -w` and PIE builds of a fixture, on the oldest and newest releases.
fn build_modes(name: &str) {
    if !ebpf_available(name) {
        return;
    }
    for go in pick(&["1.19", "1.26"]) {
        for mode in [BuildMode::Stripped, BuildMode::Pie] {
            println!("{}", check(name, &go, mode));
        }
    }
}

#[test]
fn chan_recv() {
    corpus("chan_recv");
}

#[test]
fn nil_chan() {
    corpus("nil_chan");
}

#[test]
fn select_forever() {
    corpus("select_forever");
}

#[test]
fn waitgroup() {
    corpus("waitgroup");
}

#[test]
fn mutex() {
    corpus("mutex");
}

#[test]
fn timer() {
    corpus("timer");
}

#[test]
fn netio() {
    corpus("netio");
}

#[test]
fn errgroup() {
    corpus("errgroup");
}

#[test]
fn pool_drain() {
    corpus("pool_drain");
}

#[test]
fn demo_service() {
    corpus("demo");
}

#[test]
fn control_pool_idle() {
    corpus("pool_idle");
}

#[test]
fn control_steady_server() {
    corpus("steady_server");
}

#[test]
fn control_busy_loop() {
    corpus("busy_loop");
}

#[test]
fn build_modes_waitgroup() {
    build_modes("waitgroup");
}

#[test]
fn build_modes_mutex() {
    build_modes("mutex");
}
