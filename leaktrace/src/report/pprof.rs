//! `--pprof` and `/debug/pprof/goroutine`: reports as a goroutine profile in
//! pprof's `profile.proto`, gzip-compressed, the way Go's own
//! `runtime/pprof` writes one: sample type and period type
//! `goroutine`/`count` (`task`/`count` for tokio), one sample per group with
//! its stack and its count, and string labels saying what leaktrace found
//! (`state`, `wait`, `created_by`, `start`, `verdict`, `cause`, `blocked_s`, `pid`).
//! Function names, files and lines are embedded (the mapping says so), so
//! `go tool pprof -top FILE` needs no binary.
use std::{
    collections::HashMap,
    io::Write,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::{
    labels::{all_groups, blocked_max_s, created_by, frames, verdict_name, wait},
    model::Report,
};
use crate::symbols::Frame;

/// The messages of pprof's `proto/profile.proto` (package
/// `perftools.profiles`) that a goroutine profile uses, with the field
/// numbers of the published file.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// The profile of these reports (one per traced process), gzip-compressed
/// as pprof files are.
pub fn profile(reports: &[&Report]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&encode(reports).encode_to_vec())?;
    Ok(gz.finish()?)
}

/// Interns strings, functions and locations: the profile refers to each by
/// index or id.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<(u64, u64, u32), u64>,
}

impl Tables {
    fn new() -> Self {
        let mut t = Self::default();
        // string_table[0] must be "".
        t.string("");
        t
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn location(&mut self, mapping_id: u64, f: &Frame) -> u64 {
        let name = self.string(&f.function);
        let file = self.string(&f.file);
        let next_fn = self.functions.len() as u64 + 1;
        let function_id = *self.function_ids.entry((name, file)).or_insert(next_fn);
        if function_id == next_fn {
            self.functions.push(proto::Function {
                id: function_id,
                name,
                system_name: name,
                filename: file,
                start_line: 0,
            });
        }
        let next = self.locations.len() as u64 + 1;
        let id = *self
            .location_ids
            .entry((mapping_id, function_id, f.line))
            .or_insert(next);
        if id == next {
            self.locations.push(proto::Location {
                id,
                mapping_id,
                // Symbolized already: pprof needs no address.
                address: 0,
                line: vec![proto::Line {
                    function_id,
                    line: i64::from(f.line),
                }],
            });
        }
        id
    }

    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.string(key),
            str: self.string(value),
            num: 0,
            num_unit: 0,
        }
    }
}

fn encode(reports: &[&Report]) -> proto::Profile {
    let mut t = Tables::new();
    // The sample type names the runtime's tasks, as Go's own profile does.
    let task = reports
        .first()
        .map_or("goroutine", |r| r.target.runtime.task);
    let value_type = proto::ValueType {
        r#type: t.string(task),
        unit: t.string("count"),
    };
    let mut mappings = Vec::new();
    let mut samples = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        let mapping_id = i as u64 + 1;
        let exe = t.string(&report.target.exe);
        // Every location carries its function, file and line: nothing for
        // pprof to look up in the binary.
        mappings.push(proto::Mapping {
            id: mapping_id,
            memory_start: 0,
            memory_limit: 0,
            file_offset: 0,
            filename: exe,
            build_id: 0,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        let pid = report.target.pid.to_string();
        for g in all_groups(report) {
            let location_id = frames(g)
                .into_iter()
                .map(|f| t.location(mapping_id, f))
                .collect();
            let mut label = vec![
                t.label("state", &g.state),
                t.label("created_by", &created_by(g)),
                // tokio: the future type (created_by is the spawn site).
                t.label("start", &g.start.function),
                t.label("verdict", verdict_name(g.verdict)),
                t.label("pid", &pid),
            ];
            let wait = wait(g);
            if !wait.is_empty() {
                label.push(t.label("wait", &wait));
            }
            if let Some(cause) = g.cause {
                label.push(t.label("cause", cause));
            }
            if let Some(s) = blocked_max_s(g) {
                label.push(t.label("blocked_s", &format!("{s:.3}")));
            }
            samples.push(proto::Sample {
                location_id,
                value: vec![g.count.min(i64::MAX as u64) as i64],
                label,
            });
        }
    }
    let comment = reports
        .iter()
        .map(|r| {
            format!(
                "leaktrace: pid {} ({} {}), {} live after {:.1}s{}",
                r.target.pid,
                r.target.exe,
                r.target.runtime_version,
                r.live,
                r.elapsed_s,
                if r.is_final { ", final" } else { "" }
            )
        })
        .collect::<Vec<_>>();
    let comment = comment.iter().map(|c| t.string(c)).collect();
    let time_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
    proto::Profile {
        sample_type: vec![value_type.clone()],
        sample: samples,
        mapping: mappings,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        time_nanos,
        period_type: Some(value_type),
        period: 1,
        comment,
    }
}
