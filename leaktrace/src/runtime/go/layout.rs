//! Byte offsets of the `runtime.g`, `runtime.gobuf` and `runtime.m` fields
//! the eBPF side reads.
//!
//! DWARF is the truth for the exact build, so it wins when present. Builds
//! with `-ldflags=-s -w` have none; for those a per-minor-version table
//! (measured from DWARF of each release) is used. Fields have moved in 1.21
//! (`parentGoid`), 1.23 (`syscallbp`), 1.25 (`gobuf.ret` removed) and 1.26.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

pub use super::chan_layout::ChanLayout;
use super::version::GoVersion;
use crate::{symbols::dwarf, target::elf::ElfFile};

/// No Go release's `runtime.g` comes near this (1.27: 456 bytes).
pub const MAX_SIZEOF_G: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct GLayout {
    pub g_stack_lo: u32,
    pub g_stack_hi: u32,
    pub g_m: u32,
    pub g_sched_sp: u32,
    pub g_sched_pc: u32,
    pub g_sched_bp: u32,
    pub g_syscallsp: u32,
    pub g_syscallpc: u32,
    /// Added in Go 1.23.
    pub g_syscallbp: Option<u32>,
    pub g_atomicstatus: u32,
    pub g_goid: u32,
    pub g_waitsince: u32,
    /// A `uint8` field.
    pub g_waitreason: u32,
    /// Added in Go 1.21.
    pub g_parent_goid: Option<u32>,
    pub g_gopc: u32,
    pub g_startpc: u32,
    pub m_curg: u32,
    pub m_procid: u32,
    pub sizeof_g: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum LayoutSource {
    Dwarf,
    VersionTable,
}

impl fmt::Display for LayoutSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutSource::Dwarf => "DWARF",
            LayoutSource::VersionTable => "version table",
        })
    }
}

