//! leaktrace's own footprint, for the agent's budget on `/metrics`: CPU
//! time used so far and resident memory now, from /proc/self.
use std::fs;

/// What leaktrace itself uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU time since leaktrace started, seconds.
    pub cpu_s: f64,
    /// Resident set size now, bytes.
    pub resident_bytes: u64,
}

/// This process's usage; a field /proc does not give reads as 0.
pub fn own_usage() -> Usage {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let cpu_ticks = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_ticks(&s))
        .unwrap_or(0);
    let resident_pages = fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    Usage {
        cpu_s: cpu_ticks as f64 / ticks,
        resident_bytes: resident_pages * page,
    }
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat, counted after the
/// parenthesised command name, which may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    // After `)`: state is field 3, so utime (14) is the 12th.
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_user_plus_system() {
        let stat = "7 (a b) c) S 1 7 7 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 1 0 5 1000 200";
        assert_eq!(cpu_ticks(stat), Some(280));
        let now = own_usage();
        assert!(now.resident_bytes > 0, "{now:?}");
    }
}
