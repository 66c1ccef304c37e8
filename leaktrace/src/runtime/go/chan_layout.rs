//! Byte offsets of what leaktrace reads to learn which channel a blocked
//! goroutine waits on: `g.waiting` → the `runtime.sudog` list →
//! `runtime.hchan` (and its `runtime.waitq`s), and the runtime timers that
//! feed `time` channels (`runtime.timer`, the per-P timer heap).
//!
//! DWARF wins when the binary has it (`layout.rs` reads these structs);
//! this table, per Go minor version, is for builds without. Every entry was
//! measured from DWARF of a program built with that release (linux/amd64;
//! arm64 is identical: every field is pointer-sized or naturally aligned),
//! and `tests/tests/go_channel_layout.rs` checks the table against Go's own
//! `debug/dwarf` for every installed toolchain.
//!
//! This file has no dependencies on purpose: the e2e test includes it as is.

/// Offsets of the channel-related runtime fields, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChanLayout {
    /// `g.waiting`: the goroutine's sudog list (chan send/receive, select).
    pub g_waiting: u32,
    pub sudog_g: u32,
    pub sudog_next: u32,
    pub sudog_prev: u32,
    /// A `bool`.
    pub sudog_is_select: u32,
    /// Next sudog of the same goroutine's `g.waiting` list (select).
    pub sudog_waitlink: u32,
    /// The `*hchan`. Go ≥ 1.26 wraps it (`maybeTraceableChan`), whose `vu`
    /// word is the source of truth; this is that word.
    pub sudog_c: u32,
    pub sizeof_sudog: u32,
    pub hchan_qcount: u32,
    pub hchan_dataqsiz: u32,
    /// A `uint16`.
    pub hchan_elemsize: u32,
    /// A `uint32`.
    pub hchan_closed: u32,
    /// `hchan.timer`, Go ≥ 1.23: set for the channels of `time` timers and
    /// tickers (unless `asynctimerchan=1`, the default for modules older
    /// than go 1.23 until Go 1.27).
    pub hchan_timer: Option<u32>,
    pub hchan_elemtype: u32,
    pub hchan_recvq_first: u32,
    pub hchan_recvq_last: u32,
    pub hchan_sendq_first: u32,
    pub hchan_sendq_last: u32,
    pub sizeof_hchan: u32,
    /// `runtime.timer.when` (Go ≥ 1.23: 0 once stopped or fired).
    pub timer_when: u32,
    /// `runtime.timer.period` (non-zero: a ticker).
    pub timer_period: u32,
    /// Before Go 1.23 `timer.status`, a `uint32` (3, 4, 5: deleted,
    /// removing, removed); since, `timer.state`, a `uint8` of flags (4:
    /// zombie, i.e. stopped but still in a heap).
    pub timer_status: u32,
    /// `runtime.timer.arg`, an `any`: type word, then data word (for a
    /// `time` channel timer, the data word is the `*hchan`).
    pub timer_arg: u32,
    /// `runtime.timer.isChan`, Go ≥ 1.23.
    pub timer_is_chan: Option<u32>,
    pub sizeof_timer: u32,
    /// The timer heap slice header inside `runtime.p`: `p.timers` (a
    /// `[]*timer`) before Go 1.23, `p.timers.heap` (a `[]timerWhen`) since.
    /// `None` where it was not measured (no toolchain of that release).
    pub p_timer_heap: Option<u32>,
    /// Bytes per heap entry: 8 (`*timer`) or 16 (`timerWhen{timer, when}`);
    /// the timer pointer is the entry's first word either way.
    pub timer_heap_stride: u32,
}

impl ChanLayout {
    /// The compiled-in layout for Go 1.`minor`.
    pub fn for_minor(minor: u32) -> Option<ChanLayout> {
        // hchan, sudog and timer as of 1.19–1.22.
        let old = ChanLayout {
            g_waiting: 328,
            sudog_g: 0,
            sudog_next: 8,
            sudog_prev: 16,
            sudog_is_select: 52,
            sudog_waitlink: 64,
            sudog_c: 80,
            sizeof_sudog: 88,
            hchan_qcount: 0,
            hchan_dataqsiz: 8,
            hchan_elemsize: 24,
            hchan_closed: 28,
            hchan_timer: None,
            hchan_elemtype: 32,
            hchan_recvq_first: 56,
            hchan_recvq_last: 64,
            hchan_sendq_first: 72,
            hchan_sendq_last: 80,
            sizeof_hchan: 96,
            timer_when: 8,
            timer_period: 16,
            timer_status: 64,
            timer_arg: 32,
            timer_is_chan: None,
            sizeof_timer: 72,
            p_timer_heap: Some(8840),
            timer_heap_stride: 8,
        };
        // 1.23: hchan.timer; the timer rewritten; p.timers is a struct.
        let new = ChanLayout {
            g_waiting: 320,
            hchan_timer: Some(32),
            hchan_elemtype: 40,
            hchan_recvq_first: 64,
            hchan_recvq_last: 72,
            hchan_sendq_first: 80,
            hchan_sendq_last: 88,
            sizeof_hchan: 104,
            timer_when: 16,
            timer_period: 24,
            timer_status: 9,
            timer_arg: 40,
            timer_is_chan: Some(10),
            sizeof_timer: 88,
            p_timer_heap: Some(8840 + 8),
            timer_heap_stride: 16,
            ..old
        };
        // 1.25: hchan.bubble, timer.rand.
        let bubble = ChanLayout {
            g_waiting: 312,
            sizeof_hchan: 112,
            timer_when: 24,
            timer_period: 32,
            timer_arg: 48,
            sizeof_timer: 96,
            p_timer_heap: Some(9392 + 8),
            ..new
        };
        Some(match minor {
            // measured with go1.19.8
            19 => old,
            // from the go1.20.6 sources (identical to 1.19 and 1.21 for
            // these structs); p's layout changed around its timers, and no
            // 1.20 toolchain was at hand to measure it.
            20 => ChanLayout {
                p_timer_heap: None,
                ..old
            },
            // measured with go1.21.13
            21 => ChanLayout {
                g_waiting: 312,
                ..old
            },
            // measured with go1.22.10
            22 => ChanLayout {
                g_waiting: 312,
                p_timer_heap: Some(8872),
                ..old
            },
            // measured with go1.23.9 and go1.24.11
            23 | 24 => new,
            // measured with go1.25.5
            25 => bubble,
            // measured with go1.26.6 and go1.27.3: sudog.elem and sudog.c
            // became {vp, vu} pairs.
            26 | 27 => ChanLayout {
                g_waiting: 320,
                sudog_is_select: 60,
                sudog_waitlink: 72,
                sudog_c: 88 + 8,
                sizeof_sudog: 104,
                p_timer_heap: Some(13672 + 8),
                ..bubble
            },
            _ => return None,
        })
    }

