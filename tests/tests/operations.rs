//! What an operator sees: Prometheus metrics that agree with what happened,
//! and a status that refreshes in place.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use floki_tests::{
    agent::AgentOptions,
    agent_binary,
    metrics::{get, node_with_metrics, sample},
    node::{Door, TestNode},
};

const MIB: u64 = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn metrics_count_bytes_channels_errors_and_setup_latency() {
    let (node, addr) = node_with_metrics("metrics");
    let status = node.agent.status();
    assert_eq!(status["datapath"]["mode"], "ebpf", "{status:#}");

    // One spliced and one shm channel, then a client that is not Floki.
    for (door, channel) in [(Door::Tcp, "m-splice"), (Door::Unix, "m-shm")] {
        node.probe_stream(door, channel, 16 * MIB);
        node.agent.wait_finished(channel, LIMIT);
    }
    let mut stranger = TcpStream::connect(node.agent.addr).unwrap();
    stranger.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    stranger.set_read_timeout(Some(LIMIT)).unwrap();
    let _ = stranger.read_to_end(&mut answer);

    let (line, body) = get(&addr, "/metrics");
    assert!(line.contains("200"), "{line}");
    assert!(
        sample(&body, r#"floki_bytes_total{transport="splice"}"#) >= (16 * MIB) as f64,
        "{body}"
    );
    assert!(
        sample(&body, r#"floki_bytes_total{transport="shm"}"#) >= (16 * MIB) as f64,
        "{body}"
    );
    assert_eq!(sample(&body, r#"floki_bytes_total{transport="tcp"}"#), 0.0);
    assert_eq!(
        sample(&body, r#"floki_channels_finished_total{outcome="done"}"#),
        2.0
    );
    assert_eq!(sample(&body, "floki_channels_active"), 0.0);
    assert_eq!(sample(&body, r#"floki_datapath_mode{mode="ebpf"}"#), 1.0);
    assert_eq!(
        sample(&body, r#"floki_datapath_mode{mode="fallback"}"#),
        0.0
    );
    assert_eq!(sample(&body, "floki_channel_setup_seconds_count"), 2.0);
    assert!(sample(&body, "floki_channel_setup_seconds_sum") > 0.0);
    assert_eq!(
        sample(&body, r#"floki_errors_total{kind="bad_handshake"}"#),
        1.0
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    // The Grafana dashboard plots only series the agent serves.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )
    .unwrap();
    let mut plotted = 0;
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("floki_") {
            assert!(
                body.contains(word),
                "the dashboard plots {word}, which is not served"
            );
            plotted += 1;
        }
    }
    assert!(plotted >= 6, "{plotted}");

    let (line, _) = get(&addr, "/");
    assert!(line.contains("404"), "{line}");
    // The agent keeps serving channels after all that.
    node.probe_stream(Door::Tcp, "m-after", MIB);
}

#[test]
fn status_shows_what_an_operator_checks_and_watch_refreshes_it() {
    let node = TestNode::start_ebpf("operator-status");
    let status = node.agent.status();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_secs"].is_u64());
    let datapath = &status["datapath"];
    assert_eq!(
        datapath["cgroup"].as_str(),
        node.cgroup.path().to_str(),
        "{datapath:#}"
    );
    let pins: Vec<&str> = datapath["pins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for pin in ["FLOKI_CHANNELS", "FLOKI_SOCKETS", "sock_ops_link"] {
        assert!(pins.contains(&pin), "{pins:?}");
    }
    assert!(
        datapath["kernel"]["release"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let text = node.agent.status_text();
    assert!(
        text.contains("sock_ops_link") && text.contains("kernel:"),
        "{text}"
    );

    // --watch redraws until interrupted: several screens in 1.5 s.
    let mut watch = Command::new(agent_binary())
        .args(["status", "--watch", "--interval", "0.2", "--admin"])
        .arg(&node.agent.admin)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    watch.kill().unwrap();
    let out = watch.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let screens = out.matches("\x1b[H\x1b[2J").count();
    assert!(screens >= 3, "{screens} redraws in 1.5 s:\n{out}");
    assert!(out.contains("datapath: ebpf"), "{out}");
}

#[test]
fn logs_are_json_lines_and_carry_the_kernel_programs_events() {
    let node = TestNode::start(
        "json-logs",
        AgentOptions {
            extra: vec!["--log-format".into(), "json".into()],
            // The kernel programs log through aya-log under `floki::*`.
            rust_log: Some("info,floki=debug".into()),
            ..AgentOptions::default()
        },
    );
    assert_eq!(node.agent.status()["datapath"]["mode"], "ebpf");
    node.probe_stream(Door::Tcp, "logged", MIB);
    node.agent.wait_finished("logged", LIMIT);

    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let log = node.agent.log();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
            })
            .collect();
        assert!(
            lines
                .iter()
                .all(|l| l["level"].is_string() && l["fields"].is_object())
        );
        let kernel = lines.iter().find(|l| {
            l["target"] == "floki::sock_ops"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("socket spliced"))
        });
        let finished = lines.iter().any(|l| {
            l["fields"]["message"] == "channel finished"
                && l["fields"]["channel"] == "logged"
                && l["fields"]["transport"] == "splice"
        });
        if kernel.is_some() && finished {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel event or no finished channel in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
