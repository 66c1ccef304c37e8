//! Native (C ABI: Rust, C, C++) stacks of the traced process: unwinding a
//! copied stack with `.eh_frame` and naming PCs with DWARF line tables
//! (inlined calls included) or, without them, `.symtab`.
//!
//! Used for one question only: which of the program's own functions asked
//! for a thread. Libraries (libc, std, tokio, crates from a Cargo registry)
//! are skipped, because every thread is created by them.
pub mod unwind;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use gimli::{EndianArcSlice, LittleEndian};

use self::unwind::{CfiTables, CodeMap, StackCopy};
use super::Frame;
use crate::target::{
    elf::ElfFile,
    process::{Mapping, load_bias},
};

/// Deep enough for any spawn path seen (tokio's runtime start: 21 frames
/// from `clone3` to `main`); the stack copy usually ends first.
const MAX_FRAMES: usize = 64;

type Dwarf = addr2line::Context<EndianArcSlice<LittleEndian>>;

/// Lazily loaded knowledge of the code mapped into one process.
pub struct NativeSymbols {
    pid: u32,
    exe: Option<PathBuf>,
    regions: Vec<Region>,
    /// By mapped path; `None` when the file could not be read or parsed.
    modules: HashMap<String, Option<Arc<Module>>>,
    /// /proc/PID/maps was re-read during this walk (once is enough: a PC
    /// still unknown after that is anonymous code).
    maps_fresh: bool,
}

/// An executable, file-backed mapping.
#[derive(Clone, Debug)]
struct Region {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

/// One loaded ELF file: its unwind tables and its names.
pub struct Module {
    elf: ElfFile,
    bias: u64,
    /// The process's executable: only its frames can be "the program's".
    is_main: bool,
    is_go: bool,
    dwarf: OnceLock<Option<Dwarf>>,
    /// `.symtab` functions sorted by address (main executable only).
    functions: OnceLock<Vec<(u64, u64, String)>>,
}

impl NativeSymbols {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            // Read at the first stack: with `-c` the target has not called
            // exec yet when the probes attach.
            exe: None,
            regions: Vec::new(),
            modules: HashMap::new(),
            maps_fresh: false,
        }
    }

    /// The innermost frame of the program's own code on `stack`, i.e. where
    /// it called into the library that made the thread.
    pub fn spawn_site(&mut self, stack: &StackCopy<'_>) -> Option<Frame> {
        self.maps_fresh = false;
        if self.exe.is_none() {
            self.exe = std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok();
        }
        let pcs = unwind::unwind(stack, self, MAX_FRAMES);
        pcs.iter().enumerate().find_map(|(i, &pc)| {
            let lookup = if i == 0 { pc } else { pc - 1 };
            let module = self.module_at(lookup)?;
            // Go's scheduler starts threads when it decides to; the goroutine
            // that happened to be running then did not ask for one.
            if !module.is_main || module.is_go {
                return None;
            }
            module
                .frames(lookup.wrapping_sub(module.bias))
                .into_iter()
                .find(|f| !is_library(f))
        })
    }

    fn region_at(&mut self, pc: u64) -> Option<Region> {
        let find = |rs: &[Region]| rs.iter().find(|r| r.start <= pc && pc < r.end).cloned();
        if let Some(r) = find(&self.regions) {
            return Some(r);
        }
        if self.maps_fresh {
            return None;
        }
        // Not seen yet: a library loaded since (dlopen) or the first call.
        self.regions = read_regions(self.pid);
        self.maps_fresh = true;
        find(&self.regions)
    }

    fn module_at(&mut self, pc: u64) -> Option<Arc<Module>> {
        let region = self.region_at(pc)?;
        if let Some(m) = self.modules.get(&region.path) {
            return m.clone();
        }
        let is_main = self.exe.as_ref().is_some_and(|exe| {
            exe.to_string_lossy().trim_end_matches(" (deleted)")
                == region.path.trim_end_matches(" (deleted)")
        });
        let module = load_module(self.pid, &region, is_main).map(Arc::new);
        if module.is_none() {
            log::debug!("no unwind tables for {} in pid {}", region.path, self.pid);
        }
        self.modules.insert(region.path.clone(), module.clone());
        module
    }
}

impl CodeMap for NativeSymbols {
    fn is_code(&mut self, pc: u64) -> bool {
        self.region_at(pc).is_some()
    }

