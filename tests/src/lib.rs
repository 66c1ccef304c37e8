//! Test corpus and harness for leaktrace's end-to-end tests.
//!
//! * [`toolchain`]: find the installed Go toolchains ([`go_toolchains`],
//!   [`pick`]).
//! * [`build`]: build a fixture program from `tests/fixtures/go/<name>`
//!   with one toolchain in one [`BuildMode`], cached under
//!   `target/fixtures/` ([`build_fixture`]).
//! * [`process`]: run it ([`Fixture`]) and read the ground truth it prints
//!   ([`GroundTruth`]: `runtime.NumGoroutine()` and the runtime's goroutine
//!   profile).
//! * [`profile`]: parse that profile ([`Profile`]).
//! * [`expect`]: the fixture's expected diagnosis from its `expect.json`
//!   ([`Expect`]).
//!
//! The fixtures and their protocol are described in
//! `tests/fixtures/README.md`.
//!
//! Everything that a test would only `unwrap` panics with context instead
//! of returning an error; `try_*` variants return `anyhow::Result`.

pub mod build;
pub mod expect;
pub mod process;
pub mod profile;
pub mod toolchain;

pub use build::{BuildMode, build_fixture, fixture_names, target_dir, try_build_fixture};
pub use expect::{Expect, Group, Kind, Versioned};
pub use process::{Fixture, FixtureCommand, GroundTruth};
pub use profile::{Frame, Profile, Record};
pub use toolchain::{GoToolchain, cache_root, go_toolchains, pick};
