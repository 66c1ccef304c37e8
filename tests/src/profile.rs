//! Parser for the Go runtime's own goroutine profile text
//! (`pprof.Lookup("goroutine").WriteTo(w, debug)`), the ground truth every
//! fixture prints.
//!
//! Two formats are understood, detected from the first line:
//!
//! * **debug=1** (the fixtures' default): goroutines grouped by identical
//!   stack, one record per group:
//!
//!   ```text
//!   goroutine profile: total 23
//!   19 @ 0x437a76 0x40560c 0x4051bd 0x4c0565 0x463d81
//!   #<TAB>0x4c0564<TAB>main.(*Hub).Publish.func1+0x44<TAB>/src/chan_send/main.go:62
//!   ```
//!
//!   It has **no wait reason and no creation site** (`created by` is only in
//!   debug=2): [`Record::wait_reason`] and [`Record::created_by`] are `None`.
//!   Compare frames instead: the leaking group is the one whose
//!   [`Record::first_non_stdlib_frame`] is the fixture's `blocked_at`. For a
//!   goroutine started as `go func() {...}()` or `go f()` the last frame
//!   ([`Record::entry`]) is the started function, which names the creator
//!   only for closures (`main.(*Hub).Publish.func1` was created in
//!   `main.(*Hub).Publish`); for `go f(x)` it is `f`, wherever it was
//!   started from, which is why `expect.json` states `created_by`. (The
//!   compiler's `go` wrappers, `<creator>.funcN` / `.gowrapN`, are hidden
//!   here, as in every runtime traceback.)
//!
//! * **debug=2** (fixtures run with `-debug 2`): every goroutine with its
//!   status and `created by` line. Goroutines with the same frames, wait
//!   reason and creator are folded into one record, in order of first
//!   appearance, so the same API works on both.
//!
//! In both formats the runtime hides the leading `runtime.*` frames of a
//! parked goroutine (`runtime.gopark`, `runtime.chansend`, ...) and the
//! trailing `runtime.goexit`, so frames start at the first non-runtime
//! function (e.g. `sync.runtime_Semacquire`, or directly `main.x`). Inlined
//! calls appear as frames of their own (same PC in debug=1).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt;

/// One stack frame: function (full Go symbol name), file and line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl Frame {
    /// Import path of the frame's package (`main`, `net/http`,
    /// `leaktrace.test/fixtures/internal/truth`).
    pub fn package(&self) -> &str {
        package_of(&self.function)
    }

    /// True for the standard library: the package path's first element
    /// has no dot and is not `main` (runtime, sync, internal/poll, net,
    /// time, vendor/golang.org/x/net/...).
    pub fn is_stdlib(&self) -> bool {
        is_stdlib_function(&self.function)
    }
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.function, self.file, self.line)
    }
}

/// Import path of the package a Go function symbol belongs to: everything
/// up to the first `.` after the last `/` (generic type arguments, which may
/// contain both, are ignored).
pub fn package_of(function: &str) -> &str {
    let base = match function.find('[') {
        Some(i) => &function[..i],
        None => function,
    };
    let start = base.rfind('/').map_or(0, |i| i + 1);
    match base[start..].find('.') {
        Some(i) => &function[..start + i],
        None => base,
    }
}

/// See [`Frame::is_stdlib`].
pub fn is_stdlib_function(function: &str) -> bool {
    let pkg = package_of(function);
    let first = pkg.split('/').next().unwrap_or("");
    !first.contains('.') && first != "main"
}

/// One group of goroutines with the same stack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// How many goroutines share this stack.
    pub count: u64,
    /// Innermost frame first.
    pub frames: Vec<Frame>,
    /// debug=1: the raw PCs of the `N @ 0x...` line (these include the
    /// hidden runtime frames); empty for debug=2.
    pub pcs: Vec<u64>,
    /// debug=1: the PC printed on each frame line, parallel to `frames`
    /// (inlined frames share their caller's PC); empty for debug=2.
    pub frame_pcs: Vec<u64>,
    /// debug=1: the `# labels: {...}` text, if any.
    pub labels: Option<String>,
    /// debug=2 only: the wait reason (`chan send`, `semacquire`,
    /// `sync.Mutex.Lock`, `IO wait`, ...) or the state of a goroutine that
    /// is not waiting (`running`, `runnable`, `syscall`).
    pub wait_reason: Option<String>,
    /// debug=2 only: the function that ran the `go` statement and where.
    pub created_by: Option<Frame>,
    /// debug=2 only: goroutine ids in this group.
    pub goroutine_ids: Vec<u64>,
}