    fn cfi_for(&mut self, pc: u64) -> Option<(CfiTables<'_>, u64)> {
        let path = self.region_at(pc)?.path;
        self.module_at(pc)?;
        let module = self.modules.get(&path)?.as_ref()?;
        Some((module.cfi()?, module.bias))
    }
}

impl Module {
    /// The process's executable, loaded at `bias`: its frames count as the
    /// program's (unless it is Go).
    pub fn main(elf: ElfFile, bias: u64) -> Self {
        let is_go = elf.section(".gopclntab").is_some() || elf.section(".go.buildinfo").is_some();
        Self {
            elf,
            bias,
            is_main: true,
            is_go,
            dwarf: OnceLock::new(),
            functions: OnceLock::new(),
        }
    }

    pub fn bias(&self) -> u64 {
        self.bias
    }

    /// Whether the run-time address `pc` lies in this file's executable
    /// segments.
    pub fn holds(&self, pc: u64) -> bool {
        let svma = pc.wrapping_sub(self.bias);
        self.elf
            .segments()
            .iter()
            .any(|s| s.is_executable() && svma >= s.vaddr && svma - s.vaddr < s.memsz)
    }

    /// Its `.eh_frame` (and index), at link-time addresses.
    pub fn cfi(&self) -> Option<CfiTables<'_>> {
        let elf = &self.elf;
        let section = |name: &str| {
            let s = elf.section(name)?;
            Some((elf.section_data(s)?, s.addr))
        };
        let (eh_frame, eh_frame_addr) = section(".eh_frame")?;
        Some(CfiTables {
            eh_frame,
            eh_frame_addr,
            eh_frame_hdr: section(".eh_frame_hdr"),
            text_addr: elf.section(".text").map_or(0, |s| s.addr),
        })
    }

    /// Source frames at a link-time address, innermost (inlined) first.
    pub fn frames(&self, svma: u64) -> Vec<Frame> {
        let mut frames = self
            .dwarf
            .get_or_init(|| load_dwarf(&self.elf))
            .as_ref()
            .map(|ctx| dwarf_frames(ctx, svma))
            .unwrap_or_default();
        let symbol = self.symbol(svma);
        match (frames.last_mut(), symbol) {
            // Line tables alone name a function without its path
            // (`DW_AT_name`, no linkage name); the symbol has it.
            (Some(outer), Some(name)) if !outer.function.contains("::") => {
                outer.function = name.into();
            }
            (None, Some(name)) => frames.push(Frame {
                function: name.into(),
                file: "".into(),
                line: 0,
            }),
            _ => {}
        }
        frames
    }

    /// The demangled `.symtab` function containing `svma`.
    fn symbol(&self, svma: u64) -> Option<String> {
        let functions = self.functions.get_or_init(|| {
            let mut f: Vec<_> = self
                .elf
                .functions_where(|_| true)
                .into_iter()
                .map(|s| (s.value, s.size, s.name.clone()))
                .collect();
            f.sort();
            f
        });
        let i = functions.partition_point(|f| f.0 <= svma).checked_sub(1)?;
        let (start, size, name) = &functions[i];
        (svma < start + (*size).max(1)).then(|| demangle(name))
    }
}

fn dwarf_frames(ctx: &Dwarf, svma: u64) -> Vec<Frame> {
    let mut out = Vec::new();
    let Ok(mut iter) = ctx.find_frames(svma).skip_all_loads() else {
        return out;
    };
    while let Ok(Some(f)) = iter.next() {
        let function = f
            .function
            .as_ref()
            .and_then(|n| n.demangle().ok())
            .map(|n| n.into_owned())
            .unwrap_or_default();
        let (file, line) = f
            .location
            .map(|l| (l.file.unwrap_or(""), l.line.unwrap_or(0)))
            .unwrap_or(("", 0));
        out.push(Frame {
            function: function.into(),
            file: file.into(),
            line,
        });
    }
    out
}

