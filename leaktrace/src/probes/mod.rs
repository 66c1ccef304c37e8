//! Loading the embedded eBPF object, attaching its programs where a runtime
//! says, and reading what they send. Knows no runtime: Go, tokio and the
//! thread tracker each tell it which program goes where. Dropping [`Probes`]
//! detaches every probe: that is how every exit path (return, `?`, panic
//! unwinding) cleans up.
pub mod calibrate;
pub mod multi;
pub mod ring;
pub mod tracefs;

use std::{
    collections::HashMap,
    io::IsTerminal as _,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use leaktrace_common::stats::{ProbeStat, slot};

/// The probes object built by leaktrace-ebpf, embedded at compile time so a
/// single `leaktrace` file is all a production host needs.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// One attach point: a file offset in the target executable, and the cookie
/// the program reads to know which kind of point fired.
#[derive(Clone, Debug)]
pub struct AttachPoint {
    /// Link-time virtual address of the probed instruction (for listings).
    pub va: u64,
    pub file_offset: u64,
    pub cookie: u64,
    /// For messages: e.g. `runtime.park_m+4 (JBE)`.
    pub what: String,
}

/// A value the probes object reads as a global (`static`), set before the
/// programs are loaded, e.g. a runtime's field offsets.
pub struct Global {
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

impl Global {
    /// The bytes of a plain-old-data value.
    pub fn of<T: aya::Pod>(name: &'static str, value: &T) -> Self {
        // SAFETY: `T: Pod` is plain old data without padding that matters.
        let bytes =
            unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) };
        Self {
            name,
            bytes: bytes.to_vec(),
        }
    }
}

pub struct Probes {
    ebpf: Ebpf,
    pub attached: usize,
    /// Every link, by program, for [`Probes::detach_all`].
    links: Vec<(String, UProbeLinkId)>,
    tracepoint_links: Vec<(String, TracePointLinkId)>,
    /// The probes' own diagnostics (aya-log), printed through `log`.
    logger: Option<Logger>,
    /// Uprobe-multi links (issue #14): one per program instead of one per point.
    multi: multi::MultiLinks,
    /// Where each uprobe program was attached, to attach it again after
    /// [`Probes::detach_programs`] (the overhead budget's shedding).
    placed: HashMap<String, Placed>,
    /// Records leaktrace itself dropped: the ring reader's queue was full
    /// ([`ring::MAX_QUEUED_RECORDS`]). Part of [`Probes::lost`].
    overflowed: Arc<AtomicU64>,
}

/// One program's attachment, as [`Probes::attach`] was asked for it.
struct Placed {
    points: Vec<AttachPoint>,
    exe: PathBuf,
    pid: u32,
}

pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Probes {
    /// Load the object into the kernel, attaching nothing yet. `globals`
    /// are what the traced runtime's programs read (others keep zeros).
    pub fn load(globals: &[Global]) -> Result<Self> {
        Self::load_sized(globals, None)
    }

    /// [`Probes::load`] on a budget (the host agent's, many objects at
    /// once): the events ring and tokio's spawn-stack ring of `ring_bytes`
    /// (a power of two, a multiple of the page size) instead of 8 and
    /// 4 MiB, and the follow set (`FOLLOWED`, 5 MiB of kernel memory) of
    /// one entry, since only a `-f` exec watch fills it. Records a full
    /// ring drops are counted as lost and corrected at the next memory
    /// refresh.
    pub fn load_sized(globals: &[Global], ring_bytes: Option<u32>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        if let Some(bytes) = ring_bytes {
            loader
                .map_max_entries("EVENTS", bytes)
                .map_max_entries("TOKIO_SPAWN_STACKS", bytes)
                .map_max_entries("FOLLOWED", 1);
        }
        for g in globals {
            loader.override_global(g.name, g.bytes.as_slice(), true);
        }
        let mut ebpf = loader
            .load(PROBES_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF probes into the kernel failed: {e}"))?;
        // Before the programs load: their log map must be taken first.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("probe diagnostics unavailable: {e}");
                None
            }
        };
        Ok(Self {
            ebpf,
            attached: 0,
            links: Vec::new(),
            tracepoint_links: Vec::new(),
            logger,
            multi: multi::MultiLinks::default(),
            placed: HashMap::new(),
            overflowed: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Attach uprobe program `name` at each point of `exe`, for `pid` only.
    /// `exe` is the path the kernel resolves to the target's inode
    /// (`/proc/PID/exe` for a running process, the program file for `-c`);
    /// `pid` scopes every probe to that process in the kernel.
    pub fn attach(
        &mut self,
        name: &str,
        points: &[AttachPoint],
        exe: &Path,
        pid: u32,
    ) -> Result<()> {
        self.placed.insert(
            name.to_string(),
            Placed {
                points: points.to_vec(),
                exe: exe.to_path_buf(),
                pid,
            },
        );
        let pid = NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?;
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the probes object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| anyhow!("the kernel rejected probe {name}: {e}"))?;
        }
        // One uprobe-multi link for all points when the kernel has them (6.6+).
        if self
            .multi
            .try_attach(PROBES_OBJECT, name, prog, points, exe, pid.get())
        {
            self.attached += points.len();
            return Ok(());
        }
        for point in points {
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(point.file_offset),
                cookie: Some(point.cookie),
            };
            let link = prog
                .attach(at, exe, UProbeScope::OneProcess(pid))
                .with_context(|| {
                    format!(
                        "attaching {name} at {} (file offset {:#x}) of {}",
                        point.what,
                        point.file_offset,
                        exe.display()
                    )
                })?;
            self.links.push((name.to_string(), link));
            self.attached += 1;
        }
        Ok(())
    }

    /// Detach every point of the uprobe programs `names` (attached by
    /// [`Probes::attach`]), waiting until the kernel has removed them: from
    /// then on the target pays no trap for them. Returns how many points.
    /// Their links are destroyed together, so the grace periods overlap: one
    /// program after the other, the last kept firing for the earlier ones'
    /// grace periods (a shed of Go's spawn and exit took 76 ms, and exits
    /// were traced for 38 ms after spawns had stopped).
    pub fn detach_programs(&mut self, names: &[&str]) -> usize {
        let mut links: Vec<Box<dyn Send>> = Vec::new();
        let mut points = 0;
        for name in names {
            points += self.take_links_of(name, &mut links);
        }
        multi::drop_in_pool(links, multi::DETACH_THREADS);
        points
    }

    /// Move program `name`'s links into `links`; its point count.
    fn take_links_of(&mut self, name: &str, links: &mut Vec<Box<dyn Send>>) -> usize {
        let before = links.len();
        for link in self.multi.take_links_of(name) {
            links.push(Box::new(link));
        }
        let (of, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.links = rest;
        if let Some(prog) = self
            .ebpf
            .program_mut(name)
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
        {
            for (_, id) in of {
                if let Ok(link) = prog.take_link(id) {
                    links.push(Box::new(link));
                }
            }
        }
        let points = self.placed.get(name).map_or(0, |p| p.points.len());
        if links.len() > before {
            self.attached = self.attached.saturating_sub(points);
        }
        points
    }

    /// Attach program `name` again where it was before
    /// [`Probes::detach_programs`].
    pub fn reattach_program(&mut self, name: &str) -> Result<()> {
        let placed = self
            .placed
            .remove(name)
            .ok_or_else(|| anyhow!("program {name} was never attached"))?;
        self.attach(name, &placed.points, &placed.exe, placed.pid)
    }

    /// Hits and in-program time of each probe slot since load (see
    /// `leaktrace_common::stats`), summed over CPUs; zeros if unreadable.
    pub fn probe_stats(&self) -> [ProbeStat; slot::COUNT as usize] {
        let mut out = [ProbeStat::default(); slot::COUNT as usize];
        let Some(map) = self.ebpf.map("PROBE_STATS") else {
            return out;
        };
        let Ok(array) = PerCpuArray::<_, ProbeStat>::try_from(map) else {
            return out;
        };
        for (i, o) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = array.get(&(i as u32), 0) {
                for s in per_cpu.iter() {
                    o.hits += s.hits;
                    o.ns += s.ns;
                }
            }
        }
        out
    }

    /// Detach every probe. A per-point uprobe link waits out a grace period
    /// (~0.1 s here) and the kernel destroys them one at a time, so threads
    /// barely help: a few (a bounded pool) do as well as one per link. What
    /// helps is having few links: a uprobe-multi link (see [`multi`]) costs
    /// one grace period for all its points.
    fn detach_all(&mut self) {
        let per_probe = self.links.len();
        let mut uprobes: Vec<Box<dyn Send>> = Vec::with_capacity(self.links.len());
        for link in self.multi.take_links() {
            uprobes.push(Box::new(link));
        }
        for (name, id) in self.links.drain(..) {
            let prog: Option<&mut UProbe> =
                self.ebpf.program_mut(&name).and_then(|p| p.try_into().ok());
            if let Some(link) = prog.and_then(|p| p.take_link(id).ok()) {
                uprobes.push(Box::new(link));
            }
        }
        for (name, id) in self.tracepoint_links.drain(..) {
            let prog: Option<&mut TracePoint> =
                self.ebpf.program_mut(&name).and_then(|p| p.try_into().ok());
            if let Some(link) = prog.and_then(|p| p.take_link(id).ok()) {
                uprobes.push(Box::new(link));
            }
        }
        // Each per-probe link waits out an RCU grace period (~0.1 s here)
        // and the kernel serializes them: say so rather than look hung.
        let tty = per_probe > 8 && std::io::stderr().is_terminal();
        if tty {
            crate::say_partial!("detaching {per_probe} probes…\r");
        }
        multi::drop_in_pool(uprobes, multi::DETACH_THREADS);
        if tty {
            crate::say_partial!("\x1b[2K");
        }
    }

    /// Load (once) and attach tracepoint program `name` to `category:event`.
    pub fn attach_tracepoint(&mut self, name: &str, category: &str, event: &str) -> Result<()> {
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the probes object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| anyhow!("the kernel rejected probe {name}: {e}"))?;
        }
        let link = prog
            .attach(category, event)
            .with_context(|| format!("attaching {name} to {category}:{event}"))?;
        self.tracepoint_links.push((name.to_string(), link));
        Ok(())
    }

    /// For probe families that need more than uprobes (maps to fill or take).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Insert `(key, value)` pairs into the `u64 → u64` hash map `name`.
    pub fn fill_hash_map(&mut self, name: &str, entries: &[(u64, u64)]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("{name} map missing from the probes object"))?;
        let mut map = aya::maps::HashMap::<_, u64, u64>::try_from(map)?;
        for &(k, v) in entries {
            map.insert(k, v, 0)?;
        }
        Ok(())
    }

    /// The probes' log channel, drained by the ring reader thread.
    pub fn take_logger(&mut self) -> Option<Logger> {
        self.logger.take()
    }

    /// The ring buffer all probes write to; can be taken once.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map missing from the probes object"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Where the ring reader counts the records it had no room for.
    pub fn overflow_counter(&self) -> Arc<AtomicU64> {
        self.overflowed.clone()
    }

    /// Records dropped because the ring was full, summed over CPUs, and
    /// those leaktrace's own queue had no room for.
    pub fn lost(&self) -> u64 {
        let ours = self.overflowed.load(Ordering::Relaxed);
        let Some(map) = self.ebpf.map("LOST") else {
            return ours;
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return ours;
        };
        array
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .unwrap_or(0)
            + ours
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.detach_all();
    }
}
