//! `deploy/kubernetes/daemonset.yaml` (issue #17): no cluster is at hand,
//! so the manifest is parsed with a real YAML parser (PyYAML, installed by
//! `cargo xtask setup`) and held to what the agent needs on a node — the
//! host's pids, the capabilities Linux 6.18 asks for, read-only mounts of
//! BTF, tracefs and cgroup v2, the metrics port where the scrape
//! annotation says, a resource budget — and its arguments are given to the
//! real leaktrace (as root), narrowed to no process, for one second.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::leaktrace_bin;
use serde_json::Value;

fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml")
}

/// Every document of the file, as JSON, through PyYAML's safe loader.
fn documents() -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(manifest())
        .output()
        .expect("python3 runs (cargo xtask setup installs python3-yaml)");
    assert!(
        out.status.success(),
        "the manifest does not parse:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_daemonset_gives_the_agent_what_it_needs_on_a_node() {
    let docs = documents();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in the manifest");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"],
        "the selector picks the template's pods"
    );
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true, "the host's processes are visible");
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args = strings(&c["args"]);
    assert!(args.contains(&"--all"), "{args:?}");
    let listen = args
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| args.get(i + 1))
        .expect("--listen ADDR");
    let port: u64 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in --listen");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "Prometheus reaches the pod's IP: {listen}"
    );
    assert_eq!(c["ports"][0]["containerPort"], port);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let sc = &c["securityContext"];
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let caps = strings(&sc["capabilities"]["add"]);
    // README §Privileges: uprobes need CAP_SYS_ADMIN on Linux 6.18,
    // tracefs CAP_DAC_READ_SEARCH, other users' processes CAP_SYS_PTRACE.
    for cap in [
        "SYS_ADMIN",
        "DAC_READ_SEARCH",
        "SYS_PTRACE",
        "BPF",
        "PERFMON",
    ] {
        assert!(caps.contains(&cap), "{cap} missing from {caps:?}");
    }
    assert_ne!(sc["privileged"], true, "capabilities, not privileged");

    let volumes = spec["volumes"].as_array().expect("volumes");
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        let mount = c["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["mountPath"] == path))
            .unwrap_or_else(|| panic!("{path} is not mounted"));
        assert_eq!(mount["readOnly"], true, "{path} read-only");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        assert_eq!(volume["hostPath"]["path"], path, "the host's {path}");
    }
    let limits = &c["resources"]["limits"];
    assert!(
        limits["cpu"].is_string() && limits["memory"].is_string(),
        "a CPU and memory budget: {limits}"
    );

    // The arguments are the real leaktrace's: it starts with them (as
    // root), here narrowed to an executable nobody runs, for one second.
    if !common::ebpf_available("the_daemonset_gives_the_agent_what_it_needs_on_a_node") {
        return;
    }
    let local: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == *listen {
                "127.0.0.1:0".to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    let out = Command::new(leaktrace_bin())
        .args(&local)
        .args(["--exe", "no-such-program-here", "--duration", "1s"])
        .output()
        .expect("running leaktrace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("tracing every Go and tokio process"),
        "leaktrace {local:?}: {}\n{stderr}",
        out.status
    );
    println!(
        "manifest: {} documents; leaktrace {local:?} ran: {stderr}",
        docs.len()
    );
}