fn load_module(pid: u32, region: &Region, is_main: bool) -> Option<Module> {
    // map_files reaches the very file mapped, even if it was replaced on
    // disk since or lives in another mount namespace.
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", region.start, region.end);
    let elf = ElfFile::open(path.as_ref()).ok()?;
    // Executable segments only: a read-only segment can share the mapped
    // page offset (lld puts .rodata and .text in one page, at different VAs).
    let segments: Vec<(u64, u64)> = elf
        .segments()
        .iter()
        .filter(|s| s.is_executable())
        .map(|s| (s.vaddr, s.offset))
        .collect();
    let mapping = Mapping {
        start: region.start,
        end: region.end,
        file_offset: region.offset,
    };
    let bias = load_bias(&[mapping], &segments)?;
    let is_go = elf.section(".gopclntab").is_some() || elf.section(".go.buildinfo").is_some();
    Some(Module {
        elf,
        bias,
        is_main,
        is_go,
        dwarf: OnceLock::new(),
        functions: OnceLock::new(),
    })
}

fn load_dwarf(elf: &ElfFile) -> Option<Dwarf> {
    if !elf.has_dwarf() {
        return None;
    }
    addr2line::Context::from_dwarf(super::dwarf::owned(elf)?).ok()
}

fn read_regions(pid: u32) -> Vec<Region> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    crate::target::maps::entries(&maps)
        .filter(|e| e.perms.contains('x') && e.path.starts_with('/'))
        .map(|e| Region {
            start: e.start,
            end: e.end,
            offset: e.offset,
            path: e.path,
        })
        .collect()
}

fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

/// Whether a frame belongs to a library rather than the program: the Rust
/// standard library (by path, or by its `/rustc/<hash>/` sources), tokio,
/// any crate built from a Cargo registry or git checkout, and Go's runtime
/// (which starts every thread of a Go program itself).
pub fn is_library(f: &Frame) -> bool {
    const CRATES: [&str; 7] = [
        "std::", "core::", "alloc::", "tokio::", "__rust", "rust_", "runtime.",
    ];
    const SOURCES: [&str; 3] = ["/rustc/", "/.cargo/registry/", "/.cargo/git/"];
    let name = f.function.trim_start_matches('<');
    name.is_empty()
        || CRATES.iter().any(|c| name.starts_with(c))
        || SOURCES.iter().any(|s| f.file.contains(s))
}

/// Frames of tokio and the standard library only: the path a spawn takes
/// inside them, not the spawn site (which may well be a library's, e.g.
/// hyper spawning a connection task).
pub fn is_std_or_tokio(f: &Frame) -> bool {
    const CRATES: [&str; 4] = ["tokio::", "std::", "core::", "alloc::"];
    let name = f.function.trim_start_matches('<');
    name.is_empty()
        || CRATES.iter().any(|c| name.starts_with(c))
        || f.file.contains("/tokio-1.")
        || f.file.starts_with("/rustc/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spawn_path_is_skipped_the_caller_is_not() {
        assert!(is_std_or_tokio(&frame(
            "tokio::task::spawn::spawn_inner<F>",
            ""
        )));
        assert!(is_std_or_tokio(&frame(
            "<alloc::sync::Arc<tokio::runtime::scheduler::multi_thread::handle::Handle>>::bind_new_task",
            ""
        )));
        assert!(is_std_or_tokio(&frame(
            "spawn<F>",
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/task/spawn.rs"
        )));
        assert!(!is_std_or_tokio(&frame(
            "tokio_fixture::admin_listen",
            "src/main.rs"
        )));
        assert!(!is_std_or_tokio(&frame(
            "hyper::server::conn::spawn_all",
            "/root/.cargo/registry/src/x/hyper-1.0.0/src/server.rs"
        )));
    }

    fn frame(function: &str, file: &str) -> Frame {
        Frame {
            function: function.into(),
            file: file.into(),
            line: 1,
        }
    }

    #[test]
    fn libraries_are_skipped() {
        assert!(is_library(&frame(
            "std::thread::lifecycle::spawn_unchecked",
            ""
        )));
        assert!(is_library(&frame(
            "<std::sys::thread::unix::Thread>::new",
            ""
        )));
        assert!(is_library(&frame(
            "spawn<F, T>",
            "/rustc/59807616e1fa/library/std/src/thread/builder.rs"
        )));
        assert!(is_library(&frame(
            "tokio::runtime::blocking::pool::Spawner::spawn_thread",
            ""
        )));
        assert!(is_library(&frame(
            "rayon_core::registry::Registry::new",
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rayon-core-1.12.1/src/registry.rs"
        )));
        assert!(is_library(&frame("runtime.newm", "")));
        assert!(!is_library(&frame("thr_rs::spawn_leaky", "src/main.rs")));
        assert!(!is_library(&frame(
            "myapp::pool::<impl myapp::Pool>::grow",
            ""
        )));
    }
}
