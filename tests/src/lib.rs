//! Test corpus and harness for leaktrace's end-to-end tests.
//!
//! * [`toolchain`]: find the installed Go toolchains ([`go_toolchains`],
//!   [`pick`]).
//! * [`build`]: build a fixture program from `tests/fixtures/go/<name>`
//!   (or another Go program under `tests/fixtures`, [`build_go`]) with one
//!   toolchain in one [`BuildMode`], cached under `target/fixtures/`
//!   ([`build_fixture`]); build the tokio fixture `tests/fixtures/rust` in
//!   one cargo profile ([`tokio_fixture`]).
//! * [`gobin`]: read a built Go binary independently of leaktrace
//!   ([`GoBin`]: `.symtab`, pclntab, code bytes).
//! * [`process`]: run it ([`Fixture`]) and read the ground truth it prints
//!   ([`GroundTruth`]: `runtime.NumGoroutine()` and the runtime's goroutine
//!   profile).
//! * [`profile`]: parse that profile ([`Profile`]).
//! * [`expect`]: the fixture's expected diagnosis from its `expect.json`
//!   ([`Expect`]).
//! * [`tokio_process`]: run the tokio fixture and read its `alive_tasks`
//!   ([`TokioProcess`]).
//!
//! The fixtures and their protocol are described in
//! `tests/fixtures/README.md`.
//!
//! Everything that a test would only `unwrap` panics with context instead
//! of returning an error; `try_*` variants return `anyhow::Result`.

pub mod build;
pub mod expect;
pub mod gobin;
pub mod process;
pub mod profile;
pub mod tokio_process;
pub mod toolchain;

pub use build::{
    BuildMode, GoProgram, build_fixture, build_go, fixture_names, target_dir, tokio_fixture,
    try_build_fixture, try_build_go,
};
pub use expect::{Expect, Group, Kind, Versioned};
pub use gobin::GoBin;
pub use process::{Fixture, FixtureCommand, GroundTruth};
pub use profile::{Frame, Profile, Record};
pub use tokio_process::{TokioProcess, tokio_fixture_line};
pub use toolchain::{GoToolchain, cache_root, go_toolchains, pick};
