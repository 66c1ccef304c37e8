//! The fields leaktrace reads from `/proc/PID/stat` and `/proc/PID/status`.
//! The text comes from the kernel, but a process names itself (`comm`,
//! field 2 of `stat`, up to 15 bytes of anything: spaces, parentheses,
//! newlines), so every parser here takes any text and answers `None` for
//! what it cannot read, never a panic.

/// Field 3 of `stat`: the state letter (`R`, `S`, `Z`, …). The name
/// (field 2) may hold spaces and parentheses, so count from its last `)`.
pub fn stat_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// Field 22 of `stat`: start time in clock ticks after boot.
pub fn start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A hexadecimal line of `status` (`CapEff:`, `CapBnd:`, …).
pub fn status_hex(status: &str, key: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix(key))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// The four ids (real, effective, saved, filesystem) of a `Uid:` or `Gid:`
/// line of `status`.
pub fn status_ids(status: &str, key: &str) -> Option<[u32; 4]> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    let mut ids = [0u32; 4];
    let mut words = line.split_whitespace();
    for id in &mut ids {
        *id = words.next()?.parse().ok()?;
    }
    words.next().is_none().then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_name_with_parentheses_and_spaces() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(stat_state(stat), Some('S'));
        assert_eq!(start_ticks(stat), Some(123456));
        assert_eq!(stat_state("42 no paren"), None);
        assert_eq!(start_ticks("42 (x) Z"), None);
    }
}
