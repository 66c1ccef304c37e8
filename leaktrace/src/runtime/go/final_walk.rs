//! The goroutines as they were at the moment the traced Go program exited
//! (issue #13).
//!
//! Once a process is gone its memory cannot be read, so the last periodic
//! refresh is all a report made afterwards could show: up to a refresh
//! interval old, and blind to a goroutine that parked just before the end.
//! Instead, a sleepable uprobe (object `leaktrace-final`, see
//! `leaktrace-ebpf/src/go_final.rs`) sits at the entry of the runtime's two
//! exit functions:
//!
//! - `runtime.exit`, the `exit_group` wrapper: return from `main.main`
//!   (`runtime.main` → `exit(0)`), `os.Exit` (`syscall.Exit` →
//!   `runtime.syscall_Exit`), unrecovered panics and fatal errors
//!   (`fatalpanic` / `fatalthrow` → `exit(2)`, e.g. `all goroutines are
//!   asleep - deadlock!` or a test binary's timeout panic);
//! - `runtime.dieFromSignal`: a fatal signal the program does not handle
//!   (SIGTERM, SIGINT, SIGPIPE on stdout…) and `GOTRACEBACK=crash` aborts.
//!
//! Both run in the exiting thread before the exit system call. The probe
//! walks `runtime.allgs` there, in the kernel, and sends one record per live
//! goroutine (status, goid, wait reason, waitsince, gopc, startpc,
//! parentGoid, frame-pointer stack) to its own ring, which a thread here
//! drains while the walk runs. Read-only: the program's exit code and output
//! are unchanged; the exit is delayed by the walk's duration.
//!
//! ```ignore
//! let allgs = find_allgs(&bin)?;
//! let mut walk = FinalWalk::attach(&bin, &exe, pid, &allgs, FinalWalkOptions::default())?;
//! // ... the target exits (pidfd readable) ...
//! if let Some(mut snap) = walk.take() {
//!     let views = snap.views(&bin, Some(&table));   // the final report's tasks
//!     notes.push(snap.summary());
//! }
//! ```
//!
//! Once the target's pidfd is readable the walk is over (it runs before the
//! exit), so [`FinalWalk::take`] has everything at once; `None` then means
//! the process died without running Go's exit path.
//!
//! Not covered: SIGKILL and other deaths no Go code sees (OOM kill), and
//! exits that bypass the Go runtime (C `exit()` from cgo). amd64 only, like
//! the other Go probes. Goroutines on other threads keep running during
//! the walk (≈0.6 µs per goroutine): one that changes state meanwhile is
//! seen either way, and one running elsewhere has no stack.
//!
//! Wiring into `session::run_go` (not done here while the session is being
//! refactored): after `Probes::attach_go` (before a `-c` child is
//! released),
//!
//! ```ignore
//! let mut final_walk = find_allgs(bin)
//!     .and_then(|at| FinalWalk::attach(bin, &attach_path, pid, &at, FinalWalkOptions::default()))
//!     .map_err(|e| warnings.push(format!("no goroutine snapshot at exit: {e:#}")))
//!     .ok();
//! ```
//!
//! and where the loop ended with `End::TargetExited`, before the final
//! `rep.emit`:
//!
//! ```ignore
//! if let Some(mut snap) = final_walk.as_mut().and_then(FinalWalk::take) {
//!     views = snap.views(bin, Some(&table));
//!     rep.record(&views);
//!     rep.notes.push(snap.summary()); // instead of "state as of the last sample"
//! }
//! ```
//!
//! (Tried with a `-c` run: the final report then lists every goroutine,
//! the late ones included. Two details for the session: `target_exited`'s
//! "state as of the last sample" note no longer applies when a snapshot was
//! taken, and `Reporting::build` ages groups to the report's own time, so
//! blocked durations at exit should be taken to `snap.probe_ns` instead.)
use std::{
    collections::HashMap,
    num::NonZeroU32,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
/// [`FinalGoroutine::flags`] bits.
pub use leaktrace_common::go_final::final_flags;
use leaktrace_common::go_final::{
    FINAL_DEFAULT_MAX_GS, FINAL_G_BYTES, FINAL_G_HEADER_BYTES, FINAL_MAX_FRAMES, FinalConfig,
    FinalEnd, FinalG, final_kind, final_point,
};

use super::{
    allgs_locate::AllgsLocation,
    binary::GoBinary,
    layout::GLayout,
    live::LiveTable,
    reader::{is_system_start, start_from_stack},
    wait_reason::{WaitReasons, gstatus},
};
use crate::{
    runtime::{Place, Since, TaskState, TaskView, no_chan_waits},
    symbols::Frame,
};

/// The probe object built from leaktrace-ebpf's `leaktrace-final` binary.
static FINAL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace-final"));

/// The walk as a sleepable uprobe (`bpf_copy_from_user`), and as a plain
/// one (`bpf_probe_read_user`) for kernels that refuse the first.
const PROG_SLEEPABLE: &str = "go_final";
const PROG_NOFAULT: &str = "go_final_nofault";

/// Longest the reader sleeps when the probe did not wake it.
const POLL_MS: i32 = 20;

#[derive(Clone, Copy, Debug)]
pub struct FinalWalkOptions {
    /// Ring size in bytes (a power of two, at least a page). A record is
    /// 144 bytes plus 8 per frame (~190 bytes for a typical parked stack),
    /// so the default holds ~85,000 goroutines without any help. The reader
    /// drains the ring while the walk runs, and the walk waits for it when
    /// the ring is full (see `wait_budget`), so this bounds what piles up,
    /// not the goroutine count; a smaller ring costs exit delay instead
    /// (measured with 100,000 goroutines on a loaded 2-core machine: 1 MiB
    /// and 4 MiB rings, 1–86 ms of waiting; 16 MiB, none).
    pub ring_bytes: u32,
    /// Most `allgs` entries visited (the rest are counted as skipped).
    pub max_gs: u32,
    /// Most return addresses per goroutine (≤ 32).
    pub max_frames: u32,
    /// Records between wake-ups of the reader (a power of two).
    pub wakeup_every: u32,
    /// Longest the walk waits, in all, for the reader when the ring is
    /// full (holding up the exit); records are dropped after that.
    pub wait_budget: Duration,
    /// Use the sleepable program when the kernel takes it (default); false
    /// loads the no-fault fallback directly.
    pub sleepable: bool,
}

impl Default for FinalWalkOptions {
    fn default() -> Self {
        Self {
            ring_bytes: 16 << 20,
            max_gs: FINAL_DEFAULT_MAX_GS,
            max_frames: FINAL_MAX_FRAMES as u32,
            wakeup_every: 256,
            wait_budget: Duration::from_millis(500),
            sleepable: true,
        }
    }
}

/// How the program exited, as the probe saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitWay {
    /// `runtime.exit(code)`: return from main (0), `os.Exit(code)`, a
    /// fatal panic or error (2).
    Exit { code: u32 },
    /// `runtime.dieFromSignal(sig)`.
    Signal { signal: u32 },
}

