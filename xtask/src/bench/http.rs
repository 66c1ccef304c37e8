//! Section 2: Go HTTP servers on loopback under wrk, untraced and with
//! leaktrace attached by pid: requests/s and p99 latency. Two servers: the
//! bundled bench/http (a small JSON handler) and a real one nobody here
//! wrote, Debian 12's `prometheus` release binary (pinned by `cargo xtask
//! setup`), answering its own `/api/v1/status/buildinfo`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Markdown, Plan, Tools,
    proc::{Proc, capture, free_port},
    report::{last_report, num_after},
    stats::{fmt_med, median, ratio},
};

struct HttpRun {
    rps: f64,
    p99_ms: f64,
    parks_per_req: f64,
    lost: f64,
    /// From leaktrace's last report: the probes armed at the end and how
    /// often the budget shed (`spawn, exit; shed 1×`).
    armed: String,
}

/// `overhead.probes[armed]` and `overhead.sheds` of the last report.
fn armed_at_end(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Some(r) = text
        .lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        return "–".into();
    };
    let o = &r["overhead"];
    let armed: Vec<&str> = o["probes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["armed"] == true)
                .filter_map(|p| p["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{}; shed {}×",
        if armed.is_empty() {
            "none".to_string()
        } else {
            armed.join(", ")
        },
        o["sheds"].as_u64().unwrap_or(0)
    )
}

fn parse_wrk(out: &str) -> Result<(f64, f64, f64)> {
    let rps = num_after(out, "Requests/sec:").with_context(|| format!("wrk output: {out}"))?;
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .context("no 99% line (wrk --latency)")?;
    let v = line.split_whitespace().nth(1).context("99% value")?;
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let num: f64 = num.parse()?;
    let ms = match unit {
        "us" => num / 1000.0,
        "ms" => num,
        "s" => num * 1000.0,
        "m" => num * 60_000.0,
        _ => bail!("unknown wrk latency unit in {v}"),
    };
    let total = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((rps, ms, total))
}

/// The server under load.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Bundled,
    Prometheus,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Bundled => "bench/http",
            Server::Prometheus => "prometheus",
        }
    }

    /// Started on a free loopback port, ready for requests: the process and
    /// the URL wrk asks for.
    fn start(self, t: &Tools) -> Result<(Proc, String)> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        match self {
            Server::Bundled => {
                let mut server =
                    Proc::spawn(Command::new(&t.http).args(["-addr", &addr]), "bench/http")?;
                server
                    .out
                    .wait_for("listening", Duration::from_secs(20), |l| {
                        l.starts_with("listening")
                    })?;
                Ok((server, format!("http://{addr}/item?id=42")))
            }
            Server::Prometheus => {
                // Our own idle instance, never the package's service: a
                // config with nothing to scrape, a fresh data directory.
                let dir = t.scratch.join("prometheus");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(dir.join("data"))?;
                let config = dir.join("prometheus.yml");
                std::fs::write(
                    &config,
                    "global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n",
                )?;
                let mut server = Proc::spawn(
                    Command::new(PROMETHEUS)
                        .arg(format!("--config.file={}", config.display()))
                        .arg(format!(
                            "--storage.tsdb.path={}",
                            dir.join("data").display()
                        ))
                        .arg(format!("--web.listen-address={addr}")),
                    "prometheus",
                )?;
                server.err.wait_for("ready", Duration::from_secs(60), |l| {
                    l.contains("Server is ready to receive web requests")
                })?;
                Ok((server, format!("http://{addr}/api/v1/status/buildinfo")))
            }
        }
    }
}

/// Installed by `cargo xtask setup` (Debian's prometheus 2.42.0+ds-5+deb12u1,
/// go1.19, stripped).
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn http_once(t: &Tools, which: Server, tracer: Option<&Tracer>, secs: u32) -> Result<HttpRun> {
    let (mut server, url) = which.start(t)?;
    let report = t.scratch.join("http-report.jsonl");
    let _ = std::fs::remove_file(&report);
    let mut lt = match tracer {
        Some(tr) => {
            let mut p = Proc::spawn(
                Command::new(&tr.bin)
                    .args(["--format", "json", "--output"])
                    .arg(&report)
                    .args(&tr.args)
                    .args(["--pid", &server.pid().to_string()]),
                "leaktrace --pid bench/http",
            )?;
            p.err.wait_for("attach", Duration::from_secs(60), |l| {
                l.starts_with("Attaching")
            })?;
            Some(p)
        }
        None => None,
    };
    let wrk = |d: &str| -> Result<String> {
        let (status, out, err) = capture(
            Command::new("wrk").args([
                "-t2",
                "-c32",
                "-d",
                d,
                "--latency",
                "--timeout",
                "2s",
                &url,
            ]),
            "wrk",
            Duration::from_secs(secs as u64 + 60),
        )?;
        if !status.success() {
            bail!("wrk: {status}: {err}");
        }
        Ok(out)
    };
    // Warm-up: connections, the server's goroutines and the tracer's caches.
    let (_, _, warm_total) = parse_wrk(&wrk("1s")?)?;
    let out = wrk(&format!("{secs}s"))?;
    let (rps, p99_ms, total) = parse_wrk(&out)?;
    let (mut parks_per_req, mut lost, mut armed) = (f64::NAN, f64::NAN, "–".to_string());
    if let Some(p) = lt.as_mut() {
        p.stop(Duration::from_secs(60));
        let ev = last_report(&report)?;
        // The runtime's own parks (timers, GC) count too: a slight overestimate.
        parks_per_req = ev.park / (warm_total + total);
        lost = ev.lost;
        armed = armed_at_end(&report);
    }
    server.stop(Duration::from_secs(10));
    Ok(HttpRun {
        rps,
        p99_ms,
        parks_per_req,
        lost,
        armed,
    })
}

