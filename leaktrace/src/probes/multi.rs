//! Many uprobe points, one kernel link: `BPF_TRACE_UPROBE_MULTI` (Linux ≥ 6.6).
//!
//! Why (issue #14): a perf-event uprobe link costs an RCU-tasks-trace grace
//! period when it is destroyed (~0.1 s here), and the kernel destroys them one
//! at a time under its trace event mutex, so a tokio session with 383 (832
//! with `--detailed`) per-point links took 32–64 s to exit whatever number of
//! threads dropped them. A multi-uprobe link registers every offset of one
//! file in one `bpf(BPF_LINK_CREATE)` and unregisters them all with a single
//! grace period when its fd is closed.
//!
//! The catch with aya 0.14: it loads every uprobe program with
//! `expected_attach_type = 0`, and the kernel accepts a uprobe-multi link only
//! for a program loaded with `BPF_TRACE_UPROBE_MULTI` (link_create fails with
//! `EINVAL`); the same load-time field also picks which
//! `bpf_get_attach_cookie` implementation the program calls, so the attach
//! type cannot be bolted on later. aya-obj 0.3 knows no `uprobe.multi`
//! section either. [`load_multi_copy`] therefore loads a *second copy* of the
//! program from the same object with the right attach type, relocated against
//! the maps (and BTF) of aya's already-loaded copy, which it finds through the
//! kernel's own record of that copy (`BPF_OBJ_GET_INFO_BY_FD`: map ids, BTF
//! id). Both copies write to the same ring buffer and read the same
//! configuration; aya keeps owning the maps.
//!
//! [`MultiLinks`] is what [`super::Probes`] keeps: a copy per program, the
//! links, and the fallback decision. [`drop_in_pool`] detaches whatever
//! per-point links remain with a few threads rather than one per link.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{maps::MapInfo, programs::UProbe};
use aya_obj::{
    Object, ProgramSection,
    generated::{
        bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_info,
        bpf_prog_type::BPF_PROG_TYPE_KPROBE,
    },
};

use super::AttachPoint;

/// `BPF_TRACE_UPROBE_MULTI` in `enum bpf_attach_type` (include/uapi/linux/bpf.h,
/// Linux 6.6+): 48.
pub const BPF_TRACE_UPROBE_MULTI: u32 = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
const _: () = assert!(BPF_TRACE_UPROBE_MULTI == 48);

/// `BPF_F_SLEEPABLE` (prog_flags), for `uprobe.s` programs.
const BPF_F_SLEEPABLE: u32 = 1 << 4;

/// Threads [`drop_in_pool`] uses at most.
pub const DETACH_THREADS: usize = 8;

/// Setting this to `0` skips multi links (per-point links only), to compare
/// or to work around a kernel that misbehaves with them.
pub const DISABLE_ENV: &str = "LEAKTRACE_UPROBE_MULTI";

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr of the size passed;
    // the pointers inside it are the caller's and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain old data; all-zero is its documented default.
    unsafe { std::mem::zeroed() }
}

/// Attach the loaded uprobe program `prog_fd` (loaded with
/// `expected_attach_type = BPF_TRACE_UPROBE_MULTI`, see [`load_multi_copy`])
/// at every file offset of `target`, as function-entry probes (not return
/// probes), for process `pid` only (0: every process). `cookies` is empty or
/// one per offset; the program reads its point's cookie with
/// `bpf_get_attach_cookie`.
///
/// Returns the link: closing it detaches every point, paying one RCU grace
/// period for all of them. Kernels before 6.6 fail with `EINVAL` (unknown
/// attach type) or `EOPNOTSUPP`/`ENOTSUPP` (built without uprobes); a program
/// loaded without the attach type also gets `EINVAL`. Callers fall back to
/// per-point links on any error.
pub fn attach_uprobe_multi(
    prog_fd: BorrowedFd<'_>,
    target: &Path,
    offsets: &[u64],
    cookies: &[u64],
    pid: u32,
) -> io::Result<OwnedFd> {
    if offsets.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "uprobe_multi: no offsets",
        ));
    }
    if !cookies.is_empty() && cookies.len() != offsets.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "uprobe_multi: {} cookies for {} offsets",
                cookies.len(),
                offsets.len()
            ),
        ));
    }
    let cnt = u32::try_from(offsets.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "uprobe_multi: too many"))?;
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

    let mut attr = zeroed_attr();
    // SAFETY: only writes, into the link_create member of a zeroed union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog_fd.as_raw_fd() as u32;
    link.attach_type = BPF_TRACE_UPROBE_MULTI;
    link.flags = 0;
    // SAFETY: as above.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = path.as_ptr() as u64;
    multi.offsets = offsets.as_ptr() as u64;
    multi.ref_ctr_offsets = 0;
    multi.cookies = if cookies.is_empty() {
        0
    } else {
        cookies.as_ptr() as u64
    };
    multi.cnt = cnt;
    multi.flags = 0; // entry probes; BPF_F_UPROBE_MULTI_RETURN (1) would make them return probes
    multi.pid = pid;
    fd_sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Whether `e` (from [`attach_uprobe_multi`]) means this kernel has no