/// One goroutine at exit.
#[derive(Clone, Debug)]
pub struct FinalGoroutine {
    /// Address of its `runtime.g`.
    pub g: u64,
    pub goid: u64,
    /// `g.atomicstatus` (scan bit included).
    pub status: u32,
    /// `g.waitreason` as numbered by this Go version.
    pub wait_reason_code: u8,
    /// The runtime's string for it, for a waiting goroutine.
    pub wait_reason: Option<&'static str>,
    /// `g.waitsince` (nanotime; stamped lazily by the GC, 0 if never).
    pub waitsince: i64,
    pub gopc: u64,
    pub startpc: u64,
    /// 0 before Go 1.21.
    pub parent_goid: u64,
    /// Return addresses, innermost first (run-time addresses).
    pub stack: Vec<u64>,
    /// [`final_flags`].
    pub flags: u8,
    pub sched_sp: u64,
    pub stack_lo: u64,
    pub stack_hi: u64,
    /// Filled by [`FinalSnapshot::symbolize`]: source frames of `stack`
    /// (inlined calls expanded, wrappers and `runtime.goexit` hidden).
    pub frames: Vec<Frame>,
    /// Filled by [`FinalSnapshot::symbolize`]: a runtime goroutine, which
    /// `runtime.NumGoroutine()` does not count.
    pub system: bool,
}

