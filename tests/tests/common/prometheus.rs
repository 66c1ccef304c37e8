//! Our own Debian `prometheus` server for a test: loopback, a free port, a
//! temporary data directory and the config the test gives.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::tempfile_path;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Our own prometheus process; killed, reaped and its directory removed on
/// drop (also when a failing test unwinds).
pub struct Server {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    pub fn start(config: &str) -> Server {
        let dir = tempfile_path("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("config");
        let port = free_port();
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        let mut cmd = Command::new(PROMETHEUS);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // The server dies with the test's thread if the test dies unwound.
        leaktrace_e2e::process::die_with_parent_thread(&mut cmd);
        let child = cmd.spawn().expect("starting prometheus");
        let server = Server { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(90);
        while get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 90s:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

/// `GET path` over HTTP/1.0 (no chunking, the server closes): status and
/// body; `None` when the server is not answering.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Percent-encoding for a query string value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PromQL instant query through Prometheus' HTTP API: each series'
/// labels and value.
pub fn query(prom: &Server, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let path = format!("/api/v1/query?query={}", encode(promql));
    let Some((200, body)) = get(prom.port, &path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| {
                    let value = r["value"][1].as_str()?.parse().ok()?;
                    Some((r["metric"].clone(), value))
                })
                .collect()
        })
        .unwrap_or_default()
}
