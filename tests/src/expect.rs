//! The expected diagnosis of a fixture: `tests/fixtures/go/<name>/expect.json`.
//!
//! Schema (all function names are full Go symbol names as the runtime
//! prints them):
//!
//! ```json
//! {
//!   "kind": "leak",                       // or "control"
//!   "summary": "one line: what leaks and why",
//!   "created_by": "main.(*Hub).Publish",  // function with the `go` statement
//!   "blocked_at": "main.(*Hub).Publish.func1", // first non-stdlib frame
//!   "wait_reason": {"default": "sync.Mutex.Lock", "<1.20": "semacquire"},
//!   "per_op": 1,                          // goroutines leaked per operation
//!   "start_fn": {"default": "main.(*Server).HandleRequest.gowrap1",
//!                "<1.22": "main.(*Server).HandleRequest.func1"},
//!   "inlined_into": "main.(*Exporter).export", // optional, see Group
//!   "cause": "send-without-receiver",     // optional, see Group::cause
//!   "count": 4,                           // optional: exact size, not growing
//!   "other_groups": [ { "role": "...", "created_by": ..., ... } ],
//!   "must_not_flag": [ { "role": "...", "created_by": ..., "count": 8 } ]
//! }
//! ```
//!
//! * A leak fixture's top-level `created_by`/`blocked_at`/`wait_reason`/
//!   `per_op` describe its primary leaking group; `other_groups` lists
//!   further leaking groups of the same fixture (each with its `role`).
//! * `must_not_flag` lists groups that are present but must not be called a
//!   leak: every group of a control, and background goroutines of a leak
//!   fixture (e.g. netio's accept loop). `count` is their exact size when
//!   fixed, `state` is set (`"running"`) for goroutines that are not
//!   waiting, in which case `wait_reason` is absent.
//! * Any of `created_by`, `blocked_at`, `wait_reason` may be a string (same
//!   on every Go version) or a map from version constraints to strings:
//!   `"default"`, an exact `"1.22"`, or `"<1.20"`, `"<=1.23"`, `">=1.24"`,
//!   `">1.23"`. The non-default keys of one map must not overlap (checked at
//!   load); when none matches, `"default"` applies.
//! * `cause` (any group, optional) is the name leaktrace's catalogue
//!   (README §Causes) must give the group; `null` says it must give none
//!   (not recognised). Absent: not checked.
//! * `verdict` (any group, optional) is the exact verdict expected
//!   (`"leak"`, `"suspect"`, `"ok"`). Absent: a leaking group must be a
//!   `leak` and a `must_not_flag` group anything but.
//! * A top-level `count` makes the primary group's size exact: a leak that
//!   does not grow with `-leak-for` (it happened once, then stayed flat).

use crate::build::fixtures_go_dir;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A value that may depend on the Go version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Versioned {
    Same(String),
    ByVersion(BTreeMap<String, String>),
}

impl Versioned {
    /// The value for Go 1.`go_minor`.
    pub fn for_minor(&self, go_minor: u32) -> Option<&str> {
        match self {
            Versioned::Same(s) => Some(s),
            Versioned::ByVersion(m) => m
                .iter()
                .find(|(k, _)| *k != "default" && constraint_matches(k, go_minor).unwrap_or(false))
                .or_else(|| m.get_key_value("default"))
                .map(|(_, v)| v.as_str()),
        }
    }

    /// Every value this may take.
    pub fn values(&self) -> Vec<&str> {
        match self {
            Versioned::Same(s) => vec![s.as_str()],
            Versioned::ByVersion(m) => m.values().map(String::as_str).collect(),
        }
    }

    fn validate(&self, what: &str) -> Result<()> {
        let Versioned::ByVersion(m) = self else {
            return Ok(());
        };
        for k in m.keys().filter(|k| *k != "default") {
            constraint_matches(k, 0).with_context(|| format!("{what}: bad version key {k:?}"))?;
        }
        for minor in 0..100 {
            let hits: Vec<&String> = m
                .keys()
                .filter(|k| *k != "default" && constraint_matches(k, minor).unwrap_or(false))
                .collect();
            if hits.len() > 1 {
                bail!("{what}: keys {hits:?} overlap at Go 1.{minor}");
            }
            if hits.is_empty() && !m.contains_key("default") {
                // Allowed, but then for_minor returns None for that version.
            }
        }
        Ok(())
    }
}

