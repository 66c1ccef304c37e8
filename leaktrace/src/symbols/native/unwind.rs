//! Unwinding a copied user stack with `.eh_frame`, the way perf's
//! `--call-graph=dwarf` does: the probe copies registers and the top of the
//! stack, and the walk happens here, offline.
//!
//! Frame pointers alone do not get past glibc (`pthread_create` and `clone3`
//! keep none), and ordinary Rust code has none either unless built with
//! `-C force-frame-pointers`; CFI is in every ELF that can unwind a panic,
//! including stripped release builds. Where a PC has no CFI (Go, hand-written
//! assembly), one frame-pointer step is tried instead.
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EhFrameOffset, LittleEndian, Register,
    RegisterRule, UnwindContext, UnwindSection, X86_64,
};

/// A snapshot of the top of a user stack: the registers at the moment of
/// the copy and `bytes` starting at `sp`.
pub struct StackCopy<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub bytes: &'a [u8],
}

impl StackCopy<'_> {
    fn read(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.sp)?).ok()?;
        let word = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(word.try_into().ok()?))
    }
}

/// The unwind tables of one loaded ELF, at link-time addresses.
pub struct CfiTables<'a> {
    pub eh_frame: &'a [u8],
    pub eh_frame_addr: u64,
    /// `.eh_frame_hdr`'s sorted index; without it each lookup scans.
    pub eh_frame_hdr: Option<(&'a [u8], u64)>,
    pub text_addr: u64,
}

/// What one step needs to know about the code at a PC.
pub trait CodeMap {
    /// CFI of the module holding `pc` (a run-time address), and that
    /// module's load bias.
    fn cfi_for(&mut self, pc: u64) -> Option<(CfiTables<'_>, u64)>;
    /// Whether `pc` lies in mapped code: what a guessed return address
    /// must at least satisfy.
    fn is_code(&mut self, pc: u64) -> bool;
}

/// Return addresses of the frames above the copy's `ip`, innermost first
/// (`ip` itself first). Stops where the copy or the tables run out.
pub fn unwind(stack: &StackCopy<'_>, code: &mut dyn CodeMap, max_frames: usize) -> Vec<u64> {
    let mut regs = Regs {
        ip: stack.ip,
        sp: stack.sp,
        bp: Some(stack.bp),
    };
    let mut pcs = vec![regs.ip];
    let mut ctx = UnwindContext::new();
    while pcs.len() < max_frames {
        // A return address points after the call; look up the call itself.
        let lookup = if pcs.len() == 1 { regs.ip } else { regs.ip - 1 };
        let first = pcs.len() == 1;
        let next = code
            .cfi_for(lookup)
            .and_then(|(tables, bias)| cfi_step(stack, &tables, bias, lookup, &regs, &mut ctx))
            .or_else(|| {
                // glibc's clone3 ends its CFI just before the syscall (so the
                // child's unwind stops there); the parent resumes in a
                // stretch without any, where it has pushed nothing.
                let leaf = first.then(|| leaf_step(stack, &regs)).flatten();
                leaf.filter(|r| code.is_code(r.ip))
            })
            .or_else(|| fp_step(stack, &regs).filter(|r| code.is_code(r.ip)));
        let Some(next) = next else { break };
        // The stack grows down: a caller's frame is always higher.
        if next.ip == 0 || next.sp <= regs.sp {
            break;
        }
        regs = next;
        pcs.push(regs.ip);
    }
    pcs
}

#[derive(Clone, Copy, Debug)]
struct Regs {
    ip: u64,
    sp: u64,
    bp: Option<u64>,
}

impl Regs {
    fn get(&self, r: Register) -> Option<u64> {
        match r {
            X86_64::RSP => Some(self.sp),
            X86_64::RBP => self.bp,
            _ => None,
        }
    }
}

fn cfi_step(
    stack: &StackCopy<'_>,
    t: &CfiTables<'_>,
    bias: u64,
    pc: u64,
    regs: &Regs,
    ctx: &mut UnwindContext<usize>,
) -> Option<Regs> {
    let eh = EhFrame::new(t.eh_frame, LittleEndian);
    let mut bases = BaseAddresses::default()
        .set_eh_frame(t.eh_frame_addr)
        .set_text(t.text_addr);
    let svma = pc.wrapping_sub(bias);
    let fde = match t.eh_frame_hdr.filter(|(hdr, _)| usable_hdr(hdr)) {
        Some((hdr, hdr_addr)) => {
            bases = bases.set_eh_frame_hdr(hdr_addr);
            let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).ok()?;
            // gimli's `fde_for_address` subtracts `.eh_frame`'s address
            // from the table's entry unchecked (an overflow panic in a
            // debug build when the table points before it): do that step
            // here, checked.
            let entry = parsed.table()?.lookup(svma, &bases).ok()?.direct().ok()?;
            let start = parsed.eh_frame_ptr().direct().ok()?;
            let offset = EhFrameOffset(usize::try_from(entry.checked_sub(start)?).ok()?);
            let fde = eh
                .fde_from_offset(&bases, offset, EhFrame::cie_from_offset)
                .ok()?;
            fde.contains(svma).then_some(fde)?
        }
        None => eh
            .fde_for_address(&bases, svma, EhFrame::cie_from_offset)
            .ok()?,
    };
    let row = fde.unwind_info_for_address(&eh, &bases, ctx, svma).ok()?;
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            regs.get(*register)?.checked_add_signed(*offset)?
        }
        // DWARF expressions (PLT stubs, signal frames): not at a clone call.
        CfaRule::Expression(_) => return None,
    };
    let recover = |rule: RegisterRule<usize>, old: Option<u64>| -> Option<u64> {
        match rule {
            RegisterRule::Undefined => None,
            RegisterRule::SameValue => old,
            RegisterRule::Offset(n) => stack.read(cfa.checked_add_signed(n)?),
            RegisterRule::ValOffset(n) => cfa.checked_add_signed(n),
            RegisterRule::Register(r) => regs.get(r),
            _ => None,
        }
    };
    let ip = recover(row.register(X86_64::RA), None)?;
    // Unlisted callee-saved registers keep their value.
    let bp = match row.register(X86_64::RBP) {
        RegisterRule::Undefined => regs.bp,
        rule => recover(rule, regs.bp),
    };
    Some(Regs { ip, sp: cfa, bp })
}