/// uprobe-multi links at all, so trying again for another program is
/// pointless.
pub fn is_unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // the kernel-internal code uprobes return when compiled out
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// The leaktrace probes object (what [`super::Probes::load`] loads), for
/// [`load_multi_copy`].
pub fn embedded_object() -> &'static [u8] {
    super::PROBES_OBJECT
}

/// The kernel's id for program `fd`.
fn prog_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: plain old data.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.id)
}

/// Whether the kernel still has program `id` (a reference taken to find
/// out is dropped at once).
fn prog_exists(id: u32) -> bool {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.prog_id = id;
    fd_sys_bpf(bpf_cmd::BPF_PROG_GET_FD_BY_ID, &mut attr).is_ok()
}

fn btf_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
    fd_sys_bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr)
}

/// The kernel's object name for `name`: at most 15 bytes (BPF_OBJ_NAME_LEN
/// 16 with the NUL), as aya truncates it.
fn kernel_name(name: &str) -> &[u8] {
    let b = name.as_bytes();
    &b[..b.len().min(15)]
}

/// A second copy of uprobe program `name` from `object`, loaded with
/// `expected_attach_type = BPF_TRACE_UPROBE_MULTI` for
/// [`attach_uprobe_multi`]. `loaded` is aya's copy of the same program, from
/// the same object, already loaded: the new copy is relocated against the
/// maps that copy uses (found by name among the kernel's map ids for it) and
/// loaded with its BTF, so the two are interchangeable. Errors say why; the
/// caller falls back to aya's per-point links.
pub fn load_multi_copy(object: &[u8], name: &str, loaded: &UProbe) -> Result<OwnedFd> {
    let info = loaded
        .info()
        .with_context(|| format!("reading the kernel's info on program {name}"))?;
    let map_ids = info
        .map_ids()
        .context("listing the program's maps")?
        .ok_or_else(|| anyhow!("the kernel does not list a program's maps"))?;
    let mut kernel_maps: Vec<(Vec<u8>, OwnedFd)> = Vec::with_capacity(map_ids.len());
    for id in map_ids {
        let map = MapInfo::from_id(id).with_context(|| format!("map id {id}"))?;
        let fd = map.fd().with_context(|| format!("opening map id {id}"))?;
        // MapFd → OwnedFd: keep our own duplicate, the MapFd is dropped here.
        let owned = fd.as_fd().try_clone_to_owned()?;
        kernel_maps.push((map.name().to_vec(), owned));
    }

    let mut obj = Object::parse(object).context("parsing the probes object")?;
    let program = obj
        .programs
        .get(name)
        .ok_or_else(|| anyhow!("program {name} missing from the probes object"))?
        .clone();
    let sleepable = match program.section {
        ProgramSection::UProbe { sleepable } => sleepable,
        ref other => bail!("program {name} is not an entry uprobe ({other:?})"),
    };
    if obj.has_btf_relocations() {
        let btf = aya::Btf::from_sys_fs().context("reading the kernel BTF for CO-RE")?;
        obj.relocate_btf(&btf)?;
    }

    // Every map of the object needs an fd for the relocation pass, which
    // walks all functions; maps this program does not use get -1 (the kernel
    // would refuse it, but no instruction of this program refers to them).
    let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    let mut fds: Vec<RawFd> = Vec::with_capacity(maps.len());
    for (map_name, _) in &maps {
        let want = kernel_name(map_name);
        let mut found = kernel_maps.iter().filter(|(n, _)| n.as_slice() == want);
        let fd = match (found.next(), found.next()) {
            (Some((_, fd)), None) => fd.as_raw_fd(),
            (None, _) => -1,
            (Some(_), Some(_)) => {
                bail!("two maps of program {name} have the kernel name {map_name:.15}")
            }
        };
        fds.push(fd);
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        maps.iter()
            .zip(&fds)
            .map(|((map_name, map), fd)| (map_name.as_str(), *fd, map)),
        &text_sections,
    )?;
    obj.relocate_calls(&text_sections)?;
    obj.sanitize_functions(aya::features());
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or_else(|| anyhow!("program {name} has no function in the object"))?;

    let btf = info.btf_id().map(btf_fd_by_id).transpose()?;
    let load = ProgLoad {
        name,
        insns: &function.instructions,
        license: &program.license,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        flags: if sleepable { BPF_F_SLEEPABLE } else { 0 },
        btf: btf.as_ref().map(|fd| BtfInfo {
            fd: fd.as_fd(),
            func_info: function.func_info.func_info_bytes(),
            // len(), not num_info: that counts the whole section's records.
            func_info_cnt: function.func_info.len() as u32,
            func_info_rec_size: function.func_info_rec_size as u32,
            line_info: function.line_info.line_info_bytes(),
            line_info_cnt: function.line_info.len() as u32,
            line_info_rec_size: function.line_info_rec_size as u32,
        }),
    };
    load.load()
        .with_context(|| format!("loading a uprobe-multi copy of {name}"))
}

