//! Writing RESULTS.md: a small Markdown builder, and the splice that lets
//! `--only` replace just its own sections in a file from an earlier full
//! run, so one slow section can be re-measured without redoing the rest.
use std::fmt::Write as _;

use super::Section;

#[derive(Default)]
pub(super) struct Markdown {
    pub(super) text: String,
}

impl Markdown {
    pub(super) fn h1(&mut self, s: &str) {
        let _ = writeln!(self.text, "# {s}\n");
    }
    pub(super) fn h2(&mut self, s: &str) {
        let _ = writeln!(self.text, "## {s}\n");
    }
    pub(super) fn line(&mut self, s: &str) {
        let _ = writeln!(self.text, "{s}\n");
    }
    pub(super) fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.text, "| {} |", header.join(" | "));
        let _ = writeln!(
            self.text,
            "|{}",
            header.iter().map(|_| "---|").collect::<String>()
        );
        for r in rows {
            let _ = writeln!(self.text, "| {} |", r.join(" | "));
        }
        self.text.push('\n');
    }
}

/// `text` with each `(section, chunk)` in place of that section's `## N. …`
/// block (up to the next `## ` heading), or inserted before the first later
/// section (or `## Load`) if it has none yet; `note` ends each chunk.
pub(super) fn splice_sections(text: &str, chunks: &[(Section, String)], note: &str) -> String {
    let mut text = text.to_string();
    for (s, chunk) in chunks {
        let n = s.number();
        // (offset, section number or None) of every `## ` line.
        let heads: Vec<(usize, Option<usize>)> = text
            .match_indices("## ")
            .filter(|(at, _)| *at == 0 || text.as_bytes()[at - 1] == b'\n')
            .map(|(at, _)| {
                let num = text[at + 3..]
                    .split('.')
                    .next()
                    .and_then(|d| d.parse().ok());
                (at, num)
            })
            .collect();
        let new = format!("{chunk}{note}");
        match heads.iter().position(|h| h.1 == Some(n)) {
            Some(i) => {
                let end = heads.get(i + 1).map_or(text.len(), |h| h.0);
                text.replace_range(heads[i].0..end, &new);
            }
            None => {
                let at = heads
                    .iter()
                    .find(|h| h.1.is_some_and(|m| m > n) || text[h.0..].starts_with("## Load"))
                    .map_or(text.len(), |h| h.0);
                text.insert_str(at, &new);
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replaces_its_own_sections() {
        let full = "# leaktrace benchmarks\n\n## Machine and method\n\nm\n\n## 1. Churn\n\nold 1\n\n\
                    ## 4. Attach\n\nold 4\n\n## Load\n\nl\n";
        let chunks = [
            (Section::Churn, "## 1. Churn\n\nnew 1\n\n".to_string()),
            (Section::Tokio, "## 6. Tokio\n\nnew 6\n\n".to_string()),
            (Section::Http, "## 2. Http\n\nnew 2\n\n".to_string()),
        ];
        assert_eq!(
            splice_sections(full, &chunks, "_n_\n\n"),
            "# leaktrace benchmarks\n\n## Machine and method\n\nm\n\n## 1. Churn\n\nnew 1\n\n_n_\n\n\
             ## 2. Http\n\nnew 2\n\n_n_\n\n## 4. Attach\n\nold 4\n\n## 6. Tokio\n\nnew 6\n\n_n_\n\n\
             ## Load\n\nl\n"
        );
    }
}