/// `"<1.20"`, `"<=1.23"`, `">=1.24"`, `">1.23"`, `"=1.22"`, `"1.22"`.
fn constraint_matches(key: &str, go_minor: u32) -> Result<bool> {
    let key = key.trim();
    let (op, ver) = ["<=", ">=", "<", ">", "="]
        .iter()
        .find_map(|op| key.strip_prefix(op).map(|v| (*op, v)))
        .unwrap_or(("=", key));
    let (major, minor) = crate::toolchain::parse_version(ver.trim())
        .with_context(|| format!("not a version: {ver:?}"))?;
    if major != 1 {
        bail!("only Go 1.x is supported: {key:?}");
    }
    Ok(match op {
        "<=" => go_minor <= minor,
        ">=" => go_minor >= minor,
        "<" => go_minor < minor,
        ">" => go_minor > minor,
        _ => go_minor == minor,
    })
}

/// Whether a fixture leaks or is a control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Leak,
    Control,
}

/// One group of goroutines with the same creation site and blocked site.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Group {
    /// What the group is, in words (empty for the primary group).
    #[serde(default)]
    pub role: String,
    pub created_by: Versioned,
    pub blocked_at: Versioned,
    #[serde(default)]
    pub wait_reason: Option<Versioned>,
    /// Goroutines added to this group by one leaking operation (leaks).
    #[serde(default)]
    pub per_op: Option<u64>,
    /// Exact size when it is fixed (controls' pools, background loops).
    #[serde(default)]
    pub count: Option<u64>,
    /// `"running"` for goroutines that are not waiting.
    #[serde(default)]
    pub state: Option<String>,
    /// The function at the goroutine's start PC (`g.startpc`). For
    /// `go f(args)` / `go x.m()` this is a compiler wrapper that runtime
    /// tracebacks hide: `<creator>.funcN` up to Go 1.21, `<creator>.gowrapN`
    /// from 1.22.
    #[serde(default)]
    pub start_fn: Option<Versioned>,
    /// When `blocked_at` is inlined, the function whose machine code holds
    /// the blocked PC (what a symbolizer that ignores the inline tree would
    /// report). `""` (or absent) when it is not inlined.
    #[serde(default)]
    pub inlined_into: Option<Versioned>,
    /// The catalogue's cause leaktrace must report: `Some(None)` for none
    /// (JSON `null`), `None` when not checked.
    #[serde(default, deserialize_with = "explicit_null")]
    pub cause: Option<Option<String>>,
    /// The exact verdict expected, when it is not the default one (`leak`
    /// for leaking groups, not `leak` for `must_not_flag`).
    #[serde(default)]
    pub verdict: Option<String>,
}