impl FinalGoroutine {
    /// Status without the GC's scan bit.
    pub fn state(&self) -> u32 {
        self.status & !gstatus::SCAN
    }

    pub fn is_waiting(&self) -> bool {
        matches!(self.state(), gstatus::WAITING | gstatus::LEAKED)
    }

    /// The goroutine the exiting thread was running.
    pub fn is_current(&self) -> bool {
        self.flags & final_flags::CURRENT != 0
    }
}

/// Everything one exit walk found.
#[derive(Clone, Debug)]
pub struct FinalSnapshot {
    pub exit: ExitWay,
    /// Live goroutines (status not idle or dead), in `allgs` order,
    /// runtime goroutines included.
    pub goroutines: Vec<FinalGoroutine>,
    /// `len(allgs)` at the start of the walk (dead gs included).
    pub allglen: u64,
    /// `allgs` entries visited; `skipped` more were past the cap.
    pub walked: u64,
    pub skipped: u64,
    /// Live goroutines the probe found, records it sent, records the ring
    /// had no room for (`live == emitted + dropped`), and entries whose g
    /// did not read.
    pub live: u64,
    pub emitted: u64,
    pub dropped: u64,
    pub unreadable: u64,
    /// Time the walk waited for room in the ring (the reader fell behind).
    pub waited: Duration,
    /// Records received that did not decode (never expected).
    pub malformed: u64,
    /// CLOCK_MONOTONIC ns when the probe fired and when the walk ended.
    pub probe_ns: u64,
    pub walk_end_ns: u64,
    /// Load bias the probe computed from its own address (PIE).
    pub bias: u64,
    /// Times the probe fired (only the first walked; `dieFromSignal`
    /// re-enters itself, and threads can race into exit).
    pub walks: u32,
    symbolized: bool,
}

impl FinalSnapshot {
    /// How long the walk held up the exit.
    pub fn walk_duration(&self) -> Duration {
        Duration::from_nanos(self.walk_end_ns.saturating_sub(self.probe_ns))
    }

    /// Every live goroutine was delivered.
    pub fn is_complete(&self) -> bool {
        self.dropped == 0
            && self.skipped == 0
            && self.malformed == 0
            && self.goroutines.len() as u64 == self.live
    }

    /// The program's goroutines, as `runtime.NumGoroutine()` counts them
    /// (after [`FinalSnapshot::symbolize`]).
    pub fn program_goroutines(&self) -> impl Iterator<Item = &FinalGoroutine> {
        self.goroutines.iter().filter(|g| !g.system)
    }

    /// Symbolize every stack with the binary's pclntab, and tell the
    /// runtime's goroutines apart.
    pub fn symbolize(&mut self, bin: &GoBinary) {
        let mut cache: HashMap<u64, Option<Vec<Frame>>> = HashMap::new();
        let bias = self.bias;
        for g in &mut self.goroutines {
            let mut frames = Vec::new();
            for &pc in &g.stack {
                let va = pc.wrapping_sub(1).wrapping_sub(bias);
                let f = cache
                    .entry(va)
                    .or_insert_with(|| bin.symbols.try_frames(va));
                match f {
                    Some(f) => frames.extend(f.iter().cloned()),
                    None => frames.push(Frame::unknown(pc)),
                }
            }
            frames.retain(|f| &*f.function != "runtime.goexit");
            g.frames = frames;
            g.system = bin
                .symbols
                .innermost_frame(g.startpc.wrapping_sub(bias))
                .is_some_and(|f| is_system_start(&f.function));
        }
        self.symbolized = true;
    }

