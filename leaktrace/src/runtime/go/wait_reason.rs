//! `runtime.waitReason` values → the strings Go prints in tracebacks
//! (`goroutine 7 [chan receive]:`), per Go version, plus `g.atomicstatus`
//! constants.
//!
//! The numbering is not stable: reasons were inserted mid-enum in 1.20, 1.24
//! and 1.25, and 1.26 reordered most of it. The tables below are
//! `runtime.waitReasonStrings` for each release; when the target still has a
//! `.symtab`, [`WaitReasons::from_binary`] reads the array out of the binary
//! itself, which is the ground truth for that exact build.

use super::version::GoVersion;
use crate::target::elf::ElfFile;

/// Where a [`WaitReasons`] table came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReasonSource {
    /// `runtime.waitReasonStrings` read from the target's data.
    Binary,
    /// Compiled-in table for the target's Go minor version.
    VersionTable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitReasons {
    names: Vec<&'static str>,
    source: WaitReasonSource,
}

/// The three waits nothing can ever end: Go's own leak detector (1.26+)
/// reports these unconditionally.
const NEVER_ENDS: [&str; 3] = [
    "chan receive (nil chan)",
    "chan send (nil chan)",
    "select (no cases)",
];

impl WaitReasons {
    pub fn for_version(v: &GoVersion) -> Option<Self> {
        if v.major != 1 {
            return None;
        }
        let table: &'static [&'static str] = match v.minor {
            19 => GO1_19,
            20 | 21 => GO1_20,
            22 => GO1_22,
            23 => GO1_23,
            24 => GO1_24,
            25 => GO1_25,
            26 | 27 => GO1_26,
            _ => return None,
        };
        Some(WaitReasons {
            names: table.to_vec(),
            source: WaitReasonSource::VersionTable,
        })
    }

    /// Reads `runtime.waitReasonStrings` (a `[N]string` in `.data`) through
    /// `.symtab`. `None` when the symbol is absent (stripped binary);
    /// `Some(Err)` when it is present but unreadable.
    pub fn from_binary(elf: &ElfFile) -> Option<Result<Self, String>> {
        let sym = elf.symbol_info("runtime.waitReasonStrings")?;
        Some(
            read_string_array(elf, sym.value, sym.size).map(|strings| WaitReasons {
                names: strings.iter().map(|s| intern(s)).collect(),
                source: WaitReasonSource::Binary,
            }),
        )
    }

    /// The string Go prints for `value`; `Some("")` for `waitReasonZero`,
    /// `None` past the end of the table (Go prints "unknown wait reason").
    pub fn name(&self, value: u8) -> Option<&'static str> {
        self.names.get(usize::from(value)).copied()
    }

    /// Whether a goroutine parked with this reason can never be woken:
    /// a send/receive on a nil channel or `select {}`.
    pub fn never_ends(&self, value: u8) -> bool {
        self.name(value).is_some_and(|n| NEVER_ENDS.contains(&n))
    }

    /// The numeric value of a reason string in this version, e.g. to filter
    /// "IO wait" in eBPF.
    pub fn value_of(&self, name: &str) -> Option<u8> {
        let i = self.names.iter().position(|n| *n == name)?;
        u8::try_from(i).ok()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn source(&self) -> WaitReasonSource {
        self.source
    }

    /// `(value, string)` for every reason in this version.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &'static str)> + '_ {
        self.names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| Some((u8::try_from(i).ok()?, *n)))
    }

    /// Values whose string differs between two tables (for a warning when a
    /// binary's own table disagrees with the compiled-in one).
    pub fn differences(
        &self,
        other: &WaitReasons,
    ) -> Vec<(u8, Option<&'static str>, Option<&'static str>)> {
        let n = self.names.len().max(other.names.len()).min(256);
        (0..n)
            .filter_map(|i| {
                let i = u8::try_from(i).ok()?;
                let (a, b) = (self.name(i), other.name(i));
                (a != b).then_some((i, a, b))
            })
            .collect()
    }
}