impl GLayout {
    /// The compiled-in layout for a Go minor version (linux/amd64 and
    /// arm64 share it: every field is pointer-sized or naturally aligned).
    pub fn for_version(v: &GoVersion) -> Option<GLayout> {
        if v.major != 1 {
            return None;
        }
        let l = match v.minor {
            // measured with go1.19
            19 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 104,
                g_syscallsp: 112,
                g_syscallpc: 120,
                g_syscallbp: None,
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: None,
                g_gopc: 296,
                g_startpc: 312,
                m_curg: 192,
                m_procid: 72,
                sizeof_g: 392,
            },
            // measured with go1.20.6
            20 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 104,
                g_syscallsp: 112,
                g_syscallpc: 120,
                g_syscallbp: None,
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: None,
                g_gopc: 296,
                g_startpc: 312,
                m_curg: 192,
                m_procid: 72,
                sizeof_g: 392,
            },
            // measured with go1.21.13
            21 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 104,
                g_syscallsp: 112,
                g_syscallpc: 120,
                g_syscallbp: None,
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: Some(272),
                g_gopc: 280,
                g_startpc: 296,
                m_curg: 192,
                m_procid: 72,
                sizeof_g: 408,
            },
            // measured with go1.22.10
            22 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 104,
                g_syscallsp: 112,
                g_syscallpc: 120,
                g_syscallbp: None,
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: Some(272),
                g_gopc: 280,
                g_startpc: 296,
                m_curg: 192,
                m_procid: 72,
                sizeof_g: 424,
            },
            // measured with go1.23.9
            23 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 104,
                g_syscallsp: 112,
                g_syscallpc: 120,
                g_syscallbp: Some(128),
                g_atomicstatus: 152,
                g_goid: 160,
                g_waitsince: 176,
                g_waitreason: 184,
                g_parent_goid: Some(280),
                g_gopc: 288,
                g_startpc: 304,
                m_curg: 192,
                m_procid: 72,
                sizeof_g: 432,
            },
            // measured with go1.24.11
            24 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 104,
                g_syscallsp: 112,
                g_syscallpc: 120,
                g_syscallbp: Some(128),
                g_atomicstatus: 152,
                g_goid: 160,
                g_waitsince: 176,
                g_waitreason: 184,
                g_parent_goid: Some(280),
                g_gopc: 288,
                g_startpc: 304,
                m_curg: 192,
                m_procid: 72,
                sizeof_g: 440,
            },
            // measured with go1.25.5
            25 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 96,
                g_syscallsp: 104,
                g_syscallpc: 112,
                g_syscallbp: Some(120),
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: Some(272),
                g_gopc: 280,
                g_startpc: 296,
                m_curg: 184,
                m_procid: 64,
                sizeof_g: 440,
            },
            // measured with go1.26.6
            26 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 96,
                g_syscallsp: 104,
                g_syscallpc: 112,
                g_syscallbp: Some(120),
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: Some(280),
                g_gopc: 288,
                g_startpc: 304,
                m_curg: 184,
                m_procid: 64,
                sizeof_g: 456,
            },
            // measured with go1.27.3
            27 => GLayout {
                g_stack_lo: 0,
                g_stack_hi: 8,
                g_m: 48,
                g_sched_sp: 56,
                g_sched_pc: 64,
                g_sched_bp: 96,
                g_syscallsp: 104,
                g_syscallpc: 112,
                g_syscallbp: Some(120),
                g_atomicstatus: 144,
                g_goid: 152,
                g_waitsince: 168,
                g_waitreason: 176,
                g_parent_goid: Some(280),
                g_gopc: 288,
                g_startpc: 304,
                m_curg: 184,
                m_procid: 64,
                sizeof_g: 456,
            },
            _ => return None,
        };
        Some(l)
    }

    /// Reads the layout from the binary's DWARF. `Ok(None)` when there is
    /// no DWARF at all; `Err` when DWARF exists but lacks a needed field
    /// (which would be a Go change leaktrace does not know about yet).
    pub fn from_dwarf(elf: &ElfFile) -> Result<Option<GLayout>, String> {
        if !elf.has_dwarf() {
            return Ok(None);
        }
        let structs = read_dwarf_structs(
            elf,
            &["runtime.g", "runtime.gobuf", "runtime.m", "runtime.stack"],
        )?;
        let get = |s: &str| {
            structs
                .get(s)
                .ok_or_else(|| format!("DWARF has no type {s}"))
        };
        let (g, gobuf, m, stack) = (
            get("runtime.g")?,
            get("runtime.gobuf")?,
            get("runtime.m")?,
            get("runtime.stack")?,
        );
        let req = |st: &DwarfStruct, field: &str| {
            st.fields
                .get(field)
                .copied()
                .ok_or_else(|| format!("DWARF type {} has no field {field}", st.name))
        };
        let add = |a: u32, b: u32| {
            a.checked_add(b)
                .ok_or_else(|| "DWARF field offset overflows".to_owned())
        };
        let g_stack = req(g, "stack")?;
        let g_sched = req(g, "sched")?;
        Ok(Some(GLayout {
            g_stack_lo: add(g_stack, req(stack, "lo")?)?,
            g_stack_hi: add(g_stack, req(stack, "hi")?)?,
            g_m: req(g, "m")?,
            g_sched_sp: add(g_sched, req(gobuf, "sp")?)?,
            g_sched_pc: add(g_sched, req(gobuf, "pc")?)?,
            g_sched_bp: add(g_sched, req(gobuf, "bp")?)?,
            g_syscallsp: req(g, "syscallsp")?,
            g_syscallpc: req(g, "syscallpc")?,
            g_syscallbp: g.fields.get("syscallbp").copied(),
            g_atomicstatus: req(g, "atomicstatus")?,
            g_goid: req(g, "goid")?,
            g_waitsince: req(g, "waitsince")?,
            g_waitreason: req(g, "waitreason")?,
            g_parent_goid: g.fields.get("parentGoid").copied(),
            g_gopc: req(g, "gopc")?,
            g_startpc: req(g, "startpc")?,
            m_curg: req(m, "curg")?,
            m_procid: req(m, "procid")?,
            sizeof_g: g
                .byte_size
                .ok_or_else(|| "DWARF type runtime.g has no size".to_owned())?,
        }))
    }

    /// Why a layout read from a file cannot be the `runtime.g` of this Go
    /// version, if it cannot: a size far from `table`'s (fields are added
    /// and moved across versions, by tens of bytes, never by halves), or a
    /// field outside the struct. A wrong size would have every goroutine
    /// read with it: memory and counts would both be wrong.
    pub fn implausible(&self, table: &GLayout) -> Option<String> {
        let (lo, hi) = (
            table.sizeof_g / 2,
            (table.sizeof_g * 3 / 2).min(MAX_SIZEOF_G),
        );
        if !(lo..=hi).contains(&self.sizeof_g) {
            return Some(format!(
                "sizeof(runtime.g) = {} is outside {lo}..={hi} (this version's table: {})",
                self.sizeof_g, table.sizeof_g
            ));
        }
        let g_fields = self
            .fields()
            .into_iter()
            .filter(|(f, _)| f.starts_with("g."));
        for (field, off) in g_fields {
            if let Some(off) = off
                && off.saturating_add(8) > self.sizeof_g
            {
                return Some(format!(
                    "{field} at {off} is past the end of runtime.g ({} bytes)",
                    self.sizeof_g
                ));
            }
        }
        None
    }

    /// `(field, self, other)` for every field that differs.
    pub fn differences(&self, other: &GLayout) -> Vec<(&'static str, String, String)> {
        let a = self.fields();
        let b = other.fields();
        a.iter()
            .zip(b.iter())
            .filter(|(x, y)| x.1 != y.1)
            .map(|(x, y)| (x.0, fmt_opt(x.1), fmt_opt(y.1)))
            .collect()
    }

    /// Every field by name, for diffs and diagnostics.
    pub fn fields(&self) -> [(&'static str, Option<u32>); 19] {
        [
            ("g.stack.lo", Some(self.g_stack_lo)),
            ("g.stack.hi", Some(self.g_stack_hi)),
            ("g.m", Some(self.g_m)),
            ("g.sched.sp", Some(self.g_sched_sp)),
            ("g.sched.pc", Some(self.g_sched_pc)),
            ("g.sched.bp", Some(self.g_sched_bp)),
            ("g.syscallsp", Some(self.g_syscallsp)),
            ("g.syscallpc", Some(self.g_syscallpc)),
            ("g.syscallbp", self.g_syscallbp),
            ("g.atomicstatus", Some(self.g_atomicstatus)),
            ("g.goid", Some(self.g_goid)),
            ("g.waitsince", Some(self.g_waitsince)),
            ("g.waitreason", Some(self.g_waitreason)),
            ("g.parentGoid", self.g_parent_goid),
            ("g.gopc", Some(self.g_gopc)),
            ("g.startpc", Some(self.g_startpc)),
            ("m.curg", Some(self.m_curg)),
            ("m.procid", Some(self.m_procid)),
            ("sizeof(g)", Some(self.sizeof_g)),
        ]
    }
}

