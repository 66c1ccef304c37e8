//! Finding `runtime.allgs` (and `runtime.allglen`) in a Go amd64 binary.
//!
//! Both are data symbols that only `.symtab` names; `-ldflags=-s -w` removes
//! it, while pclntab (function names and entries) survives. So for stripped
//! binaries we decode a runtime function that touches them by address:
//!
//! ```go
//! func allgadd(gp *g) {                // every Go version 1.17 – 1.27
//!     ...
//!     lock(&allglock)
//!     allgs = append(allgs, gp)       // loads/stores allgs, allgs+8, allgs+16
//!     if &allgs[0] != allgptr {        // reads allgptr
//!         atomicstorep(unsafe.Pointer(&allgptr), unsafe.Pointer(&allgs[0]))
//!     }
//!     atomic.Storeuintptr(&allglen, uintptr(len(allgs)))  // LEAQ allglen; XCHGQ len, (R)
//!     unlock(&allglock)
//! }
//! ```
//!
//! The slice header is the only global whose three words at +0/+8/+16 are
//! all accessed directly; `allglen` is the global that receives a value
//! freshly loaded from `allgs+8`. The caller still validates the result
//! against process memory.
use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use iced_x86::{
    FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

use super::probe_points::{branch_targets, decode_all, function_code};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllgsLocation {
    /// VA of the `runtime.allgs` slice header (ptr, len, cap).
    pub allgs: u64,
    /// VA of `runtime.allglen`, if it could be identified.
    pub allglen: Option<u64>,
    /// `"symtab"`, `"decoded runtime.allgadd"` or `"decoded runtime.forEachG"`.
    pub how: &'static str,
}

/// Locate `runtime.allgs`: from `.symtab` when present, else by decoding
/// `runtime.allgadd` (falling back to `runtime.forEachG`, which only gives
/// the slice pointer and length).
pub fn locate_allgs(
    code_at: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    func: &dyn Fn(&str) -> Option<(u64, u64)>,
    data_symbol: &dyn Fn(&str) -> Option<u64>,
) -> Result<AllgsLocation> {
    if let Some(allgs) = data_symbol("runtime.allgs") {
        return Ok(AllgsLocation {
            allgs,
            allglen: data_symbol("runtime.allglen"),
            how: "symtab",
        });
    }
    let from_allgadd = function_code(code_at, func, "runtime.allgadd").and_then(|(entry, code)| {
        decode_allgadd(&code, entry).context("no allgs slice header in runtime.allgadd")
    });
    let err = match from_allgadd {
        Ok((allgs, allglen)) => {
            return Ok(AllgsLocation {
                allgs,
                allglen,
                how: "decoded runtime.allgadd",
            });
        }
        Err(e) => e,
    };
    let (entry, code) = function_code(code_at, func, "runtime.forEachG")
        .with_context(|| format!("{err:#}; fallback"))?;
    let allgs = decode_for_each_g(&code, entry).with_context(|| {
        format!("{err:#}; no allgs slice (ptr, len) in runtime.forEachG either")
    })?;
    Ok(AllgsLocation {
        allgs,
        allglen: None,
        how: "decoded runtime.forEachG",
    })
}

/// One RIP-relative memory operand: the global it names and how it is used.
#[derive(Debug, Clone, Copy)]
struct GlobalRef {
    addr: u64,
    /// 0 for `LEA` (address taken, no access).
    size: usize,
    read: bool,
    write: bool,
}

fn is_read(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

fn is_write(a: OpAccess) -> bool {
    matches!(
        a,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

fn global_refs(factory: &mut InstructionInfoFactory, instr: &Instruction) -> Vec<GlobalRef> {
    if !instr.is_ip_rel_memory_operand() {
        return Vec::new();
    }
    let info = factory.info(instr);
    (0..instr.op_count())
        .filter(|&i| instr.op_kind(i) == OpKind::Memory)
        .map(|i| {
            let access = info.op_access(i);
            GlobalRef {
                addr: instr.ip_rel_memory_address(),
                size: if access == OpAccess::NoMemAccess {
                    0
                } else {
                    instr.memory_size().size()
                },
                read: is_read(access),
                write: is_write(access),
            }
        })
        .collect()
}

/// What a register is known to hold inside one basic block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// `LEAQ sym(SB), R`
    AddrOf(u64),
    /// `MOVQ sym(SB), R`
    Load(u64),
}

/// A 64-bit store of a register to a global, directly or through a register
/// holding its address.
#[derive(Debug, Clone, Copy)]
struct Store {
    addr: u64,
    value: Option<Value>,
}

#[derive(Default)]
struct Scan {
    refs: Vec<GlobalRef>,
    stores: Vec<Store>,
}

/// Block-local walk that records every global access and every 8-byte store
/// into a global together with what the stored register holds.
fn scan(code: &[u8], entry: u64) -> Scan {
    let instrs = decode_all(code, entry);
    let block_starts = branch_targets(&instrs);
    let mut factory = InstructionInfoFactory::new();
    let mut regs: HashMap<Register, Value> = HashMap::new();
    let mut out = Scan::default();
    for instr in instrs.iter().filter(|i| !i.is_invalid()) {
        if block_starts.contains(&instr.ip()) {
            regs.clear();
        }
        let refs = global_refs(&mut factory, instr);
        out.refs.extend(refs.iter().copied());

        let value_reg = (0..instr.op_count())
            .filter(|&i| instr.op_kind(i) == OpKind::Register)
            .map(|i| instr.op_register(i).full_register())
            .next();
        let mem_written = factory
            .info(instr)
            .used_memory()
            .iter()
            .any(|m| is_write(m.access()) && m.memory_size().size() == 8);
        if mem_written {
            let target = if instr.is_ip_rel_memory_operand() {
                Some(instr.ip_rel_memory_address())
            } else if instr.memory_index() == Register::None && instr.memory_displacement64() == 0 {
                match regs.get(&instr.memory_base().full_register()) {
                    Some(Value::AddrOf(a)) => Some(*a),
                    _ => None,
                }
            } else {
                None
            };
            if let Some(addr) = target {
                out.stores.push(Store {
                    addr,
                    value: value_reg.and_then(|r| regs.get(&r).copied()),
                });
            }
        }

        // Update what registers hold after this instruction.
        let info = factory.info(instr);
        let written: HashSet<Register> = info
            .used_registers()
            .iter()
            .filter(|r| is_write(r.access()))
            .map(|r| r.register().full_register())
            .collect();
        // Only whole 64-bit destinations carry an address or a length.
        let dest = (instr.op_count() == 2
            && instr.op_kind(0) == OpKind::Register
            && instr.op0_register().size() == 8)
            .then(|| instr.op0_register());
        let new_value = match (instr.mnemonic(), dest, refs.first()) {
            (Mnemonic::Lea, Some(_), Some(r)) => Some(Value::AddrOf(r.addr)),
            (Mnemonic::Mov, Some(_), Some(r)) if r.size == 8 => Some(Value::Load(r.addr)),
            (Mnemonic::Mov, Some(_), None) if instr.op_kind(1) == OpKind::Register => {
                regs.get(&instr.op1_register().full_register()).copied()
            }
            _ => None,
        };
        for r in &written {
            regs.remove(r);
        }
        if let (Some(d), Some(v)) = (dest, new_value) {
            regs.insert(d, v);
        }
        // A call clobbers every register under Go's ABI; control leaves the
        // straight line after any branch.
        if instr.flow_control() != FlowControl::Next {
            regs.clear();
        }
    }
    out
}

/// Globals A whose words A, A+8 and A+16 are all accessed as 8-byte
/// operands: slice headers.
fn slice_headers(refs: &[GlobalRef], words: u64) -> Vec<u64> {
    let direct: HashSet<u64> = refs
        .iter()
        .filter(|r| r.size == 8 && (r.read || r.write))
        .map(|r| r.addr)
        .collect();
    let mut found: Vec<u64> = direct
        .iter()
        .copied()
        .filter(|&a| (1..words).all(|k| direct.contains(&a.wrapping_add(8 * k))))
        .collect();
    found.sort_unstable();
    found
}

/// Decode `runtime.allgadd`; returns (allgs, allglen).
pub fn decode_allgadd(code: &[u8], entry: u64) -> Option<(u64, Option<u64>)> {
    let s = scan(code, entry);
    let mut headers = slice_headers(&s.refs, 3);
    if headers.len() > 1 {
        // `append` always writes back the new length: keep the slice that
        // is appended to.
        let len_written: HashSet<u64> = s.refs.iter().filter(|r| r.write).map(|r| r.addr).collect();
        headers.retain(|&a| len_written.contains(&(a + 8)));
    }
    let [allgs] = headers[..] else {
        return None;
    };
    let in_header = |a: u64| (allgs..allgs + 24).contains(&a);

    // allglen = uintptr(len(allgs)), stored atomically (XCHG).
    let len_stores: HashSet<u64> = s
        .stores
        .iter()
        .filter(|st| st.value == Some(Value::Load(allgs + 8)) && !in_header(st.addr))
        .map(|st| st.addr)
        .collect();
    let allglen = if len_stores.len() == 1 {
        len_stores.into_iter().next()
    } else {
        // Weaker: the one other global that is stored to but never read
        // (allgptr is read by the `&allgs[0] != allgptr` comparison).
        let read: HashSet<u64> = s.refs.iter().filter(|r| r.read).map(|r| r.addr).collect();
        let only_stored: HashSet<u64> = s
            .stores
            .iter()
            .map(|st| st.addr)
            .filter(|&a| !in_header(a) && !read.contains(&a))
            .collect();
        (only_stored.len() == 1)
            .then(|| only_stored.into_iter().next())
            .flatten()
    };
    Some((allgs, allglen))
}

/// Decode `runtime.forEachG` (`for _, gp := range allgs`), which reads the
/// slice pointer and length but not the capacity.
pub fn decode_for_each_g(code: &[u8], entry: u64) -> Option<u64> {
    let s = scan(code, entry);
    match slice_headers(&s.refs, 2)[..] {
        [allgs] => Some(allgs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symtab_is_used_when_present() {
        let loc = locate_allgs(&|_, _| None, &|_| None, &|n| match n {
            "runtime.allgs" => Some(0x1000),
            "runtime.allglen" => Some(0x2000),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            loc,
            AllgsLocation {
                allgs: 0x1000,
                allglen: Some(0x2000),
                how: "symtab"
            }
        );
    }

    #[test]
    fn odd_input_is_an_error_not_a_panic() {
        assert_eq!(decode_allgadd(&[], 0x1000), None);
        assert_eq!(decode_allgadd(&[0xff; 64], 0x1000), None);
        assert_eq!(decode_for_each_g(&[0x06, 0x0f], u64::MAX - 1), None);
        assert!(locate_allgs(&|_, _| None, &|_| None, &|_| None).is_err());
        assert!(locate_allgs(&|_, _| Some(vec![0xc3]), &|_| Some((10, 5)), &|_| None).is_err());
        assert!(
            locate_allgs(&|_, len| Some(vec![0x90; len]), &|_| Some((0, 16)), &|_| {
                None
            })
            .is_err()
        );
    }

    #[test]
    fn synthetic_allgadd() {
        // MOVQ allgs+8(SB), BX; MOVQ allgs(SB), AX; MOVQ allgs+16(SB), CX;
        // MOVQ BX, allgs+8(SB); CMPQ allgptr(SB), AX; LEAQ allgptr(SB), CX;
        // XCHGQ AX, 0(CX); MOVQ allgs+8(SB), CX; LEAQ allglen(SB), DX;
        // XCHGQ CX, 0(DX); RET     with allgs = 0x9000, allgptr = 0x9100,
        // allglen = 0x9200 and the code at 0x1000.
        fn rip_op(code: &mut Vec<u8>, prefix: &[u8], target: u64) {
            let next = 0x1000 + code.len() as u64 + prefix.len() as u64 + 4;
            code.extend_from_slice(prefix);
            code.extend_from_slice(&((target as i64 - next as i64) as i32).to_le_bytes());
        }
        let mut code = Vec::new();
        rip_op(&mut code, &[0x48, 0x8b, 0x1d], 0x9008);
        rip_op(&mut code, &[0x48, 0x8b, 0x05], 0x9000);
        rip_op(&mut code, &[0x48, 0x8b, 0x0d], 0x9010);
        rip_op(&mut code, &[0x48, 0x89, 0x1d], 0x9008);
        rip_op(&mut code, &[0x48, 0x39, 0x05], 0x9100);
        rip_op(&mut code, &[0x48, 0x8d, 0x0d], 0x9100);
        code.extend_from_slice(&[0x48, 0x87, 0x01]);
        rip_op(&mut code, &[0x48, 0x8b, 0x0d], 0x9008);
        rip_op(&mut code, &[0x48, 0x8d, 0x15], 0x9200);
        code.extend_from_slice(&[0x48, 0x87, 0x0a, 0xc3]);
        assert_eq!(decode_allgadd(&code, 0x1000), Some((0x9000, Some(0x9200))));
    }
}