impl Record {
    /// The innermost frame outside the standard library: where user code
    /// is blocked (or running). `None` for goroutines entirely in the
    /// standard library (signal loop, net/http internals, ...).
    pub fn first_non_stdlib_frame(&self) -> Option<&Frame> {
        self.frames.iter().find(|f| !f.is_stdlib())
    }

    /// The outermost frame: the function the goroutine was started with
    /// (as the runtime shows it: a `go f(x)` may appear as `f` or as a
    /// compiler wrapper, depending on version and inlining).
    pub fn entry(&self) -> Option<&Frame> {
        self.frames.last()
    }

    /// True if any frame is `function`.
    pub fn has_frame(&self, function: &str) -> bool {
        self.frames.iter().any(|f| f.function == function)
    }

    /// Function names, innermost first.
    pub fn functions(&self) -> Vec<&str> {
        self.frames.iter().map(|f| f.function.as_str()).collect()
    }
}

/// Output format of the goroutine profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Debug1,
    Debug2,
}

/// A parsed goroutine profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub format: Format,
    /// Total number of goroutines in the profile.
    pub total: u64,
    pub records: Vec<Record>,
}

impl Profile {
    /// Parses either format (detected from the first non-empty line).
    pub fn parse(text: &str) -> Result<Profile> {
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if first.starts_with("goroutine profile:") {
            parse_debug1(text)
        } else if first.starts_with("goroutine ") {
            parse_debug2(text)
        } else {
            bail!("not a goroutine profile (first line {first:?})")
        }
    }

    /// Records whose first non-stdlib frame is `function`.
    pub fn blocked_at<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| {
            r.first_non_stdlib_frame()
                .is_some_and(|f| f.function == function)
        })
    }

    /// Number of goroutines whose first non-stdlib frame is `function`
    /// (summed over records: the same site can appear in several records,
    /// e.g. when reached through different callers).
    pub fn count_blocked_at(&self, function: &str) -> u64 {
        self.blocked_at(function).map(|r| r.count).sum()
    }

    /// Records at `function` as leaktrace names a group's site: by their
    /// first non-stdlib frame, or, for stacks entirely in the standard
    /// library (`net/http.(*persistConn).readLoop`), by the function they
    /// started in.
    pub fn at<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        let stdlib = is_stdlib_function(function);
        self.records
            .iter()
            .filter(move |r| match r.first_non_stdlib_frame() {
                Some(f) => f.function == function,
                None => stdlib && r.entry().is_some_and(|f| f.function == function),
            })
    }

    /// Number of goroutines at `function` (see [`Profile::at`]).
    pub fn count_at(&self, function: &str) -> u64 {
        self.at(function).map(|r| r.count).sum()
    }

    /// Number of goroutines with `function` anywhere on their stack.
    pub fn count_with_frame(&self, function: &str) -> u64 {
        self.records
            .iter()
            .filter(|r| r.has_frame(function))
            .map(|r| r.count)
            .sum()
    }

    /// Goroutine counts keyed by first non-stdlib function (`"<stdlib>"`
    /// for stacks entirely in the standard library).
    pub fn counts_by_blocked_at(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for r in &self.records {
            let k = r
                .first_non_stdlib_frame()
                .map_or("<stdlib>".to_string(), |f| f.function.clone());
            *m.entry(k).or_insert(0) += r.count;
        }
        m
    }

    /// The record with the most goroutines.
    pub fn largest(&self) -> Option<&Record> {
        self.records.iter().max_by_key(|r| r.count)
    }

    /// debug=2 only: goroutine counts keyed by (first non-stdlib function,
    /// wait reason).
    pub fn counts_by_site_and_reason(&self) -> BTreeMap<(String, String), u64> {
        let mut m = BTreeMap::new();
        for r in &self.records {
            let site = r
                .first_non_stdlib_frame()
                .map_or("<stdlib>".to_string(), |f| f.function.clone());
            let reason = r.wait_reason.clone().unwrap_or_default();
            *m.entry((site, reason)).or_insert(0) += r.count;
        }
        m
    }
}

