//! Where to put the Go lifecycle uprobes inside a binary (amd64).
//!
//! A uprobe on an instruction the kernel can only single-step (the `CMPQ SP,
//! 0x10(R14)` stack check every Go function starts with, a `RET`) costs about
//! 19 µs here; on a branch or direct call, which the kernel emulates, about
//! 0.7 µs. So each probe goes on the first emulated instruction that every
//! execution of the function still reaches with its inputs untouched: for
//! `park_m`/`goexit0` the `JBE morestack` after the stack check, for spawns the
//! `CALL runtime.casgstatus` inside `newproc1` (RAX = newg by the register ABI).
//!
//! Everything here works on link-time virtual addresses and bytes handed in by
//! closures, so it does not care whether the binary is stripped or PIE.
use anyhow::{Context, Result, bail};
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, Register,
};

/// How spawns are observed; the number is the uprobe cookie
/// (`leaktrace_common::go::SpawnPoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnProbe {
    /// `CALL runtime.casgstatus` sites in `newproc1` (emulated, cheap).
    CasgstatusCall,
    /// Every `RET` of `newproc1` (single-stepped, slow): casgstatus was
    /// inlined (PGO) so no call is left to probe.
    Newproc1Ret,
}

impl SpawnProbe {
    /// The attach cookie the eBPF program uses to interpret registers.
    pub fn cookie(self) -> u64 {
        match self {
            SpawnProbe::CasgstatusCall => leaktrace_common::go::SpawnPoint::CasgstatusCall as u64,
            SpawnProbe::Newproc1Ret => leaktrace_common::go::SpawnPoint::Newproc1Ret as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePoint {
    /// Link-time virtual address of the probed instruction.
    pub va: u64,
    /// false => the kernel single-steps this instruction (≈ 19 µs per hit
    /// instead of ≈ 0.7 µs on the test machine).
    pub emulated: bool,
    /// Human-readable description, e.g. `runtime.park_m+4 (JBE)`.
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoProbePlan {
    pub spawn: Vec<ProbePoint>,
    pub spawn_kind: SpawnProbe,
    pub park: ProbePoint,
    pub exit: ProbePoint,
}

/// A direct `CALL` found inside a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSite {
    pub va: u64,
    /// EBX when it is set by a constant in the same basic block just before
    /// the call. For casgstatus that is `oldval`; `Some(0)` (`_Gidle`) marks
    /// the fresh-g `casgstatus(newg, _Gidle, _Gdead)` that is not a spawn,
    /// `Some(6)` (`_Gdead`) the one that is.
    pub ebx: Option<u32>,
}

/// `_Gdead`, unchanged from Go 1.0 through 1.27.
pub const G_DEAD: u32 = 6;

/// How far into a prologue to look for an emulated instruction. Go's stack
/// check puts at most two instructions before its first branch (`CMPQ SP,
/// 0x10(R14)`; `LEAQ -n(SP), R12; CMPQ R12, 0x10(R14)`; or `MOVQ SP, R12;
/// SUBQ $n, R12` before `JCS` for huge frames).
const PROLOGUE_WINDOW: usize = 8;

/// Largest function body we are willing to decode; runtime functions are a
/// few KiB, so anything bigger means a wrong (entry, end) pair.
const MAX_FUNC_BYTES: u64 = 1 << 20;

/// Decode `code` (starting at `va`) by linear sweep. Go's amd64 text holds
/// no data (jump tables live in rodata), so a linear sweep sees every
/// instruction; undecodable bytes come back as invalid instructions.
pub fn decode_all(code: &[u8], va: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, va, DecoderOptions::NONE);
    let mut out = Vec::with_capacity(code.len() / 4);
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        out.push(instr);
    }
    out
}

/// Raw bytes of `instr` inside `code` (which starts at `base`).
fn instr_bytes<'a>(code: &'a [u8], base: u64, instr: &Instruction) -> &'a [u8] {
    let start = instr.ip().wrapping_sub(base) as usize;
    code.get(start..start.saturating_add(instr.len()))
        .unwrap_or(&[])
}