/// Reads a Go `[N]string` array of `size` bytes at `va` from the file.
pub(crate) fn read_string_array(elf: &ElfFile, va: u64, size: u64) -> Result<Vec<String>, String> {
    const GO_STRING_SIZE: u64 = 16;
    if !size.is_multiple_of(GO_STRING_SIZE) || size / GO_STRING_SIZE > 256 {
        return Err(format!("unexpected size {size} for a [N]string at {va:#x}"));
    }
    let mut out = Vec::new();
    for i in 0..size / GO_STRING_SIZE {
        let at = va.wrapping_add(i * GO_STRING_SIZE);
        let (Some(ptr), Some(len)) = (elf.read_u64_va(at), elf.read_u64_va(at.wrapping_add(8)))
        else {
            return Err(format!("string header at {at:#x} is not in the file"));
        };
        if len == 0 {
            out.push(String::new());
            continue;
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l < 4096)
            .ok_or_else(|| format!("implausible string length {len} at {at:#x}"))?;
        let bytes = elf
            .read_va(ptr, len)
            .ok_or_else(|| format!("string data at {ptr:#x} is not in the file"))?;
        out.push(String::from_utf8_lossy(bytes).into_owned());
    }
    Ok(out)
}

/// Maps a string read from a binary to the `'static` copy in our tables.
/// A string no table knows (a newer patch release added a reason) is kept
/// for the rest of the process, once: a binary that lies can add at most
/// [`MAX_UNKNOWN`] strings of [`MAX_REASON_LEN`] bytes, whatever it holds
/// and however many binaries `-f` opens.
fn intern(s: &str) -> &'static str {
    for table in ALL_TABLES {
        if let Some(found) = table.iter().find(|t| **t == s) {
            return found;
        }
    }
    let s = match s.char_indices().nth(MAX_REASON_LEN) {
        Some((end, _)) => &s[..end],
        None => s,
    };
    let mut unknown = UNKNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = unknown.iter().find(|t| **t == s) {
        return found;
    }
    if unknown.len() >= MAX_UNKNOWN {
        return "(a wait reason leaktrace does not know)";
    }
    let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
    unknown.push(kept);
    kept
}

/// Wait reasons no table knows, kept for the process's lifetime.
static UNKNOWN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
const MAX_UNKNOWN: usize = 256;
/// Go's longest wait reason is 40 characters.
const MAX_REASON_LEN: usize = 96;

const ALL_TABLES: &[&[&str]] = &[GO1_19, GO1_20, GO1_22, GO1_23, GO1_24, GO1_25, GO1_26];

/// `g.atomicstatus` values (runtime2.go). A status read with the `SCAN` bit
/// set means the GC holds the goroutine for scanning; mask it off.
pub mod gstatus {
    pub const IDLE: u32 = 0;
    pub const RUNNABLE: u32 = 1;
    pub const RUNNING: u32 = 2;
    pub const SYSCALL: u32 = 3;
    pub const WAITING: u32 = 4;
    pub const DEAD: u32 = 6;
    pub const COPYSTACK: u32 = 8;
    pub const PREEMPTED: u32 = 9;
    /// 1.26+: set by the goroutine leak detector GC cycle.
    pub const LEAKED: u32 = 10;
    /// 1.26+: an idle extra M's goroutine, waiting for a cgo callback.
    pub const DEADEXTRA: u32 = 11;
    pub const SCAN: u32 = 0x1000;

    /// As Go prints it in a goroutine header (`gStatusStrings`), or `None`
    /// for values Go has no string for.
    pub fn name(status: u32) -> Option<&'static str> {
        Some(match status & !SCAN {
            IDLE => "idle",
            RUNNABLE => "runnable",
            RUNNING => "running",
            SYSCALL => "syscall",
            WAITING => "waiting",
            DEAD => "dead",
            COPYSTACK => "copystack",
            PREEMPTED => "preempted",
            LEAKED => "leaked",
            DEADEXTRA => "waiting for cgo callback",
            _ => return None,
        })
    }

    /// Whether a g with this status is a goroutine at all: `allgs` also
    /// holds freed gs (dead), just-allocated ones (idle) and, in 1.26+, the
    /// extra Ms' parked gs (deadextra).
    pub fn is_live(status: u32) -> bool {
        !matches!(status & !SCAN, DEAD | DEADEXTRA | IDLE)
    }
}

/// go1.19 (research table, measured with go1.19).
const GO1_19: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "timer goroutine (idle)",  // 21
    "trace reader (blocked)",  // 22
    "wait for GC cycle",       // 23
    "GC worker (idle)",        // 24
    "preempted",               // 25
    "debug call",              // 26
];

/// go1.20 to go1.21 (research table, measured with go1.20.6, go1.21.13).
const GO1_20: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "trace reader (blocked)",  // 24
    "wait for GC cycle",       // 25
    "GC worker (idle)",        // 26
    "GC worker (active)",      // 27
    "preempted",               // 28
    "debug call",              // 29
    "GC mark termination",     // 30
    "stopping the world",      // 31
];