/// `"x"` → `Some(Some("x"))`, `null` → `Some(None)`; absent (via
/// `#[serde(default)]`) → `None`.
fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl Group {
    pub fn created_by_for(&self, go_minor: u32) -> String {
        self.created_by
            .for_minor(go_minor)
            .unwrap_or_default()
            .to_string()
    }
    pub fn blocked_at_for(&self, go_minor: u32) -> String {
        self.blocked_at
            .for_minor(go_minor)
            .unwrap_or_default()
            .to_string()
    }
    /// The wait reason string on Go 1.`go_minor` (empty for a running
    /// group).
    pub fn wait_reason_for(&self, go_minor: u32) -> String {
        self.wait_reason
            .as_ref()
            .and_then(|w| w.for_minor(go_minor))
            .unwrap_or_default()
            .to_string()
    }

    /// See [`Group::start_fn`]; `None` when expect.json does not say.
    pub fn start_fn_for(&self, go_minor: u32) -> Option<String> {
        self.start_fn
            .as_ref()
            .and_then(|v| v.for_minor(go_minor))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// See [`Group::inlined_into`]; `None` when `blocked_at` is a real
    /// frame on Go 1.`go_minor`.
    pub fn inlined_into_for(&self, go_minor: u32) -> Option<String> {
        self.inlined_into
            .as_ref()
            .and_then(|v| v.for_minor(go_minor))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    fn validate(&self, what: &str) -> Result<()> {
        self.created_by.validate(&format!("{what}.created_by"))?;
        for (name, v) in [
            ("start_fn", &self.start_fn),
            ("inlined_into", &self.inlined_into),
        ] {
            if let Some(v) = v {
                v.validate(&format!("{what}.{name}"))?;
            }
        }
        self.blocked_at.validate(&format!("{what}.blocked_at"))?;
        if let Some(w) = &self.wait_reason {
            w.validate(&format!("{what}.wait_reason"))?;
        }
        if let Some(v) = &self.verdict
            && !matches!(v.as_str(), "leak" | "suspect" | "ok")
        {
            bail!("{what}.verdict: {v:?} is not leak, suspect or ok");
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct Raw {
    kind: Kind,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    created_by: Option<Versioned>,
    #[serde(default)]
    blocked_at: Option<Versioned>,
    #[serde(default)]
    wait_reason: Option<Versioned>,
    #[serde(default)]
    per_op: Option<u64>,
    #[serde(default)]
    start_fn: Option<Versioned>,
    #[serde(default)]
    inlined_into: Option<Versioned>,
    #[serde(default, deserialize_with = "explicit_null")]
    cause: Option<Option<String>>,
    #[serde(default)]
    verdict: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    other_groups: Vec<Group>,
    #[serde(default)]
    must_not_flag: Vec<Group>,
}

/// A fixture's expected diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub name: String,
    pub kind: Kind,
    pub summary: String,
    /// The primary leaking group (leak fixtures only).
    pub primary: Option<Group>,
    /// Further leaking groups.
    pub other_groups: Vec<Group>,
    /// Groups that must not be reported as leaks.
    pub must_not_flag: Vec<Group>,
}

impl Expect {
    /// Loads `tests/fixtures/go/<name>/expect.json`. Panics on error.
    pub fn load(name: &str) -> Expect {
        Expect::try_load(name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn try_load(name: &str) -> Result<Expect> {
        let path = fixtures_go_dir().join(name).join("expect.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Expect::parse(name, &text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(name: &str, json: &str) -> Result<Expect> {
        let raw: Raw = serde_json::from_str(json)?;
        let primary = match (raw.kind, raw.created_by, raw.blocked_at) {
            (Kind::Leak, Some(created_by), Some(blocked_at)) => Some(Group {
                role: String::new(),
                created_by,
                blocked_at,
                wait_reason: raw.wait_reason,
                per_op: Some(raw.per_op.unwrap_or(1)),
                count: raw.count,
                state: None,
                start_fn: raw.start_fn,
                inlined_into: raw.inlined_into,
                cause: raw.cause,
                verdict: raw.verdict,
            }),
            (Kind::Leak, _, _) => bail!("a leak fixture needs created_by and blocked_at"),
            (Kind::Control, None, None) => None,
            (Kind::Control, _, _) => bail!("a control lists its groups in must_not_flag only"),
        };
        if raw.kind == Kind::Control && raw.must_not_flag.is_empty() {
            bail!("a control needs must_not_flag");
        }
        let e = Expect {
            name: name.to_string(),
            kind: raw.kind,
            summary: raw.summary,
            primary,
            other_groups: raw.other_groups,
            must_not_flag: raw.must_not_flag,
        };
        if let Some(p) = &e.primary {
            p.validate("primary")?;
        }
        for (i, g) in e.other_groups.iter().enumerate() {
            g.validate(&format!("other_groups[{i}]"))?;
        }
        for (i, g) in e.must_not_flag.iter().enumerate() {
            g.validate(&format!("must_not_flag[{i}]"))?;
        }
        Ok(e)
    }

    pub fn is_leak(&self) -> bool {
        self.kind == Kind::Leak
    }

    /// The group the fixture is about: the primary leak, or a control's
    /// first `must_not_flag` group.
    pub fn main_group(&self) -> &Group {
        self.primary
            .as_ref()
            .or(self.must_not_flag.first())
            .expect("validated at load")
    }

    /// Primary then other leaking groups.
    pub fn leak_groups(&self) -> impl Iterator<Item = &Group> {
        self.primary.iter().chain(self.other_groups.iter())
    }

    /// [`Group::wait_reason_for`] of [`Expect::main_group`].
    pub fn wait_reason_for(&self, go_minor: u32) -> String {
        self.main_group().wait_reason_for(go_minor)
    }
    /// [`Group::created_by_for`] of [`Expect::main_group`].
    pub fn created_by_for(&self, go_minor: u32) -> String {
        self.main_group().created_by_for(go_minor)
    }
    /// [`Group::blocked_at_for`] of [`Expect::main_group`].
    pub fn blocked_at_for(&self, go_minor: u32) -> String {
        self.main_group().blocked_at_for(go_minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_lookup() {
        let e = Expect::parse(
            "x",
            r#"{"kind":"leak","created_by":"main.a","blocked_at":"main.b",
                "wait_reason":{"default":"sync.WaitGroup.Wait","<1.24":"semacquire"}}"#,
        )
        .unwrap();
        assert_eq!(e.wait_reason_for(19), "semacquire");
        assert_eq!(e.wait_reason_for(23), "semacquire");
        assert_eq!(e.wait_reason_for(24), "sync.WaitGroup.Wait");
        assert_eq!(e.wait_reason_for(27), "sync.WaitGroup.Wait");
        assert_eq!(e.created_by_for(22), "main.a");
        assert_eq!(e.primary.as_ref().unwrap().per_op, Some(1));

        let v: Versioned =
            serde_json::from_str(r#"{"<=1.21":"a","1.22":"b",">1.22":"c"}"#).unwrap();
        v.validate("v").unwrap();
        assert_eq!(v.for_minor(21), Some("a"));
        assert_eq!(v.for_minor(22), Some("b"));
        assert_eq!(v.for_minor(23), Some("c"));
        let bad: Versioned = serde_json::from_str(r#"{"<1.24":"a",">=1.20":"b"}"#).unwrap();
        assert!(bad.validate("bad").is_err());
        let bad: Versioned = serde_json::from_str(r#"{"~1.24":"a"}"#).unwrap();
        assert!(bad.validate("bad").is_err());
    }

    #[test]
    fn cause_absent_null_or_named() {
        let e = Expect::parse(
            "x",
            r#"{"kind":"leak","created_by":"main.a","blocked_at":"main.b","count":4,
                "cause":"send-without-receiver",
                "other_groups":[{"created_by":"main.a","blocked_at":"main.c","cause":null},
                                {"created_by":"main.a","blocked_at":"main.d","verdict":"suspect"}]}"#,
        )
        .unwrap();
        let p = e.primary.as_ref().unwrap();
        assert_eq!(p.cause, Some(Some("send-without-receiver".into())));
        assert_eq!(p.count, Some(4));
        assert_eq!(e.other_groups[0].cause, Some(None));
        assert_eq!(e.other_groups[1].cause, None);
        assert_eq!(e.other_groups[1].verdict.as_deref(), Some("suspect"));
        assert!(
            Expect::parse(
                "x",
                r#"{"kind":"leak","created_by":"a","blocked_at":"b","verdict":"bad"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn every_fixture_has_a_valid_expect_json() {
        let names = crate::build::fixture_names();
        assert!(names.len() >= 14, "{names:?}");
        for name in names {
            let e = Expect::try_load(&name).unwrap_or_else(|err| panic!("{name}: {err:#}"));
            let g = e.main_group();
            assert!(!g.created_by_for(19).is_empty(), "{name}");
            assert!(!g.blocked_at_for(27).is_empty(), "{name}");
            if e.is_leak() {
                for minor in [19, 21, 22, 23, 24, 25, 26, 27] {
                    for g in e.leak_groups() {
                        assert!(!g.wait_reason_for(minor).is_empty(), "{name} 1.{minor}");
                    }
                }
            }
        }
        // Every expected cause is a name of the catalogue (README §Causes).
        let readme = std::fs::read_to_string(crate::build::workspace_dir().join("README.md"))
            .expect("README.md");
        let causes = readme
            .split("\n## Causes\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a ## Causes section");
        for name in crate::build::fixture_names() {
            let e = Expect::load(&name);
            let groups = e.leak_groups().chain(e.must_not_flag.iter());
            for cause in groups.filter_map(|g| g.cause.clone().flatten()) {
                assert!(
                    causes.contains(&format!("| `{cause}` |")),
                    "{name}: cause {cause:?} is not in README §Causes"
                );
            }
        }
        let n = Expect::load("nil_chan");
        let p = n.primary.as_ref().unwrap();
        assert_eq!(
            p.start_fn_for(21).as_deref(),
            Some("main.(*Runner).Run.func2")
        );
        assert_eq!(
            p.start_fn_for(22).as_deref(),
            Some("main.(*Runner).Run.gowrap2")
        );
        assert_eq!(p.inlined_into_for(21), None);
        assert_eq!(
            p.inlined_into_for(26).as_deref(),
            Some("main.(*Runner).Run.gowrap2")
        );
        let m = Expect::load("mutex");
        assert_eq!(m.wait_reason_for(19), "semacquire");
        assert_eq!(m.wait_reason_for(20), "sync.Mutex.Lock");
        assert_eq!(Expect::load("pool_idle").kind, Kind::Control);
    }
}
