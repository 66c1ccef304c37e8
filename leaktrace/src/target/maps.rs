//! Lines of `/proc/PID/maps`, parsed once for everyone who needs them
//! (the executable's load bias, heap regions to scan, code to unwind).

/// One mapping: `start-end perms offset dev inode path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry<'a> {
    pub start: u64,
    pub end: u64,
    /// `r-xp`, `rw-p`, …
    pub perms: &'a str,
    pub offset: u64,
    pub inode: &'a str,
    /// The file, a `[heap]`-style name, or empty (anonymous). Runs of spaces
    /// inside it are read as one.
    pub path: String,
}

impl MapsEntry<'_> {
    /// Private (copy-on-write), not shared.
    pub fn is_private(&self) -> bool {
        self.perms.ends_with('p')
    }
}

/// Every well-formed line of `maps` (the text of a `/proc/PID/maps`).
pub fn entries(maps: &str) -> impl Iterator<Item = MapsEntry<'_>> {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let offset = fields.next()?;
        let _dev = fields.next()?;
        let inode = fields.next()?;
        Some(MapsEntry {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            offset: u64::from_str_radix(offset, 16).ok()?,
            inode,
            path: fields.collect::<Vec<_>>().join(" "),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field_and_skips_garbage() {
        let maps = "\
555555556000-55555555a000 r-xp 00002000 fd:01 1234 /srv/my  api
7ffff0000000-7ffff0021000 rw-p 00000000 00:00 0
not a line
";
        let e: Vec<_> = entries(maps).collect();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].start, e[0].end, e[0].perms, e[0].offset, e[0].inode),
            (0x555555556000, 0x55555555a000, "r-xp", 0x2000, "1234")
        );
        assert_eq!(e[0].path, "/srv/my api");
        assert!(e[1].path.is_empty() && e[1].is_private());
    }
}