/// go1.22 (research table, measured with go1.22.10).
const GO1_22: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "trace reader (blocked)",  // 24
    "wait for GC cycle",       // 25
    "GC worker (idle)",        // 26
    "GC worker (active)",      // 27
    "preempted",               // 28
    "debug call",              // 29
    "GC mark termination",     // 30
    "stopping the world",      // 31
    "flushing proc caches",    // 32
    "trace goroutine status",  // 33
    "trace proc status",       // 34
    "page trace flush",        // 35
    "coroutine",               // 36
];

/// go1.23 (research table, measured with go1.23.9).
const GO1_23: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "trace reader (blocked)",  // 24
    "wait for GC cycle",       // 25
    "GC worker (idle)",        // 26
    "GC worker (active)",      // 27
    "preempted",               // 28
    "debug call",              // 29
    "GC mark termination",     // 30
    "stopping the world",      // 31
    "flushing proc caches",    // 32
    "trace goroutine status",  // 33
    "trace proc status",       // 34
    "page trace flush",        // 35
    "coroutine",               // 36
    "GC weak to strong wait",  // 37
];

/// go1.24 (research table, measured with go1.24.11).
const GO1_24: &[&str] = &[
    "",                        // 0
    "GC assist marking",       // 1
    "IO wait",                 // 2
    "chan receive (nil chan)", // 3
    "chan send (nil chan)",    // 4
    "dumping heap",            // 5
    "garbage collection",      // 6
    "garbage collection scan", // 7
    "panicwait",               // 8
    "select",                  // 9
    "select (no cases)",       // 10
    "GC assist wait",          // 11
    "GC sweep wait",           // 12
    "GC scavenge wait",        // 13
    "chan receive",            // 14
    "chan send",               // 15
    "finalizer wait",          // 16
    "force gc (idle)",         // 17
    "semacquire",              // 18
    "sleep",                   // 19
    "sync.Cond.Wait",          // 20
    "sync.Mutex.Lock",         // 21
    "sync.RWMutex.RLock",      // 22
    "sync.RWMutex.Lock",       // 23
    "sync.WaitGroup.Wait",     // 24
    "trace reader (blocked)",  // 25
    "wait for GC cycle",       // 26
    "GC worker (idle)",        // 27
    "GC worker (active)",      // 28
    "preempted",               // 29
    "debug call",              // 30
    "GC mark termination",     // 31
    "stopping the world",      // 32
    "flushing proc caches",    // 33
    "trace goroutine status",  // 34
    "trace proc status",       // 35
    "page trace flush",        // 36
    "coroutine",               // 37
    "GC weak to strong wait",  // 38
    "synctest.Run",            // 39
    "synctest.Wait",           // 40
    "chan receive (synctest)", // 41
    "chan send (synctest)",    // 42
    "select (synctest)",       // 43
];

/// go1.25 (research table, measured with go1.25.5).
const GO1_25: &[&str] = &[
    "",                              // 0
    "GC assist marking",             // 1
    "IO wait",                       // 2
    "chan receive (nil chan)",       // 3
    "chan send (nil chan)",          // 4
    "dumping heap",                  // 5
    "garbage collection",            // 6
    "garbage collection scan",       // 7
    "panicwait",                     // 8
    "select",                        // 9
    "select (no cases)",             // 10
    "GC assist wait",                // 11
    "GC sweep wait",                 // 12
    "GC scavenge wait",              // 13
    "chan receive",                  // 14
    "chan send",                     // 15
    "finalizer wait",                // 16
    "force gc (idle)",               // 17
    "GOMAXPROCS updater (idle)",     // 18
    "semacquire",                    // 19
    "sleep",                         // 20
    "sync.Cond.Wait",                // 21
    "sync.Mutex.Lock",               // 22
    "sync.RWMutex.RLock",            // 23
    "sync.RWMutex.Lock",             // 24
    "sync.WaitGroup.Wait",           // 25
    "trace reader (blocked)",        // 26
    "wait for GC cycle",             // 27
    "GC worker (idle)",              // 28
    "GC worker (active)",            // 29
    "preempted",                     // 30
    "debug call",                    // 31
    "GC mark termination",           // 32
    "stopping the world",            // 33
    "flushing proc caches",          // 34
    "trace goroutine status",        // 35
    "trace proc status",             // 36
    "page trace flush",              // 37
    "coroutine",                     // 38
    "GC weak to strong wait",        // 39
    "synctest.Run",                  // 40
    "synctest.Wait",                 // 41
    "chan receive (durable)",        // 42
    "chan send (durable)",           // 43
    "select (durable)",              // 44
    "sync.WaitGroup.Wait (durable)", // 45
    "cleanup wait",                  // 46
];