    /// One line for the report's notes: how the program ended, and what the
    /// walk saw and cost.
    pub fn summary(&self) -> String {
        let how = match self.exit {
            ExitWay::Exit { code } => format!("exited with status {code}"),
            ExitWay::Signal { signal } => format!("was killed by signal {signal}"),
        };
        let mut s = format!(
            "the target {how}; goroutines as they were at that moment ({} live, read in {:.3} ms \
             by the exit probe before the process was gone)",
            self.live,
            self.walk_duration().as_secs_f64() * 1e3
        );
        if !self.is_complete() {
            s.push_str(&format!(
                "; incomplete: {} not delivered (ring full), {} past the cap, {} unreadable",
                self.dropped, self.skipped, self.unreadable
            ));
        }
        s
    }

    /// The snapshot as the rest of leaktrace sees tasks, for the final
    /// report (symbolizes first if needed). With the session's `table`,
    /// goroutines whose spawn or park the probes saw get exact times;
    /// otherwise blocked times come from `waitsince` where the GC stamped
    /// it, or are the moment of exit, and are lower bounds.
    pub fn views(&mut self, bin: &GoBinary, table: Option<&LiveTable>) -> Vec<TaskView> {
        if !self.symbolized {
            self.symbolize(bin);
        }
        let bias = self.bias;
        let frame_at = |pc: u64| -> Frame {
            let va = pc.wrapping_sub(1).wrapping_sub(bias);
            bin.symbols
                .try_frames(va)
                .and_then(|f| f.into_iter().next())
                .or_else(|| bin.symbols.innermost_frame(va))
                .unwrap_or_else(|| Frame::unknown(pc))
        };
        self.goroutines
            .iter()
            .map(|g| {
                let seen = table
                    .and_then(|t| t.get(g.g))
                    .filter(|t| t.id == 0 || t.id == g.goid);
                let state = match g.state() {
                    gstatus::WAITING | gstatus::LEAKED => TaskState::Waiting(
                        g.wait_reason
                            .map(str::to_string)
                            .unwrap_or_else(|| format!("wait reason {}", g.wait_reason_code)),
                    ),
                    gstatus::SYSCALL => TaskState::Syscall,
                    gstatus::RUNNABLE | gstatus::PREEMPTED => TaskState::Runnable,
                    _ => TaskState::Running,
                };
                let waiting = state.is_waiting();
                let stack: Vec<Frame> = if waiting {
                    g.frames.clone()
                } else {
                    Vec::new()
                };
                let start = start_from_stack(&stack)
                    .or_else(|| bin.symbols.innermost_frame(g.startpc.wrapping_sub(bias)))
                    .unwrap_or_else(|| Frame::unknown(g.startpc));
                let ws = u64::try_from(g.waitsince).unwrap_or(0);
                let blocked_since = match seen.and_then(|t| t.parked_ns()) {
                    Some(t) => Since::Exact(t),
                    None if let Some(t) = seen.and_then(|t| t.seen_parked_ns()) => Since::AtMost(t),
                    None if ws != 0 && ws < self.probe_ns => Since::AtMost(ws),
                    None => Since::AtMost(self.probe_ns),
                };
                // One place per goroutine: the walk at exit is read once.
                let place = Place {
                    never_ends: waiting && bin.wait_reasons.never_ends(g.wait_reason_code),
                    system: g.system,
                    blocking: false,
                    // Filled from the live table by the caller (GoRuntime).
                    via: None,
                    created_by: frame_at(g.gopc),
                    start,
                    blocked_at: stack
                        .iter()
                        .find(|f| bin.own_code.is_own(&f.function))
                        .cloned(),
                    stack: stack.into(),
                    state,
                    // Goroutine 1 runs runtime.main, the only one without a `go` statement.
                    main: g.goid == 1,
                    stack_unstable: g.flags & final_flags::BROKEN != 0,
                };
                TaskView {
                    key: g.g,
                    id: g.goid,
                    place: Arc::new(place),
                    blocked_since: waiting.then_some(blocked_since),
                    alive_since: match seen.and_then(|t| t.spawned_ns()) {
                        Some(t) => Since::Exact(t),
                        None => match seen.and_then(|t| t.found_ns()) {
                            Some(t) => Since::Found(t),
                            None => Since::AtMost(self.probe_ns),
                        },
                    },
                    // The walk at exit reads no channels.
                    waits_on: no_chan_waits(),
                    stranded: Default::default(),
                }
            })
            .collect()
    }
}