fn parse_debug1(text: &str) -> Result<Profile> {
    let mut lines = text.lines().enumerate();
    let (_, header) = lines
        .by_ref()
        .find(|(_, l)| !l.trim().is_empty())
        .context("empty profile")?;
    let total = header
        .strip_prefix("goroutine profile: total ")
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("bad header {header:?}"))?;

    let mut records: Vec<Record> = Vec::new();
    for (no, line) in lines {
        let line = line.trim_end();
        let ctx = || format!("line {}: {line:?}", no + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim();
            let rec = records
                .last_mut()
                .with_context(|| format!("frame before any record, {}", ctx()))?;
            if let Some(labels) = rest.strip_prefix("labels:") {
                rec.labels = Some(labels.trim().to_string());
                continue;
            }
            let (pc, frame) = parse_debug1_frame(rest).with_context(ctx)?;
            rec.frame_pcs.push(pc);
            rec.frames.push(frame);
            continue;
        }
        let (count, pcs) = line
            .split_once(" @ ")
            .with_context(|| format!("unexpected {}", ctx()))?;
        let count = count.trim().parse().with_context(ctx)?;
        let pcs = pcs
            .split_whitespace()
            .map(parse_hex)
            .collect::<Result<Vec<_>>>()
            .with_context(ctx)?;
        records.push(Record {
            count,
            pcs,
            ..Record::default()
        });
    }
    Ok(Profile {
        format: Format::Debug1,
        total,
        records,
    })
}

/// `0x4c0564<TAB>main.(*Hub).Publish.func1+0x44<TAB>/src/main.go:62` (the tabs
/// are padded by a tabwriter: any run of whitespace separates fields).
fn parse_debug1_frame(s: &str) -> Result<(u64, Frame)> {
    let s = s.trim();
    let (pc, rest) = s.split_once(char::is_whitespace).context("no PC")?;
    let pc = parse_hex(pc)?;
    let rest = rest.trim_start();
    let (func_off, loc) = rest
        .split_once(char::is_whitespace)
        .context("no location")?;
    let function = match func_off.rsplit_once("+0x") {
        Some((f, _)) => f,
        None => func_off,
    };
    let (file, line) = split_file_line(loc.trim())?;
    Ok((
        pc,
        Frame {
            function: function.to_string(),
            file,
            line,
        },
    ))
}

fn split_file_line(loc: &str) -> Result<(String, u32)> {
    let (file, line) = loc
        .rsplit_once(':')
        .with_context(|| format!("no line number in {loc:?}"))?;
    let line = line
        .parse()
        .with_context(|| format!("bad line number in {loc:?}"))?;
    Ok((file.to_string(), line))
}

fn parse_hex(s: &str) -> Result<u64> {
    let h = s
        .strip_prefix("0x")
        .with_context(|| format!("not hex: {s:?}"))?;
    u64::from_str_radix(h, 16).with_context(|| format!("not hex: {s:?}"))
}

/// Goroutine header `goroutine 7 [chan receive, 2 minutes]:` → (id, wait
/// reason). The reason is the bracket's first comma-separated part, with a
/// trailing ` (leaked)` (Go 1.26+ leak detector) removed.
fn parse_debug2_header(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix("goroutine ")?;
    let (id, rest) = rest.split_once(' ')?;
    let id = id.parse().ok()?;
    let open = rest.find('[')?;
    let close = rest.rfind("]:")?;
    let status = &rest[open + 1..close];
    let reason = status.split(", ").next().unwrap_or("").trim();
    let reason = reason.strip_suffix(" (leaked)").unwrap_or(reason);
    Some((id, reason.to_string()))
}

/// `main.normalize(0x0?, 0x0?)` → `main.normalize`. Arguments never contain
/// parentheses, so the last `(` opens the argument list.
fn strip_args(call: &str) -> &str {
    let call = call.trim();
    if call.ends_with(')')
        && let Some(i) = call.rfind('(')
    {
        return &call[..i];
    }
    call
}

/// `\t/src/main.go:29 +0x97` (the `+0x..` is absent for inlined frames).
fn parse_debug2_location(line: &str) -> Result<(String, u32)> {
    let loc = line.trim();
    let loc = match loc.rsplit_once(" +0x") {
        Some((l, _)) => l,
        None => loc,
    };
    split_file_line(loc)
}