/// go1.26 to go1.27 (research table, measured with go1.26.6, go1.27.3).
const GO1_26: &[&str] = &[
    "",                              // 0
    "GC assist marking",             // 1
    "IO wait",                       // 2
    "dumping heap",                  // 3
    "garbage collection",            // 4
    "garbage collection scan",       // 5
    "panicwait",                     // 6
    "GC assist wait",                // 7
    "GC sweep wait",                 // 8
    "GC scavenge wait",              // 9
    "finalizer wait",                // 10
    "force gc (idle)",               // 11
    "GOMAXPROCS updater (idle)",     // 12
    "semacquire",                    // 13
    "sleep",                         // 14
    "chan receive (nil chan)",       // 15
    "chan send (nil chan)",          // 16
    "select (no cases)",             // 17
    "select",                        // 18
    "chan receive",                  // 19
    "chan send",                     // 20
    "sync.Cond.Wait",                // 21
    "sync.Mutex.Lock",               // 22
    "sync.RWMutex.RLock",            // 23
    "sync.RWMutex.Lock",             // 24
    "sync.WaitGroup.Wait",           // 25
    "trace reader (blocked)",        // 26
    "wait for GC cycle",             // 27
    "GC worker (idle)",              // 28
    "GC worker (active)",            // 29
    "preempted",                     // 30
    "debug call",                    // 31
    "GC mark termination",           // 32
    "stopping the world",            // 33
    "flushing proc caches",          // 34
    "trace goroutine status",        // 35
    "trace proc status",             // 36
    "page trace flush",              // 37
    "coroutine",                     // 38
    "GC weak to strong wait",        // 39
    "synctest.Run",                  // 40
    "synctest.Wait",                 // 41
    "chan receive (durable)",        // 42
    "chan send (durable)",           // 43
    "select (durable)",              // 44
    "sync.WaitGroup.Wait (durable)", // 45
    "cleanup wait",                  // 46
];

#[cfg(test)]
mod tests {
    use super::*;

    fn wr(v: &str) -> WaitReasons {
        WaitReasons::for_version(&GoVersion::parse(v).unwrap()).unwrap()
    }

    #[test]
    fn known_values_per_version() {
        let w = wr("go1.22.10");
        assert_eq!(w.name(14), Some("chan receive"));
        assert_eq!(w.name(15), Some("chan send"));
        assert_eq!(w.name(2), Some("IO wait"));
        assert_eq!(w.name(0), Some(""));
        assert_eq!(w.name(200), None);
        assert!(w.never_ends(3) && w.never_ends(4) && w.never_ends(10));
        assert!(!w.never_ends(14) && !w.never_ends(9) && !w.never_ends(200));

        let w = wr("go1.26.6-X:goroutineleakprofile");
        assert_eq!(w.name(19), Some("chan receive"));
        assert_eq!(w.name(15), Some("chan receive (nil chan)"));
        assert_eq!(w.name(25), Some("sync.WaitGroup.Wait"));
        assert!(w.never_ends(15) && w.never_ends(16) && w.never_ends(17));
        assert!(!w.never_ends(18));
        assert_eq!(w.value_of("select"), Some(18));

        assert_eq!(wr("go1.19").name(18), Some("semacquire"));
        assert_eq!(wr("go1.24.11").value_of("sync.WaitGroup.Wait"), Some(24));
        assert_eq!(wr("go1.25.5").value_of("sync.WaitGroup.Wait"), Some(25));
        assert!(WaitReasons::for_version(&GoVersion::parse("go1.18").unwrap()).is_none());
        assert!(WaitReasons::for_version(&GoVersion::parse("go1.28").unwrap()).is_none());
    }

    #[test]
    fn every_table_has_the_never_ending_reasons() {
        for t in ALL_TABLES {
            for n in NEVER_ENDS {
                assert!(t.contains(&n), "{n}");
            }
            assert_eq!(t[0], "");
        }
    }

    #[test]
    fn gstatus_names() {
        assert_eq!(
            gstatus::name(gstatus::WAITING | gstatus::SCAN),
            Some("waiting")
        );
        assert_eq!(gstatus::name(5), None);
        assert!(!gstatus::is_live(gstatus::DEADEXTRA));
        assert!(gstatus::is_live(gstatus::LEAKED));
        assert!(gstatus::is_live(gstatus::WAITING | gstatus::SCAN));
    }
}