/// The exit probe, attached to one process, and the thread draining it.
pub struct FinalWalk {
    /// Owns the program and its links: dropping it detaches the probe.
    _ebpf: Ebpf,
    state: Array<MapData, FinalEnd>,
    reader: Option<Reader>,
    wait_reasons: WaitReasons,
    /// The probe points attached, for messages.
    pub points: Vec<String>,
    /// The sleepable program runs (reads may fault pages in); false: the
    /// no-fault fallback, which reports pages that are not resident (swapped
    /// out) as unreadable.
    pub sleepable: bool,
    /// Why the sleepable program was not used, if it was refused.
    pub fallback: Option<String>,
    done: bool,
}

struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<u8>>,
}

impl FinalWalk {
    /// Load the exit probe and attach it to `pid`'s `exe` (the path the
    /// kernel resolves to the target's inode, as for the other probes).
    /// Works before the program runs (`-c`) and for PIE builds: the probe
    /// derives the load bias from its own address.
    pub fn attach(
        bin: &GoBinary,
        exe: &Path,
        pid: u32,
        allgs: &AllgsLocation,
        opts: FinalWalkOptions,
    ) -> Result<Self> {
        let pid = NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?;
        let mut config = config_for(&bin.layout, allgs, opts)?;
        let mut points = Vec::new();
        for (name, point) in [
            ("runtime.exit", final_point::EXIT),
            ("runtime.dieFromSignal", final_point::DIE_FROM_SIGNAL),
        ] {
            match bin.symbols.function(name) {
                Some(f) => {
                    let offset = bin
                        .elf
                        .va_to_file_offset(f.entry)
                        .with_context(|| format!("{name} ({:#x}) is not in the file", f.entry))?;
                    config.point_va[point as usize] = f.entry;
                    points.push((name, point, offset));
                }
                None if point == final_point::EXIT => {
                    bail!("runtime.exit not found in the binary's function table")
                }
                // Inlined away: fatal signals go unseen, everything else
                // still ends in runtime.exit.
                None => {}
            }
        }

        let ring = opts.ring_bytes.max(4096).next_power_of_two();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FINAL_EVENTS", ring)
            .load(FINAL_OBJECT)
            .map_err(|e| anyhow!("loading the exit probe into the kernel failed: {e}"))?;
        let mut cfg_map: Array<&mut MapData, FinalConfig> = Array::try_from(
            ebpf.map_mut("FINAL_CONFIG")
                .ok_or_else(|| anyhow!("FINAL_CONFIG missing from the exit probe object"))?,
        )?;
        cfg_map.set(0, config, 0).context("setting FINAL_CONFIG")?;
        let state: Array<MapData, FinalEnd> = Array::try_from(
            ebpf.take_map("FINAL_STATE")
                .ok_or_else(|| anyhow!("FINAL_STATE missing from the exit probe object"))?,
        )?;
        let ring = RingBuf::try_from(
            ebpf.take_map("FINAL_EVENTS")
                .ok_or_else(|| anyhow!("FINAL_EVENTS missing from the exit probe object"))?,
        )?;

        // The sleepable program (it may fault pages in), else the one that
        // reads only what is resident (kernels without sleepable uprobes).
        let mut candidates = vec![(PROG_NOFAULT, false)];
        if opts.sleepable {
            candidates.insert(0, (PROG_SLEEPABLE, true));
        }
        let mut chosen = None;
        let mut refused = Vec::new();
        for (name, sleepable) in candidates {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the exit probe object"))?
                .try_into()?;
            match prog.load() {
                Ok(()) => {
                    chosen = Some((name, sleepable));
                    break;
                }
                Err(e) => refused.push(format!("{name}: {e}")),
            }
        }
        let Some((prog_name, sleepable)) = chosen else {
            bail!(
                "the kernel rejected the exit probe ({})",
                refused.join("; ")
            );
        };
        let fallback = (!refused.is_empty()).then(|| refused.join("; "));
        let prog: &mut UProbe = ebpf
            .program_mut(prog_name)
            .ok_or_else(|| anyhow!("program {prog_name} missing"))?
            .try_into()?;
        let mut attached = Vec::new();
        for (name, point, offset) in points {
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(u64::from(point)),
            };
            prog.attach(at, exe, UProbeScope::OneProcess(pid))
                .with_context(|| {
                    format!(
                        "attaching the exit probe at {name} (file offset {offset:#x}) of {}",
                        exe.display()
                    )
                })?;
            attached.push(name.to_string());
        }