/// Whether the x86 uprobe code (`branch_setup_xol_ops` in
/// arch/x86/kernel/uprobes.c) emulates this instruction instead of
/// single-stepping it: relative `JMP`, `Jcc` (not JRCXZ/LOOP) and `CALL rel32`,
/// rejected when they carry an operand-size (0x66) prefix.
pub fn kernel_emulates(instr: &Instruction, bytes: &[u8]) -> bool {
    let branch = matches!(
        instr.code(),
        Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Call_rel32_64
    ) || (instr.is_jcc_short_or_near()
        && instr.flow_control() == FlowControl::ConditionalBranch);
    if !branch || instr.is_invalid() {
        return false;
    }
    for &b in bytes {
        match b {
            0x66 => return false,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f => {}
            _ => break,
        }
    }
    true
}

/// `JBE`, `CMP`: how Go's assembler spells a mnemonic.
pub fn mnemonic_name(m: Mnemonic) -> String {
    format!("{m:?}").to_uppercase()
}

/// Whether `instr` leaves everything a probe at function entry could observe
/// as it was. The eBPF programs only read RAX today, but the point is meant
/// to be equivalent to the entry: no write to memory, and no write to any
/// register except the stack-check temporaries R12/R13 (and flags).
fn preserves_entry_state(info_factory: &mut InstructionInfoFactory, instr: &Instruction) -> bool {
    let info = info_factory.info(instr);
    let writes = |a: OpAccess| {
        matches!(
            a,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return false;
    }
    info.used_registers().iter().all(|r| {
        !writes(r.access()) || matches!(r.register().full_register(), Register::R12 | Register::R13)
    })
}

/// Find the cheapest probe point equivalent to a function's entry: the first
/// instruction the kernel emulates, reached by straight-line code that wrote
/// nothing but R12/R13/flags (so RAX, the other ABI argument registers, R14
/// and the stack still hold their entry values). Falls back to the entry
/// itself (single-stepped) when the prologue is not the usual stack check.
///
/// `what` is `+OFF (MNEMONIC)`; [`plan_probes`] prefixes the function name.
pub fn first_emulated_point(code: &[u8], entry_va: u64) -> ProbePoint {
    emulated_point_labeled(code, entry_va, "")
}

fn emulated_point_labeled(code: &[u8], entry_va: u64, label: &str) -> ProbePoint {
    let window = &code[..code.len().min(PROLOGUE_WINDOW * 15)];
    let instrs = decode_all(window, entry_va);
    let mut factory = InstructionInfoFactory::new();
    for instr in instrs.iter().take(PROLOGUE_WINDOW) {
        if instr.is_invalid() {
            break;
        }
        let off = instr.ip().wrapping_sub(entry_va);
        if kernel_emulates(instr, instr_bytes(window, entry_va, instr)) {
            return ProbePoint {
                va: instr.ip(),
                emulated: true,
                what: format!("{label}+{off} ({})", mnemonic_name(instr.mnemonic())),
            };
        }
        // Any other control transfer ends the straight line: what follows
        // is not reached by every call.
        if instr.flow_control() != FlowControl::Next || !preserves_entry_state(&mut factory, instr)
        {
            break;
        }
    }
    let first = instrs
        .first()
        .filter(|i| !i.is_invalid())
        .map(|i| mnemonic_name(i.mnemonic()))
        .unwrap_or_else(|| "undecodable".to_string());
    ProbePoint {
        va: entry_va,
        emulated: false,
        what: format!("{label}+0 ({first}; no emulated branch in the prologue, single-stepped)"),
    }
}

/// Every `CALL rel32` in `code` whose target is `target`.
pub fn find_calls_to(code: &[u8], entry_va: u64, target: u64) -> Vec<CallSite> {
    let instrs = decode_all(code, entry_va);
    let block_starts = branch_targets(&instrs);
    instrs
        .iter()
        .enumerate()
        .filter(|(_, i)| i.code() == Code::Call_rel32_64 && i.near_branch_target() == target)
        .map(|(idx, i)| CallSite {
            va: i.ip(),
            ebx: ebx_constant_before(&instrs, idx, &block_starts),
        })
        .collect()
}

/// Addresses of every `RET` in `code`.
pub fn find_rets(code: &[u8], entry_va: u64) -> Vec<u64> {
    decode_all(code, entry_va)
        .iter()
        .filter(|i| i.flow_control() == FlowControl::Return)
        .map(|i| i.ip())
        .collect()
}

/// Targets of direct jumps inside the decoded range: the starts of basic
/// blocks that can be entered from elsewhere.
pub(crate) fn branch_targets(instrs: &[Instruction]) -> std::collections::HashSet<u64> {
    instrs
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            )
        })
        .map(|i| i.near_branch_target())
        .collect()
}