fn parse_debug2(text: &str) -> Result<Profile> {
    struct G {
        id: u64,
        reason: String,
        frames: Vec<Frame>,
        created_by: Option<Frame>,
    }
    let mut gs: Vec<G> = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((no, line)) = lines.next() {
        let ctx = || format!("line {}: {line:?}", no + 1);
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("goroutine ") {
            let (id, reason) =
                parse_debug2_header(line).with_context(|| format!("bad header, {}", ctx()))?;
            gs.push(G {
                id,
                reason,
                frames: Vec::new(),
                created_by: None,
            });
            continue;
        }
        let g = gs
            .last_mut()
            .with_context(|| format!("frame before any goroutine, {}", ctx()))?;
        if line.starts_with('\t') || line.starts_with("...") {
            // "...additional frames elided..." or a stray location line.
            continue;
        }
        let (is_creator, call) = match line.strip_prefix("created by ") {
            Some(c) => (true, c.split(" in goroutine ").next().unwrap_or(c)),
            None => (false, line),
        };
        let function = if is_creator {
            call.trim()
        } else {
            strip_args(call)
        };
        let (file, line_no) = match lines.peek() {
            Some((_, next)) if next.starts_with('\t') => {
                let loc = parse_debug2_location(next).with_context(ctx)?;
                lines.next();
                loc
            }
            _ => (String::new(), 0),
        };
        let frame = Frame {
            function: function.to_string(),
            file,
            line: line_no,
        };
        if is_creator {
            g.created_by = Some(frame);
        } else {
            g.frames.push(frame);
        }
    }

    let total = gs.len() as u64;
    let mut records: Vec<Record> = Vec::new();
    let mut index: std::collections::HashMap<(Vec<Frame>, String, Option<Frame>), usize> =
        std::collections::HashMap::new();
    for g in gs {
        let key = (g.frames, g.reason, g.created_by);
        match index.get(&key) {
            Some(&i) => {
                records[i].count += 1;
                records[i].goroutine_ids.push(g.id);
            }
            None => {
                index.insert(key.clone(), records.len());
                records.push(Record {
                    count: 1,
                    frames: key.0,
                    wait_reason: Some(key.1),
                    created_by: key.2,
                    goroutine_ids: vec![g.id],
                    ..Record::default()
                });
            }
        }
    }
    Ok(Profile {
        format: Format::Debug2,
        total,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBUG1_GO119: &str = include_str!("testdata/chan_send-go1.19.8-debug1.txt");
    const DEBUG1_GO127: &str = include_str!("testdata/mutex-go1.27.3-debug1.txt");
    const DEBUG2_GO124: &str = include_str!("testdata/pool_drain-go1.24.11-debug2.txt");
    const DEBUG1_NETIO: &str = include_str!("testdata/netio-go1.22.10-debug1.txt");

    #[test]
    fn package_paths() {
        assert_eq!(package_of("main.(*Hub).Publish.func1"), "main");
        assert_eq!(package_of("net/http.(*conn).serve"), "net/http");
        assert_eq!(
            package_of("internal/poll.runtime_pollWait"),
            "internal/poll"
        );
        assert_eq!(
            package_of("leaktrace.test/fixtures/internal/truth.(*Run).Drive"),
            "leaktrace.test/fixtures/internal/truth"
        );
        assert_eq!(
            package_of("golang.org/x/sync/errgroup.(*Group).Go.func1"),
            "golang.org/x/sync/errgroup"
        );
        assert_eq!(package_of("main.Map[go.shape.int,a/b.T]"), "main");
        assert_eq!(package_of("runtime.gopark"), "runtime");

        for f in [
            "runtime.gopark",
            "sync.(*WaitGroup).Wait",
            "internal/sync.(*Mutex).lockSlow",
            "net.(*conn).Read",
            "time.Sleep",
            "vendor/golang.org/x/net/http2/hpack.(*Decoder).Write",
        ] {
            assert!(is_stdlib_function(f), "{f} is stdlib");
        }
        for f in [
            "main.main",
            "main.(*Pool).worker",
            "leaktrace.test/fixtures/internal/truth.Parse.func1",
            "github.com/x/y.F",
        ] {
            assert!(!is_stdlib_function(f), "{f} is not stdlib");
        }
    }

    #[test]
    fn debug1_chan_send_go119() {
        let p = Profile::parse(DEBUG1_GO119).unwrap();
        assert_eq!(p.format, Format::Debug1);
        assert_eq!(p.total, p.records.iter().map(|r| r.count).sum::<u64>());
        let leak = p.largest().unwrap();
        assert_eq!(leak.count, 59);
        assert_eq!(leak.frames.len(), 1);
        let f = &leak.frames[0];
        assert_eq!(f.function, "main.(*Hub).Publish.func1");
        assert!(
            f.file.ends_with("tests/fixtures/go/chan_send/main.go"),
            "{}",
            f.file
        );
        assert!(f.line > 0);
        assert_eq!(leak.first_non_stdlib_frame(), Some(f));
        assert_eq!(leak.entry(), Some(f));
        assert_eq!(leak.pcs.len(), 5);
        assert_eq!(leak.frame_pcs, vec![0x4c0564]);
        assert_eq!(p.count_blocked_at("main.(*Hub).Publish.func1"), 59);
        assert!(leak.wait_reason.is_none() && leak.created_by.is_none());

        // The signal loop is all stdlib; the main goroutine's first
        // non-stdlib frame is the truth package, not main.
        let by_site = p.counts_by_blocked_at();
        assert_eq!(by_site["<stdlib>"], 1);
        assert!(by_site.contains_key("leaktrace.test/fixtures/internal/truth.(*Run).PrintTruth"));
    }

    #[test]
    fn debug1_mutex_go127_stdlib_frames_above_blocked_site() {
        let p = Profile::parse(DEBUG1_GO127).unwrap();
        let leak = p.largest().unwrap();
        assert!(leak.count >= 50, "{}", leak.count);
        let fns = leak.functions();
        assert!(
            fns[0].starts_with("internal/sync.") || fns[0].starts_with("sync."),
            "{fns:?}"
        );
        assert!(fns.contains(&"sync.(*Mutex).Lock"), "{fns:?}");
        assert_eq!(
            leak.first_non_stdlib_frame().unwrap().function,
            "main.(*ConfigCache).Get"
        );
        assert_eq!(p.count_blocked_at("main.(*ConfigCache).Get"), leak.count);
    }

    #[test]
    fn debug1_netio_many_stdlib_frames() {
        let p = Profile::parse(DEBUG1_NETIO).unwrap();
        let n = p.count_blocked_at("main.(*StockClient).lookup");
        assert!(n >= 20, "{n}");
        let r = p.blocked_at("main.(*StockClient).lookup").next().unwrap();
        assert!(r.has_frame("internal/poll.runtime_pollWait"));
        assert!(r.has_frame("bufio.(*Reader).ReadString"));
        // The accept loop is one goroutine in IO wait too, not the leak.
        assert_eq!(p.count_blocked_at("main.(*stockServer).acceptLoop"), 1);
    }

    #[test]
    fn debug2_pool_drain_go124() {
        let p = Profile::parse(DEBUG2_GO124).unwrap();
        assert_eq!(p.format, Format::Debug2);
        assert_eq!(p.total, p.records.iter().map(|r| r.count).sum::<u64>());
        let m = p.counts_by_site_and_reason();
        let workers = m[&(
            "main.(*Pool).worker".to_string(),
            "chan receive".to_string(),
        )];
        let drains = m[&(
            "main.(*Pool).Drain".to_string(),
            "sync.WaitGroup.Wait".to_string(),
        )];
        assert_eq!(workers, 4 * drains);
        let w = p.blocked_at("main.(*Pool).worker").next().unwrap();
        assert_eq!(w.created_by.as_ref().unwrap().function, "main.NewPool");
        assert!(w.created_by.as_ref().unwrap().line > 0);
        let d = p.blocked_at("main.(*Pool).Drain").next().unwrap();
        assert_eq!(
            d.created_by.as_ref().unwrap().function,
            "main.(*Exporter).Start"
        );
        assert_eq!(d.goroutine_ids.len() as u64, d.count);
        // The goroutine that wrote the profile is running.
        assert!(
            p.records
                .iter()
                .any(|r| r.wait_reason.as_deref() == Some("running"))
        );
    }

    #[test]
    fn at_a_site_or_at_a_standard_library_start() {
        let text = "goroutine 7 [IO wait]:\n\
internal/poll.runtime_pollWait(0x1, 0x72)\n\
\t/go/src/runtime/netpoll.go:351 +0x85\n\
net/http.(*persistConn).readLoop(0xc000)\n\
\t/go/src/net/http/transport.go:2493 +0x17d\n\
created by net/http.(*Transport).dialConn in goroutine 6\n\
\t/go/src/net/http/transport.go:2123 +0xc25\n\
\n\
goroutine 8 [select]:\n\
net/http.(*persistConn).roundTrip(0xc000)\n\
\t/go/src/net/http/transport.go:3092 +0x84a\n\
main.(*PriceFeed).refresh(0xc000)\n\
\t/src/main.go:69 +0x68\n\
created by main.(*PriceFeed).RefreshAsync in goroutine 1\n\
\t/src/main.go:82 +0x4f\n";
        let p = Profile::parse(text).unwrap();
        assert_eq!(p.count_at("net/http.(*persistConn).readLoop"), 1);
        assert_eq!(p.count_at("main.(*PriceFeed).refresh"), 1);
        // A standard-library frame under the program's own is not a site.
        assert_eq!(p.count_at("net/http.(*persistConn).roundTrip"), 0);
        assert_eq!(p.count_blocked_at("net/http.(*persistConn).readLoop"), 0);
    }

    #[test]
    fn debug2_details() {
        let text = "goroutine 1 [running]:\n\
main.main()\n\
\t/src/main.go:10 +0x1d\n\
\n\
goroutine 7 [chan receive, 5 minutes]:\n\
main.consume(0xc0000a0090)\n\
\t/src/pipe.go:55 +0x44\n\
main.inlined(...)\n\
\t/src/pipe.go:60\n\
created by main.startPipeline in goroutine 1\n\
\t/src/pipe.go:21 +0x6b\n\
\n\
goroutine 8 [chan receive, 5 minutes, locked to thread]:\n\
main.consume(0xc0000a0098)\n\
\t/src/pipe.go:55 +0x44\n\
main.inlined(...)\n\
\t/src/pipe.go:60\n\
created by main.startPipeline in goroutine 1\n\
\t/src/pipe.go:21 +0x6b\n\
\n\
goroutine 9 [select (no cases) (leaked)]:\n\
main.(*T).run.func1()\n\
\t/src/t.go:3 +0x1\n\
created by main.(*T).run\n\
\t/src/t.go:2 +0x2\n";
        let p = Profile::parse(text).unwrap();
        assert_eq!(p.total, 4);
        assert_eq!(p.records.len(), 3);
        let r = &p.records[1];
        assert_eq!(r.count, 2);
        assert_eq!(r.goroutine_ids, vec![7, 8]);
        assert_eq!(r.wait_reason.as_deref(), Some("chan receive"));
        assert_eq!(r.functions(), vec!["main.consume", "main.inlined"]);
        assert_eq!(r.frames[1].line, 60);
        assert_eq!(
            r.created_by,
            Some(Frame {
                function: "main.startPipeline".into(),
                file: "/src/pipe.go".into(),
                line: 21
            })
        );
        let r = &p.records[2];
        assert_eq!(r.wait_reason.as_deref(), Some("select (no cases)"));
        assert_eq!(r.frames[0].function, "main.(*T).run.func1");
        assert_eq!(r.created_by.as_ref().unwrap().function, "main.(*T).run");
    }

    #[test]
    fn debug1_labels_and_errors() {
        let text = "goroutine profile: total 2\n\
2 @ 0x1 0x2\n\
# labels: {\"handler\":\"orders\"}\n\
#\t0x1\tmain.f+0x10\t\t/a b/main.go:3\n";
        let p = Profile::parse(text).unwrap();
        assert_eq!(
            p.records[0].labels.as_deref(),
            Some("{\"handler\":\"orders\"}")
        );
        assert_eq!(p.records[0].frames[0].file, "/a b/main.go");
        assert!(Profile::parse("hello").is_err());
        assert!(Profile::parse("goroutine profile: total x\n").is_err());
        assert!(
            Profile::parse("goroutine profile: total 1\n#\t0x1\tmain.f+0x1\t/m.go:1\n").is_err()
        );
    }
}