        let reader = Reader::spawn(ring);
        Ok(Self {
            _ebpf: ebpf,
            state,
            reader: Some(reader),
            wait_reasons: bin.wait_reasons.clone(),
            points: attached,
            sleepable,
            fallback,
            done: false,
        })
    }

    /// The snapshot, once the walk has ended (the target is exiting or
    /// gone); `None` before, and after it was taken once. Never blocks
    /// beyond the last drain of the ring.
    pub fn take(&mut self) -> Option<FinalSnapshot> {
        if self.done {
            return None;
        }
        let state = self.state.get(&0, 0).ok()?;
        if state.done == 0 {
            return None;
        }
        // The walk is over, so every record it sent is in the ring: the
        // reader's last drain gets them all.
        let raw = self.reader.take().map(Reader::finish).unwrap_or_default();
        self.done = true;
        // Read again: the probe fills the map after its last ring record.
        let state = self.state.get(&0, 0).unwrap_or(state);
        let mut ends = Vec::new();
        let mut gs = Vec::new();
        let mut malformed = 0;
        for rec in records(&raw) {
            match decode(rec, &self.wait_reasons) {
                Some(Record::G(g)) => gs.push(*g),
                Some(Record::End(e)) => ends.push(e),
                None => malformed += 1,
            }
        }
        // The end record from the ring is complete by construction; the
        // map's copy is the fallback when the ring had no room for it.
        let end = ends
            .iter()
            .find(|e| e.walker == state.walker)
            .copied()
            .unwrap_or(state);
        let walker = end.walker;
        Some(FinalSnapshot {
            exit: if end.point == final_point::DIE_FROM_SIGNAL {
                ExitWay::Signal { signal: end.arg }
            } else {
                ExitWay::Exit { code: end.arg }
            },
            goroutines: gs
                .into_iter()
                .filter(|g| g.walker == walker)
                .map(|g| g.g)
                .collect(),
            allglen: end.allglen,
            walked: end.walked,
            skipped: end.skipped,
            live: end.live,
            emitted: end.emitted,
            dropped: end.dropped,
            unreadable: end.unreadable,
            waited: Duration::from_nanos(end.waited_ns),
            malformed,
            probe_ns: end.start_ns,
            walk_end_ns: end.end_ns,
            bias: end.bias,
            walks: state.walks.max(end.walks),
            symbolized: false,
        })
    }

    /// [`FinalWalk::take`], waiting up to `timeout` for the walk to end.
    pub fn wait(&mut self, timeout: Duration) -> Option<FinalSnapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.take() {
                return Some(s);
            }
            if self.done || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for FinalWalk {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.finish();
        }
    }
}