    /// Every field by name, for diffs and diagnostics.
    pub fn fields(&self) -> [(&'static str, Option<u32>); 27] {
        [
            ("g.waiting", Some(self.g_waiting)),
            ("sudog.g", Some(self.sudog_g)),
            ("sudog.next", Some(self.sudog_next)),
            ("sudog.prev", Some(self.sudog_prev)),
            ("sudog.isSelect", Some(self.sudog_is_select)),
            ("sudog.waitlink", Some(self.sudog_waitlink)),
            ("sudog.c", Some(self.sudog_c)),
            ("sizeof(sudog)", Some(self.sizeof_sudog)),
            ("hchan.qcount", Some(self.hchan_qcount)),
            ("hchan.dataqsiz", Some(self.hchan_dataqsiz)),
            ("hchan.elemsize", Some(self.hchan_elemsize)),
            ("hchan.closed", Some(self.hchan_closed)),
            ("hchan.timer", self.hchan_timer),
            ("hchan.elemtype", Some(self.hchan_elemtype)),
            ("hchan.recvq.first", Some(self.hchan_recvq_first)),
            ("hchan.recvq.last", Some(self.hchan_recvq_last)),
            ("hchan.sendq.first", Some(self.hchan_sendq_first)),
            ("hchan.sendq.last", Some(self.hchan_sendq_last)),
            ("sizeof(hchan)", Some(self.sizeof_hchan)),
            ("timer.when", Some(self.timer_when)),
            ("timer.period", Some(self.timer_period)),
            ("timer.status/state", Some(self.timer_status)),
            ("timer.arg", Some(self.timer_arg)),
            ("timer.isChan", self.timer_is_chan),
            ("sizeof(timer)", Some(self.sizeof_timer)),
            ("p.timers heap", self.p_timer_heap),
            ("timer heap stride", Some(self.timer_heap_stride)),
        ]
    }

    /// `(field, self, other)` for every field that differs.
    pub fn differences(&self, other: &ChanLayout) -> Vec<(&'static str, String, String)> {
        let show = |v: Option<u32>| v.map_or_else(|| "absent".to_owned(), |v| v.to_string());
        self.fields()
            .iter()
            .zip(other.fields().iter())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| (a.0, show(a.1), show(b.1)))
            .collect()
    }

    /// Bytes to read of a sudog / hchan / timer to have every field used.
    pub fn sudog_read_len(&self) -> usize {
        let end = [
            self.sudog_g,
            self.sudog_next,
            self.sudog_prev,
            self.sudog_waitlink,
            self.sudog_c,
        ]
        .into_iter()
        .map(|o| o + 8)
        .chain([self.sudog_is_select + 1])
        .max()
        .unwrap_or(0);
        end.max(self.sizeof_sudog.min(256)) as usize
    }

    pub fn hchan_read_len(&self) -> usize {
        let end = [
            self.hchan_qcount,
            self.hchan_dataqsiz,
            self.hchan_elemtype,
            self.hchan_recvq_first,
            self.hchan_recvq_last,
            self.hchan_sendq_first,
            self.hchan_sendq_last,
        ]
        .into_iter()
        .chain(self.hchan_timer)
        .map(|o| o + 8)
        .chain([self.hchan_closed + 4, self.hchan_elemsize + 2])
        .max()
        .unwrap_or(0);
        end as usize
    }

    pub fn timer_read_len(&self) -> usize {
        [
            self.timer_when + 8,
            self.timer_period + 8,
            self.timer_arg + 16,
            self.timer_status + 4,
        ]
        .into_iter()
        .chain(self.timer_is_chan.map(|o| o + 1))
        .max()
        .unwrap_or(0) as usize
    }
}