impl ChanLayout {
    /// Reads the channel layout from the binary's DWARF, as
    /// [`GLayout::from_dwarf`] does for `runtime.g`.
    pub fn from_dwarf(elf: &ElfFile) -> Result<Option<ChanLayout>, String> {
        if !elf.has_dwarf() {
            return Ok(None);
        }
        let structs = read_dwarf_structs(
            elf,
            &[
                "runtime.g",
                "runtime.sudog",
                "runtime.hchan",
                "runtime.waitq",
                "runtime.timer",
                "runtime.p",
                // Go ≥ 1.23
                "runtime.timers",
                // Go ≥ 1.26
                "runtime.maybeTraceablePtr",
                "runtime.maybeTraceableChan",
            ],
        )?;
        Self::from_structs(&structs).map(Some)
    }

    /// The layout from DWARF structs (name → members), as read by
    /// [`read_dwarf_structs`].
    pub fn from_structs(structs: &HashMap<String, DwarfStruct>) -> Result<ChanLayout, String> {
        let get = |s: &str| {
            structs
                .get(s)
                .ok_or_else(|| format!("DWARF has no type {s}"))
        };
        let req = |st: &DwarfStruct, field: &str| {
            st.fields
                .get(field)
                .copied()
                .ok_or_else(|| format!("DWARF type {} has no field {field}", st.name))
        };
        let size = |st: &DwarfStruct| {
            st.byte_size
                .ok_or_else(|| format!("DWARF type {} has no size", st.name))
        };
        let add = |a: u32, b: u32| {
            a.checked_add(b)
                .ok_or_else(|| "DWARF field offset overflows".to_owned())
        };
        let (g, sudog, hchan, waitq, timer, p) = (
            get("runtime.g")?,
            get("runtime.sudog")?,
            get("runtime.hchan")?,
            get("runtime.waitq")?,
            get("runtime.timer")?,
            get("runtime.p")?,
        );
        // Go ≥ 1.26: sudog.c is a maybeTraceableChan{maybeTraceablePtr{vp, vu}}.
        let c_inner = match (
            structs.get("runtime.maybeTraceableChan"),
            structs.get("runtime.maybeTraceablePtr"),
        ) {
            (Some(chan), Some(ptr)) => add(req(chan, "maybeTraceablePtr")?, req(ptr, "vu")?)?,
            _ => 0,
        };
        // Go ≥ 1.23: p.timers is a `timers` struct holding `heap []timerWhen`.
        let (p_timer_heap, stride) = match structs.get("runtime.timers") {
            Some(ts) => (add(req(p, "timers")?, req(ts, "heap")?)?, 16),
            None => (req(p, "timers")?, 8),
        };
        let (recvq, sendq) = (req(hchan, "recvq")?, req(hchan, "sendq")?);
        let (first, last) = (req(waitq, "first")?, req(waitq, "last")?);
        Ok(ChanLayout {
            g_waiting: req(g, "waiting")?,
            sudog_g: req(sudog, "g")?,
            sudog_next: req(sudog, "next")?,
            sudog_prev: req(sudog, "prev")?,
            sudog_is_select: req(sudog, "isSelect")?,
            sudog_waitlink: req(sudog, "waitlink")?,
            sudog_c: add(req(sudog, "c")?, c_inner)?,
            sizeof_sudog: size(sudog)?,
            hchan_qcount: req(hchan, "qcount")?,
            hchan_dataqsiz: req(hchan, "dataqsiz")?,
            hchan_elemsize: req(hchan, "elemsize")?,
            hchan_closed: req(hchan, "closed")?,
            hchan_timer: hchan.fields.get("timer").copied(),
            hchan_elemtype: req(hchan, "elemtype")?,
            hchan_recvq_first: add(recvq, first)?,
            hchan_recvq_last: add(recvq, last)?,
            hchan_sendq_first: add(sendq, first)?,
            hchan_sendq_last: add(sendq, last)?,
            sizeof_hchan: size(hchan)?,
            timer_when: req(timer, "when")?,
            timer_period: req(timer, "period")?,
            timer_status: match timer.fields.get("state") {
                Some(&o) => o,
                None => req(timer, "status")?,
            },
            timer_arg: req(timer, "arg")?,
            timer_is_chan: timer.fields.get("isChan").copied(),
            sizeof_timer: size(timer)?,
            p_timer_heap: Some(p_timer_heap),
            timer_heap_stride: stride,
        })
    }
}