impl Reader {
    /// The thread copies records out of the ring as they come, nothing
    /// more (decoding waits for `take`): it must keep up with a walk that
    /// sends one every ~0.5 µs, or the ring fills and records are lost.
    fn spawn(mut ring: RingBuf<MapData>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("leaktrace-final".into())
            .spawn(move || {
                // Length-prefixed records.
                let mut raw: Vec<u8> = Vec::new();
                loop {
                    let stopping = stop2.load(Ordering::Acquire);
                    while let Some(item) = ring.next() {
                        raw.extend_from_slice(&(item.len() as u32).to_le_bytes());
                        raw.extend_from_slice(&item);
                    }
                    if stopping {
                        return raw;
                    }
                    let mut fd = libc::pollfd {
                        fd: ring.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the timeout lets us see `stop`.
                    unsafe { libc::poll(&mut fd, 1, POLL_MS) };
                }
            })
            .expect("spawning the exit walk reader thread");
        Self { stop, handle }
    }

    /// Stop after a last drain; every record received.
    fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_default()
    }
}

/// Records from the reader's buffer.
fn records(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
        let rec = raw.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        Some(rec)
    })
}

/// A goroutine record and the walk it belongs to.
struct WalkedG {
    walker: u32,
    g: FinalGoroutine,
}

enum Record {
    G(Box<WalkedG>),
    End(FinalEnd),
}

fn decode(bytes: &[u8], wait_reasons: &WaitReasons) -> Option<Record> {
    let kind = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        final_kind::END if bytes.len() >= size_of::<FinalEnd>() => {
            // SAFETY: length checked; FinalEnd is plain old data.
            Some(Record::End(unsafe {
                std::ptr::read_unaligned(bytes.as_ptr().cast::<FinalEnd>())
            }))
        }
        final_kind::G if bytes.len() >= FINAL_G_HEADER_BYTES => {
            let mut buf = [0u8; size_of::<FinalG>()];
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            // SAFETY: FinalG is plain old data; missing frames are zero.
            let r: FinalG = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<FinalG>()) };
            let sent = (n - FINAL_G_HEADER_BYTES) / 8;
            let nframes = usize::from(r.nframes).min(sent).min(FINAL_MAX_FRAMES);
            let waiting = matches!(
                r.status & !gstatus::SCAN,
                gstatus::WAITING | gstatus::LEAKED
            );
            Some(Record::G(Box::new(WalkedG {
                walker: r.walker,
                g: FinalGoroutine {
                    g: r.g,
                    goid: r.goid,
                    status: r.status,
                    wait_reason_code: r.wait_reason,
                    wait_reason: if waiting {
                        wait_reasons.name(r.wait_reason)
                    } else {
                        None
                    },
                    waitsince: r.waitsince,
                    gopc: r.gopc,
                    startpc: r.startpc,
                    parent_goid: r.parent_goid,
                    stack: r.frames[..nframes].to_vec(),
                    flags: r.flags,
                    sched_sp: r.sched_sp,
                    stack_lo: r.stack_lo,
                    stack_hi: r.stack_hi,
                    frames: Vec::new(),
                    system: false,
                },
            })))
        }
        _ => None,
    }
}

