//! Builds the eBPF probes (leaktrace-ebpf) and leaves the object in OUT_DIR,
//! where `probes::load` embeds it with `include_bytes_aligned!`.
//!
//! Building BPF Rust needs a compiler that can build `core` for
//! bpfel-unknown-none, i.e. one with the standard library sources. Three
//! routes work, picked in this order:
//! 1. `LEAKTRACE_EBPF_TOOLCHAIN=<rustup toolchain>` if set;
//! 2. rustup's `nightly` when it has the rust-src component (aya's usual route);
//! 3. Debian's rustc-web 1.96 linked into rustup as `debian-web`, made to
//!    accept `-Z build-std` with RUSTC_BOOTSTRAP=1 (`cargo xtask setup` links it).
use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LEAKTRACE_EBPF_TOOLCHAIN");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "leaktrace-ebpf")
        .ok_or_else(|| anyhow!("leaktrace-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("leaktrace-ebpf manifest has no parent directory"))?
        .as_str();

    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        which_bpf_linker()?;
    }
    let toolchain = pick_toolchain()?;
    if toolchain != "nightly" {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    println!("cargo:warning=building eBPF probes with rustup toolchain `{toolchain}`");
    aya_build::build_ebpf(
        [Package {
            name: "leaktrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}

fn which_bpf_linker() -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !found {
        bail!(
            "bpf-linker is not on PATH. Run `cargo xtask setup` (as root) or:\n  \
             LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22"
        );
    }
    Ok(())
}

fn pick_toolchain() -> anyhow::Result<String> {
    if let Ok(name) = std::env::var("LEAKTRACE_EBPF_TOOLCHAIN") {
        return Ok(name);
    }
    for name in ["nightly", "debian-web"] {
        if toolchain_has_rust_src(name) {
            return Ok(name.to_string());
        }
    }
    bail!(
        "no Rust toolchain with the standard library sources was found, so the eBPF probes \
         cannot be built.\n  Fix: run `cargo xtask setup` as root (installs Debian's rustc-web + \
         rust-web-src and links them as the rustup toolchain `debian-web`),\n  or install a \
         nightly with `rustup component add rust-src --toolchain nightly`,\n  or point \
         LEAKTRACE_EBPF_TOOLCHAIN at a toolchain that has rust-src."
    )
}

fn toolchain_has_rust_src(name: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", name, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}