fn fmt_opt(v: Option<u32>) -> String {
    v.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

/// A DWARF structure type: member name → byte offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DwarfStruct {
    pub name: String,
    pub byte_size: Option<u32>,
    pub fields: HashMap<String, u32>,
}

/// Finds the named `DW_TAG_structure_type`s in `.debug_info` and returns
/// their direct members. Stops as soon as all were found.
pub fn read_dwarf_structs(
    elf: &ElfFile,
    names: &[&str],
) -> Result<HashMap<String, DwarfStruct>, String> {
    use gimli::AttributeValue;

    let sections = dwarf::sections(elf, dwarf::types_only).map_err(|e| e.to_string())?;
    let dwarf = dwarf::borrow(&sections);
    let err = |e: gimli::Error| format!("reading DWARF: {e}");

    let mut found: HashMap<String, DwarfStruct> = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(err)? {
        // Not `dwarf.unit()`: that also parses the line program, which
        // would need .debug_line.
        let abbrevs = dwarf.abbreviations(&header).map_err(err)?;
        let mut cursor = header.entries(&abbrevs);
        let mut depth: isize = 0;
        // (depth of the struct DIE, struct being filled)
        let mut current: Option<(isize, DwarfStruct)> = None;
        while let Some((delta, entry)) = cursor.next_dfs().map_err(err)? {
            depth += delta;
            if let Some((d, _)) = &current
                && depth <= *d
                && let Some((_, done)) = current.take()
                && !done.fields.is_empty()
            {
                found.insert(done.name.clone(), done);
                if found.len() == names.len() {
                    return Ok(found);
                }
            }
            // Go writes names inline (DW_FORM_string); accept .debug_str too.
            let name = match entry.attr_value(gimli::DW_AT_name).map_err(err)? {
                Some(AttributeValue::String(s)) => {
                    Some(String::from_utf8_lossy(s.slice()).into_owned())
                }
                Some(AttributeValue::DebugStrRef(off)) => dwarf
                    .debug_str
                    .get_str(off)
                    .ok()
                    .map(|s| String::from_utf8_lossy(s.slice()).into_owned()),
                _ => None,
            };
            match (&mut current, entry.tag()) {
                (Some((d, st)), gimli::DW_TAG_member) if depth == *d + 1 => {
                    let offset = match entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .map_err(err)?
                    {
                        Some(AttributeValue::Udata(v)) => u32::try_from(v).ok(),
                        Some(AttributeValue::Sdata(v)) => u32::try_from(v).ok(),
                        Some(AttributeValue::Data1(v)) => Some(u32::from(v)),
                        Some(AttributeValue::Data2(v)) => Some(u32::from(v)),
                        Some(AttributeValue::Data4(v)) => Some(v),
                        Some(AttributeValue::Data8(v)) => u32::try_from(v).ok(),
                        _ => None,
                    };
                    if let (Some(n), Some(off)) = (name, offset) {
                        st.fields.insert(n, off);
                    }
                }
                (None, gimli::DW_TAG_structure_type) => {
                    if let Some(n) = name
                        && names.contains(&n.as_str())
                        && !found.contains_key(&n)
                    {
                        let byte_size = entry
                            .attr_value(gimli::DW_AT_byte_size)
                            .map_err(err)?
                            .and_then(|v| v.udata_value())
                            .and_then(|v| u32::try_from(v).ok());
                        current = Some((
                            depth,
                            DwarfStruct {
                                name: n,
                                byte_size,
                                fields: HashMap::new(),
                            },
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some((_, done)) = current.take()
            && !done.fields.is_empty()
        {
            found.insert(done.name.clone(), done);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_supported_versions() {
        for minor in 19..=27 {
            let v = GoVersion::parse(&format!("go1.{minor}.1")).unwrap();
            let l = GLayout::for_version(&v).unwrap();
            assert_eq!(l.g_parent_goid.is_some(), minor >= 21, "{minor}");
            assert_eq!(l.g_syscallbp.is_some(), minor >= 23, "{minor}");
        }
        let v = |s: &str| GLayout::for_version(&GoVersion::parse(s).unwrap());
        assert_eq!(v("go1.22.10").unwrap().g_goid, 152);
        assert_eq!(v("go1.23.9").unwrap().g_goid, 160);
        assert_eq!(v("go1.25.5").unwrap().g_sched_bp, 96);
        assert_eq!(v("go1.24.11").unwrap().m_curg, 192);
        assert!(v("go1.18.10").is_none() && v("go1.28.0").is_none());
    }

    #[test]
    fn differences_lists_changed_fields() {
        let a = GLayout::for_version(&GoVersion::parse("go1.22").unwrap()).unwrap();
        let b = GLayout::for_version(&GoVersion::parse("go1.23").unwrap()).unwrap();
        let d = a.differences(&b);
        assert!(
            d.iter()
                .any(|(f, x, y)| *f == "g.goid" && x == "152" && y == "160")
        );
        assert!(
            d.iter()
                .any(|(f, x, _)| *f == "g.syscallbp" && x == "absent")
        );
        assert!(a.differences(&a).is_empty());
    }
}