/// The probe's configuration for this binary. Every offset must lie in the
/// part of `g` the probe copies.
fn config_for(l: &GLayout, allgs: &AllgsLocation, opts: FinalWalkOptions) -> Result<FinalConfig> {
    let g_size = l.sizeof_g.min(FINAL_G_BYTES as u32);
    let fields = l.fields();
    for (name, off) in fields.iter().filter(|(n, _)| n.starts_with("g.")) {
        if let Some(off) = off
            && off + 8 > g_size
        {
            bail!(
                "{name} at {off} lies beyond the {g_size} bytes of runtime.g the exit probe reads"
            );
        }
    }
    if !opts.wakeup_every.is_power_of_two() {
        bail!("wakeup_every must be a power of two");
    }
    Ok(FinalConfig {
        point_va: [0; final_point::COUNT],
        allgs_va: allgs.allgs,
        allglen_va: allgs.allglen.unwrap_or(0),
        max_gs: opts.max_gs.min(1 << 23),
        max_frames: opts.max_frames.clamp(1, FINAL_MAX_FRAMES as u32),
        g_size,
        g_stack_lo: l.g_stack_lo,
        g_stack_hi: l.g_stack_hi,
        g_m: l.g_m,
        g_sched_sp: l.g_sched_sp,
        g_sched_pc: l.g_sched_pc,
        g_sched_bp: l.g_sched_bp,
        g_syscallsp: l.g_syscallsp,
        g_syscallpc: l.g_syscallpc,
        g_syscallbp: l.g_syscallbp.unwrap_or(u32::MAX),
        g_atomicstatus: l.g_atomicstatus,
        g_goid: l.g_goid,
        g_waitsince: l.g_waitsince,
        g_waitreason: l.g_waitreason,
        g_parent_goid: l.g_parent_goid.unwrap_or(u32::MAX),
        g_gopc: l.g_gopc,
        g_startpc: l.g_startpc,
        m_curg: l.m_curg,
        wakeup_mask: opts.wakeup_every - 1,
        _pad: 0,
        wait_budget_ns: u64::try_from(opts.wait_budget.as_nanos()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::go::version::GoVersion;

    #[test]
    fn config_checks_offsets_and_options() {
        let l = GLayout::for_version(&GoVersion::parse("go1.27.3").unwrap()).unwrap();
        let at = AllgsLocation {
            allgs: 0x1000,
            allglen: None,
            how: "symtab",
        };
        let c = config_for(&l, &at, FinalWalkOptions::default()).unwrap();
        assert_eq!(c.g_goid, 152);
        assert_eq!(c.g_size, 456);
        assert_eq!(c.wakeup_mask, 255);
        assert_eq!(c.allglen_va, 0);
        let old = GLayout::for_version(&GoVersion::parse("go1.19.8").unwrap()).unwrap();
        let c = config_for(&old, &at, FinalWalkOptions::default()).unwrap();
        assert_eq!((c.g_parent_goid, c.g_syscallbp), (u32::MAX, u32::MAX));
        let bad = FinalWalkOptions {
            wakeup_every: 3,
            ..FinalWalkOptions::default()
        };
        assert!(config_for(&l, &at, bad).is_err());
    }

    #[test]
    fn decodes_records_cut_after_their_frames() {
        let wr = WaitReasons::for_version(&GoVersion::parse("go1.19.8").unwrap()).unwrap();
        let mut frames = [0u64; FINAL_MAX_FRAMES];
        frames[..3].copy_from_slice(&[0x437a76, 0x4c0565, 0x463d81]);
        let rec = FinalG {
            kind: final_kind::G,
            walker: 7,
            g: 0xc000001a00,
            goid: 42,
            status: gstatus::WAITING,
            wait_reason: 15,
            flags: 0,
            nframes: 3,
            waitsince: 0,
            gopc: 0x4c0500,
            startpc: 0x4c0520,
            parent_goid: 0,
            sched_pc: 0x437a76,
            sched_sp: 0,
            sched_bp: 0,
            stack_lo: 0,
            stack_hi: 0,
            frames,
        };
        // SAFETY: viewing a POD as bytes.
        let all = unsafe {
            std::slice::from_raw_parts((&raw const rec).cast::<u8>(), size_of::<FinalG>())
        };
        let sent = &all[..FINAL_G_HEADER_BYTES + 3 * 8];
        let Some(Record::G(g)) = decode(sent, &wr) else {
            panic!("not decoded")
        };
        assert_eq!(g.walker, 7);
        assert_eq!(g.g.goid, 42);
        assert_eq!(g.g.wait_reason, Some("chan send"));
        assert_eq!(g.g.stack, vec![0x437a76, 0x4c0565, 0x463d81]);
        assert!(decode(&all[..8], &wr).is_none());
    }
}