/// `.eh_frame_hdr` as every linker writes it (version 1, `.eh_frame`'s
/// address pc-relative sdata4, the count udata4, the table datarel sdata4)
/// with a table as long as its count says. gimli's binary search multiplies
/// the count unchecked (an overflow panic in a debug build for a count near
/// 2⁶⁴), so any other header is left aside: the FDE is then searched in
/// `.eh_frame` itself, slower but the same.
fn usable_hdr(hdr: &[u8]) -> bool {
    let [1, 0x1b, 0x03, 0x3b, ..] = hdr else {
        return false;
    };
    let Some(count) = hdr.get(8..12) else {
        return false;
    };
    let count = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
    count.checked_mul(8).is_some_and(|n| n <= hdr.len() - 12)
}

/// A function that has pushed nothing: its return address is at `[sp]`.
fn leaf_step(stack: &StackCopy<'_>, regs: &Regs) -> Option<Regs> {
    Some(Regs {
        ip: stack.read(regs.sp)?,
        sp: regs.sp.checked_add(8)?,
        bp: regs.bp,
    })
}

/// The frame-pointer convention: `[bp]` = caller's bp, `[bp+8]` = return.
fn fp_step(stack: &StackCopy<'_>, regs: &Regs) -> Option<Regs> {
    let bp = regs.bp?;
    Some(Regs {
        ip: stack.read(bp.checked_add(8)?)?,
        sp: bp.checked_add(16)?,
        bp: stack.read(bp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoCfi;
    impl CodeMap for NoCfi {
        fn cfi_for(&mut self, _pc: u64) -> Option<(CfiTables<'_>, u64)> {
            None
        }
        fn is_code(&mut self, pc: u64) -> bool {
            pc >= 0x5000
        }
    }

    #[test]
    fn frame_pointer_chain_without_cfi() {
        // sp = 0x1000; frames at bp 0x1010 → 0x1030 → end.
        let mut bytes = vec![0u8; 0x40];
        let put = |b: &mut Vec<u8>, at: usize, v: u64| {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut bytes, 0x10, 0x1030);
        put(&mut bytes, 0x18, 0xaaaa);
        put(&mut bytes, 0x30, 0);
        put(&mut bytes, 0x38, 0xbbbb);
        let stack = StackCopy {
            ip: 0x5000,
            sp: 0x1000,
            bp: 0x1010,
            bytes: &bytes,
        };
        assert_eq!(unwind(&stack, &mut NoCfi, 16), vec![0x5000, 0xaaaa, 0xbbbb]);
    }
}