struct BtfInfo<'a> {
    fd: BorrowedFd<'a>,
    func_info: Vec<u8>,
    func_info_cnt: u32,
    func_info_rec_size: u32,
    line_info: Vec<u8>,
    line_info_cnt: u32,
    line_info_rec_size: u32,
}

/// `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_KPROBE` program.
struct ProgLoad<'a> {
    name: &'a str,
    insns: &'a [bpf_insn],
    license: &'a std::ffi::CStr,
    expected_attach_type: u32,
    flags: u32,
    btf: Option<BtfInfo<'a>>,
}

impl ProgLoad<'_> {
    fn attr(&self, log: Option<&mut [u8]>) -> bpf_attr {
        let mut attr = zeroed_attr();
        // SAFETY: only writes, into the prog-load member of a zeroed union.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        u.prog_type = BPF_PROG_TYPE_KPROBE as u32;
        u.expected_attach_type = self.expected_attach_type;
        u.insns = self.insns.as_ptr() as u64;
        u.insn_cnt = self.insns.len() as u32;
        u.license = self.license.as_ptr() as u64;
        u.prog_flags = self.flags;
        for (dst, src) in u.prog_name.iter_mut().zip(kernel_name(self.name)) {
            *dst = *src as libc::c_char;
        }
        if let Some(btf) = &self.btf {
            u.prog_btf_fd = btf.fd.as_raw_fd() as u32;
            if btf.func_info_rec_size > 0 && btf.func_info_cnt > 0 {
                u.func_info = btf.func_info.as_ptr() as u64;
                u.func_info_cnt = btf.func_info_cnt;
                u.func_info_rec_size = btf.func_info_rec_size;
            }
            if btf.line_info_rec_size > 0 && btf.line_info_cnt > 0 {
                u.line_info = btf.line_info.as_ptr() as u64;
                u.line_info_cnt = btf.line_info_cnt;
                u.line_info_rec_size = btf.line_info_rec_size;
            }
        }
        if let Some(log) = log {
            u.log_level = 1;
            u.log_buf = log.as_mut_ptr() as u64;
            u.log_size = log.len() as u32;
        }
        attr
    }

    fn load(&self) -> Result<OwnedFd> {
        let mut first = None;
        for _ in 0..5 {
            match fd_sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut self.attr(None)) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => first = Some(e),
                Err(e) => {
                    first = Some(e);
                    break;
                }
            }
        }
        let err = first.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EAGAIN));
        // Again with the verifier's log, for the message.
        let mut log = vec![0u8; 4 << 20];
        let again = fd_sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut self.attr(Some(&mut log)));
        if let Ok(fd) = again {
            return Ok(fd);
        }
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(anyhow!(
            "BPF_PROG_LOAD: {err}{}{}",
            if tail.is_empty() { "" } else { "; verifier:\n" },
            tail.join("\n")
        ))
    }
}

/// The multi-uprobe side of [`super::Probes`]: one program copy per program
/// name (loaded on first use), every link, and whether to keep trying.
#[derive(Default)]
pub struct MultiLinks {
    copies: HashMap<String, OwnedFd>,
    /// Each link with its program's name (the overhead budget detaches one
    /// program's links).
    links: Vec<(String, OwnedFd)>,
    /// Set once the kernel said it has no multi links: later programs go
    /// straight to per-point links.
    unsupported: bool,
}