/// The constant EBX holds at `instrs[idx]`, if the basic block sets it with
/// `MOVL $imm, BX` or `XORL BX, BX` before the call.
fn ebx_constant_before(
    instrs: &[Instruction],
    idx: usize,
    block_starts: &std::collections::HashSet<u64>,
) -> Option<u32> {
    let mut factory = InstructionInfoFactory::new();
    let call_ip = instrs.get(idx)?.ip();
    // A jump straight to the call may bring any EBX.
    if block_starts.contains(&call_ip) {
        return None;
    }
    for j in (0..idx).rev() {
        let instr = instrs.get(j)?;
        if instr.flow_control() != FlowControl::Next {
            return None;
        }
        let writes_rbx = factory.info(instr).used_registers().iter().any(|r| {
            r.register().full_register() == Register::RBX
                && matches!(
                    r.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )
        });
        if writes_rbx {
            return match instr.code() {
                Code::Mov_r32_imm32 if instr.op0_register() == Register::EBX => {
                    Some(instr.immediate32())
                }
                Code::Xor_r32_rm32 | Code::Xor_rm32_r32
                    if instr.op0_register() == Register::EBX
                        && instr.op1_register() == Register::EBX =>
                {
                    Some(0)
                }
                _ => None,
            };
        }
        // Another path may join here with a different EBX.
        if block_starts.contains(&instr.ip()) || call_ip.wrapping_sub(instr.ip()) > 64 {
            return None;
        }
    }
    None
}

/// A function's bytes, by name; shared with `allgs_locate`.
pub(super) fn function_code(
    code_at: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    func: &dyn Fn(&str) -> Option<(u64, u64)>,
    name: &str,
) -> Result<(u64, Vec<u8>)> {
    let (entry, end) = func(name).with_context(|| format!("function {name} not found"))?;
    if end <= entry || end - entry > MAX_FUNC_BYTES {
        bail!("function {name} has an implausible range {entry:#x}..{end:#x}");
    }
    let code = code_at(entry, (end - entry) as usize)
        .with_context(|| format!("no code bytes for {name} at {entry:#x}"))?;
    Ok((entry, code))
}

/// The probe point for an `mcall` target such as `runtime.park_m`.
fn entry_point(
    code_at: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    func: &dyn Fn(&str) -> Option<(u64, u64)>,
    name: &str,
) -> Result<ProbePoint> {
    let (entry, code) = function_code(code_at, func, name)?;
    Ok(emulated_point_labeled(&code, entry, name))
}