/// A leaktrace build and the options it runs with.
struct Tracer {
    bin: PathBuf,
    args: Vec<String>,
}

pub(super) fn section(md: &mut Markdown, plan: &Plan, t: &Tools) -> Result<()> {
    md.h2("2. Service: Go HTTP servers under load");
    md.line(&format!(
        "Each server on 127.0.0.1, driven by `wrk -t2 -c32 -d{}s --latency` after a 1 s \
         warm-up; leaktrace attaches by pid before the warm-up and stays attached. wrk shares \
         the 2 CPUs with the server (and the tracer), as a loopback test must. bench/http is \
         net/http with a small JSON handler; prometheus is Debian 12's release binary \
         (2.42.0+ds-5+deb12u1, go1.19, stripped), unmodified, answering \
         `/api/v1/status/buildinfo` from an idle instance. leaktrace runs with its default \
         overhead budget (2 %), with 1 % and 5 %, and with the budget off (every probe armed all the \
         time: what the probes of §1 cost a server). \"parks per request\" counts the park \
         probe's hits over the run: near 0 once the budget has shed it.",
        plan.http_secs
    ));
    let prometheus = Path::new(PROMETHEUS).exists();
    for which in [Server::Bundled, Server::Prometheus] {
        if which == Server::Prometheus && !prometheus {
            md.line(&format!(
                "_prometheus: {PROMETHEUS} is not installed (`cargo xtask setup` installs it); \
                 not measured._"
            ));
            continue;
        }
        server_table(md, plan, t, which)?;
    }
    Ok(())
}

fn server_table(md: &mut Markdown, plan: &Plan, t: &Tools, which: Server) -> Result<()> {
    let mut cfgs: Vec<(String, Option<Tracer>)> = vec![("untraced".into(), None)];
    // The bench's environment turns the budget off (sections 1–6 measure the
    // probes): each row here names its budget on the command line instead.
    for (name, budget) in [
        ("leaktrace --pid (default: --max-overhead 2)", "2"),
        ("leaktrace --pid --max-overhead 1", "1"),
        ("leaktrace --pid --max-overhead 5", "5"),
        (
            "leaktrace --pid --max-overhead off (every probe armed)",
            "off",
        ),
    ] {
        cfgs.push((
            name.into(),
            Some(Tracer {
                bin: t.leaktrace.clone(),
                args: vec!["--max-overhead".into(), budget.into()],
            }),
        ));
    }
    for (name, bin) in &t.candidates {
        cfgs.push((
            format!("{name} --pid"),
            Some(Tracer {
                bin: bin.clone(),
                args: Vec::new(),
            }),
        ));
    }
    let mut runs: BTreeMap<usize, Vec<HttpRun>> = BTreeMap::new();
    for round in 0..plan.runs {
        for (i, (name, tracer)) in cfgs.iter().enumerate() {
            eprintln!(
                "bench: http {} round {}/{}: {name}",
                which.name(),
                round + 1,
                plan.runs
            );
            match http_once(t, which, tracer.as_ref(), plan.http_secs) {
                Ok(r) => runs.entry(i).or_default().push(r),
                Err(e) => eprintln!("bench: http {} {name}: {e:#}", which.name()),
            }
        }
    }
    let col = |i: usize, f: fn(&HttpRun) -> f64| -> Vec<f64> {
        runs.get(&i)
            .map(|v| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let base_rps = median(&col(0, |r| r.rps));
    let base_p99 = median(&col(0, |r| r.p99_ms));
    let rows: Vec<Vec<String>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let rps = median(&col(i, |r| r.rps));
            let p99 = median(&col(i, |r| r.p99_ms));
            vec![
                name.clone(),
                format!("{}", runs.get(&i).map_or(0, Vec::len)),
                fmt_med(&col(i, |r| r.rps), 0),
                ratio(rps, base_rps),
                fmt_med(&col(i, |r| r.p99_ms), 2),
                ratio(p99, base_p99),
                {
                    let p = median(&col(i, |r| r.parks_per_req));
                    if p.is_nan() {
                        "–".into()
                    } else {
                        format!("{p:.2}")
                    }
                },
                {
                    let l = median(&col(i, |r| r.lost));
                    if l.is_nan() {
                        "–".into()
                    } else {
                        format!("{l:.0}")
                    }
                },
                runs.get(&i)
                    .and_then(|v| v.first())
                    .map_or_else(|| "–".into(), |r| r.armed.clone()),
            ]
        })
        .collect();
    md.line(&format!("**{}**", which.name()));
    md.table(
        &[
            "configuration",
            "runs",
            "requests/s",
            "× untraced",
            "p99 latency (ms)",
            "× untraced",
            "parks per request",
            "events lost",
            "armed at the end (first run)",
        ],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let wrk = "Running 1s test\n  Latency Distribution\n     50%  1.00ms\n     99%  850.00us\n  \
                   1234 requests in 1.00s, 1 MB read\nRequests/sec:   1234.50\n";
        let (rps, p99, total) = parse_wrk(wrk).unwrap();
        assert_eq!(rps, 1234.5);
        assert!((p99 - 0.85).abs() < 1e-9);
        assert_eq!(total, 1234.0);
    }
}