impl MultiLinks {
    /// Attach aya's loaded program `prog` (named `name` in `object`) at every
    /// point of `exe` for `pid` with one multi link. `false`: not done (the
    /// reason is logged), the caller attaches per-point links instead.
    pub fn try_attach(
        &mut self,
        object: &[u8],
        name: &str,
        prog: &UProbe,
        points: &[AttachPoint],
        exe: &Path,
        pid: u32,
    ) -> bool {
        if self.unsupported || points.is_empty() {
            return false;
        }
        if std::env::var(DISABLE_ENV).is_ok_and(|v| v == "0") {
            log::debug!("{DISABLE_ENV}=0: per-point uprobe links");
            self.unsupported = true;
            return false;
        }
        if !self.copies.contains_key(name) {
            let t = Instant::now();
            match load_multi_copy(object, name, prog) {
                Ok(fd) => {
                    log::debug!(
                        "uprobe-multi copy of {name} loaded in {:.1} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    );
                    self.copies.insert(name.to_string(), fd);
                }
                Err(e) => {
                    log::info!("per-point uprobe links for {name}: {e:#}");
                    return false;
                }
            }
        }
        let prog_fd = self.copies[name].as_fd();
        let offsets: Vec<u64> = points.iter().map(|p| p.file_offset).collect();
        let cookies: Vec<u64> = points.iter().map(|p| p.cookie).collect();
        let t = Instant::now();
        match attach_uprobe_multi(prog_fd, exe, &offsets, &cookies, pid) {
            Ok(link) => {
                log::debug!(
                    "{name}: one uprobe-multi link for {} points in {:.1} ms",
                    points.len(),
                    t.elapsed().as_secs_f64() * 1e3
                );
                self.links.push((name.to_string(), link));
                true
            }
            Err(e) => {
                if is_unsupported(&e) || e.raw_os_error() == Some(libc::EINVAL) {
                    // EINVAL: the attach type is unknown before 6.6 (a bad
                    // offset is reported the same way; per-point links then
                    // say which one).
                    self.unsupported = true;
                }
                log::info!(
                    "per-point uprobe links for {name} ({} points): uprobe-multi link refused: {e}",
                    points.len()
                );
                false
            }
        }
    }

    /// Multi links made so far.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The links, for the caller to close (in [`drop_in_pool`] with the
    /// rest); the program copies go when `self` is dropped.
    pub fn take_links(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.links)
            .into_iter()
            .map(|(_, fd)| fd)
            .collect()
    }

    /// The links of program `name` only, for the caller to close.
    pub fn take_links_of(&mut self, name: &str) -> Vec<OwnedFd> {
        let (of, rest) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.links = rest;
        of.into_iter().map(|(_, fd)| fd).collect()
    }
}

/// Longest [`MultiLinks`]' drop waits for the kernel to free the copies.
const UNLOAD_WAIT: Duration = Duration::from_secs(2);

impl Drop for MultiLinks {
    /// Closes the links (if still here) and the program copies, then waits
    /// until the kernel has freed the copies: a closed uprobe-multi link
    /// drops its program only after an RCU-tasks-trace and an RCU grace
    /// period (the link counts as sleepable), so without this wait the copy
    /// would outlive leaktrace's exit by a moment (`bpftool prog` still shows
    /// it), unlike per-point links whose programs go synchronously.
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.links));
        let ids: Vec<u32> = self
            .copies
            .values()
            .filter_map(|fd| prog_id(fd.as_fd()).ok())
            .collect();
        self.copies.clear();
        let t = Instant::now();
        let mut left = ids;
        while !left.is_empty() && t.elapsed() < UNLOAD_WAIT {
            std::thread::sleep(Duration::from_millis(2));
            left.retain(|&id| prog_exists(id));
        }
        if left.is_empty() {
            log::debug!(
                "uprobe-multi program copies freed {:.1} ms after close",
                t.elapsed().as_secs_f64() * 1e3
            );
        } else {
            log::debug!("uprobe-multi program copies {left:?} still loaded after {UNLOAD_WAIT:?}");
        }
    }
}

/// Drop every item on at most `max_threads` threads (at least one), a few
/// items per thread, returning when all are dropped. For per-point uprobe
/// links: each one's destruction waits out a grace period, so dropping them
/// one after the other on one thread is the slowest way, and one thread per
/// link (hundreds) is no faster than a few.
pub fn drop_in_pool<T: Send>(items: Vec<T>, max_threads: usize) {
    let threads = max_threads.max(1).min(items.len());
    if threads <= 1 {
        drop(items);
        return;
    }
    let queue = Mutex::new(items);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let item = queue.lock().ok().and_then(|mut q| q.pop());
                    match item {
                        Some(item) => drop(item),
                        None => break,
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_drops_everything() {
        use std::sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        };
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        for n in [0, 1, 7, 100] {
            let count = Arc::new(AtomicUsize::new(0));
            let items = (0..n).map(|_| Counted(count.clone())).collect();
            drop_in_pool(items, DETACH_THREADS);
            assert_eq!(count.load(Ordering::SeqCst), n);
        }
    }

    #[test]
    fn kernel_names_are_truncated_like_aya() {
        assert_eq!(kernel_name("EVENTS"), b"EVENTS");
        assert_eq!(kernel_name("A_VERY_LONG_MAP_NAME"), b"A_VERY_LONG_MAP");
    }

    #[test]
    fn bad_arguments_are_refused_before_the_kernel() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let e = attach_uprobe_multi(fd.as_fd(), Path::new("/bin/true"), &[], &[], 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e =
            attach_uprobe_multi(fd.as_fd(), Path::new("/bin/true"), &[1, 2], &[1], 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