/// Plan the spawn, park and exit uprobes for a Go amd64 binary.
pub fn plan_probes(
    code_at: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    func: &dyn Fn(&str) -> Option<(u64, u64)>,
) -> Result<GoProbePlan> {
    let park = entry_point(code_at, func, "runtime.park_m")?;
    let exit = entry_point(code_at, func, "runtime.goexit0")?;

    let (np_entry, np_code) = function_code(code_at, func, "runtime.newproc1")?;
    let label = |va: u64| format!("runtime.newproc1+{:#x}", va.wrapping_sub(np_entry));

    let calls = func("runtime.casgstatus")
        .map(|(casg, _)| find_calls_to(&np_code, np_entry, casg))
        .unwrap_or_default();
    // Only a call proven to pass `oldval = _Gdead` in EBX makes a plan:
    // under PGO the hot `casgstatus(newg, _Gdead, ...)` is inlined while the
    // cold `_Gidle → _Gdead` call for fresh gs stays, and probing that one
    // alone would silently report no spawns. The `_Gidle` call is still
    // probed (the eBPF filter drops it; it only runs when a g is allocated).
    if calls.iter().any(|c| c.ebx == Some(G_DEAD)) {
        let spawn = calls
            .iter()
            .map(|c| ProbePoint {
                va: c.va,
                emulated: true,
                what: match c.ebx {
                    Some(v) => format!("{} (CALL runtime.casgstatus, EBX={v})", label(c.va)),
                    None => format!("{} (CALL runtime.casgstatus)", label(c.va)),
                },
            })
            .collect();
        return Ok(GoProbePlan {
            spawn,
            spawn_kind: SpawnProbe::CasgstatusCall,
            park,
            exit,
        });
    }

    let rets = find_rets(&np_code, np_entry);
    if rets.is_empty() {
        bail!("runtime.newproc1 has neither a CALL to runtime.casgstatus nor a RET");
    }
    Ok(GoProbePlan {
        spawn: rets
            .into_iter()
            .map(|va| ProbePoint {
                va,
                emulated: false,
                what: format!("{} (RET)", label(va)),
            })
            .collect(),
        spawn_kind: SpawnProbe::Newproc1Ret,
        park,
        exit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_frame_prologue_probes_the_jbe() {
        // CMPQ SP, 0x10(R14); JBE rel32; PUSHQ BP
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x81, 0x02, 0x00, 0x00, 0x55,
        ];
        let p = first_emulated_point(&code, 0x1000);
        assert_eq!(p.va, 0x1004);
        assert!(p.emulated);
        assert_eq!(p.what, "+4 (JBE)");
    }

    #[test]
    fn big_frame_prologue_probes_after_lea_r12() {
        // LEAQ -0x100(SP), R12; CMPQ R12, 0x10(R14); JBE rel8
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x00, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x76, 0x10,
        ];
        let p = first_emulated_point(&code, 0x2000);
        assert_eq!(p.va, 0x200c);
        assert!(p.emulated);
    }

    #[test]
    fn branch_at_entry_is_offset_zero() {
        // JMP rel32
        let p = first_emulated_point(&[0xe9, 0, 0, 0, 0], 0x3000);
        assert_eq!((p.va, p.emulated), (0x3000, true));
        // CALL rel32
        let p = first_emulated_point(&[0xe8, 0, 0, 0, 0], 0x3000);
        assert_eq!((p.va, p.emulated), (0x3000, true));
    }

    #[test]
    fn writes_before_the_branch_force_the_entry() {
        // MOVL $1, AX; JMP: RAX no longer holds the argument at the JMP.
        let p = first_emulated_point(&[0xb8, 1, 0, 0, 0, 0xeb, 0x00], 0x4000);
        assert_eq!((p.va, p.emulated), (0x4000, false));
        // MOVQ AX, 8(SP); JMP: memory written.
        let p = first_emulated_point(&[0x48, 0x89, 0x44, 0x24, 0x08, 0xeb, 0x00], 0x4000);
        assert_eq!((p.va, p.emulated), (0x4000, false));
        // PUSHQ BP; JMP: the stack moved.
        let p = first_emulated_point(&[0x55, 0xeb, 0x00], 0x4000);
        assert_eq!((p.va, p.emulated), (0x4000, false));
    }

    #[test]
    fn unemulated_control_flow_and_odd_input_fall_back() {
        for code in [
            &[][..],
            &[0xc3, 0xeb, 0x00][..],       // RET first
            &[0xff, 0xe0, 0xeb, 0x00][..], // JMP AX (indirect, single-stepped)
            &[0x66, 0x0f, 0x84, 0, 0][..], // JE with a 0x66 prefix (not emulated)
            &[0xe3, 0x00][..],             // JRCXZ
            &[0x0f, 0x0b][..],             // UD2
            &[0x06][..],                   // invalid in 64-bit mode
            &[0x49, 0x3b, 0x66][..],       // truncated
            &[0x90; 40][..],               // NOPs beyond the window
        ] {
            let p = first_emulated_point(code, 0x5000);
            assert_eq!((p.va, p.emulated), (0x5000, false), "{code:x?}: {p:?}");
        }
    }

    /// Plan over a fake binary: park_m/goexit0 share one body at 0x200,
    /// newproc1 is at 0x100 and casgstatus at 0x1000.
    fn synthetic_plan(newproc1: &[u8]) -> Result<GoProbePlan> {
        let park: &[u8] = &[
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x81, 0x02, 0x00, 0x00, 0x55,
        ];
        let funcs = |n: &str| match n {
            "runtime.park_m" | "runtime.goexit0" => Some((0x200, 0x200 + park.len() as u64)),
            "runtime.newproc1" => Some((0x100, 0x100 + newproc1.len() as u64)),
            "runtime.casgstatus" => Some((0x1000, 0x1100)),
            _ => None,
        };
        let code = |va: u64, len: usize| -> Option<Vec<u8>> {
            let (base, bytes) = if va >= 0x200 {
                (0x200, park)
            } else {
                (0x100, newproc1)
            };
            let start = va.checked_sub(base)? as usize;
            bytes.get(start..start + len).map(<[u8]>::to_vec)
        };
        plan_probes(&code, &funcs)
    }

    #[test]
    fn plan_on_synthetic_functions() {
        // newproc1: CMPQ/JBE prologue; MOVL $6, BX; CALL casgstatus; RET
        let mut newproc1 = vec![0x49, 0x3b, 0x66, 0x10, 0x76, 0x0b];
        newproc1.extend([0xbb, 6, 0, 0, 0]); // 0x106
        newproc1.extend([0xe8, 0xf0, 0x0e, 0, 0]); // 0x10b: CALL 0x1000
        newproc1.extend([0xc3]);
        let plan = synthetic_plan(&newproc1).unwrap();
        assert_eq!(plan.spawn_kind, SpawnProbe::CasgstatusCall);
        assert_eq!(plan.spawn.len(), 1);
        assert_eq!(plan.spawn[0].va, 0x10b);
        assert!(plan.spawn[0].what.contains("EBX=6"), "{plan:?}");
        assert_eq!(plan.park.what, "runtime.park_m+4 (JBE)");

        // Only a `_Gidle` call left (as if PGO inlined the other): RETs.
        newproc1[7] = 0;
        let plan = synthetic_plan(&newproc1).unwrap();
        assert_eq!(plan.spawn_kind, SpawnProbe::Newproc1Ret);
        assert_eq!(plan.spawn.len(), 1);
        assert_eq!(plan.spawn[0].va, 0x110);
        assert!(!plan.spawn[0].emulated);

        // EBX not provably _Gdead (`MOVL CX, BX`): RETs as well.
        newproc1[6..11].copy_from_slice(&[0x89, 0xcb, 0x90, 0x90, 0x90]);
        let plan = synthetic_plan(&newproc1).unwrap();
        assert_eq!(plan.spawn_kind, SpawnProbe::Newproc1Ret);

        // No casgstatus and no RET: an error, not a panic.
        assert!(synthetic_plan(&[0x90, 0x90]).is_err());
        assert!(plan_probes(&|_, _| None, &|_| Some((0x100, 0x200))).is_err());
        assert!(plan_probes(&|_, _| Some(vec![0xc3]), &|_| None).is_err());
        assert!(plan_probes(&|_, _| Some(vec![0xc3]), &|_| Some((0x200, 0x100))).is_err());
    }
}
