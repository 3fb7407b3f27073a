//! A slow receiver holds the sender back: the kernel's redirect has no
//! backpressure of its own (KERNEL-NOTES, behaviour 1), Floki's credit window
//! bounds what is in flight; over shm, the ring's size does. This test reads machine-wide TCP memory, so
//! `cargo xtask test` runs this binary alone.

use std::time::{Duration, Instant};

use floki_tests::{
    node::{Door, TestNode, assert_success, spawn},
    proc_stats::{rss_bytes, shmem_bytes, tcp_memory_bytes},
};

const MIB: u64 = 1 << 20;

#[test]
fn slow_receiver_keeps_memory_within_the_window() {
    let node = TestNode::start_ebpf("slow-receiver");
    let window = 8 * MIB; // the agent's default
    let bytes = 1 << 30;
    let tcp_before = tcp_memory_bytes();
    let agent_before = rss_bytes(node.agent.pid());

    let mut recv = spawn(node.probe("recv", "slow", bytes).args([
        "--rate",
        &(64 * MIB).to_string(),
        "--chunk",
        &(256 * 1024).to_string(),
    ]));
    let send = spawn(&mut node.probe("send", "slow", bytes));

    let (mut tcp_peak, mut agent_peak) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(90);
    while recv.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the slow transfer did not finish in 90 s"
        );
        tcp_peak = tcp_peak.max(tcp_memory_bytes().saturating_sub(tcp_before));
        agent_peak = agent_peak.max(rss_bytes(node.agent.pid()).saturating_sub(agent_before));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_success(&send.wait_with_output().unwrap(), "sender");
    assert_success(&recv.wait_with_output().unwrap(), "slow receiver");

    // Unbounded, ~1 GiB would sit in the receiver's queue (the sender is ~100x
    // faster). Allowed: the window plus a small constant for page rounding of
    // the queued messages and the machine's other sockets.
    let slack = 4 * MIB;
    eprintln!("peak TCP memory above baseline: {tcp_peak} B; agent RSS growth: {agent_peak} B");
    assert!(
        tcp_peak <= window + slack,
        "TCP memory rose by {tcp_peak} B (window {window} B)"
    );
    assert!(
        agent_peak <= 2 * MIB,
        "the agent's RSS grew by {agent_peak} B"
    );
    let channel = node.agent.wait_finished("slow", Duration::from_secs(10));
    assert_eq!(channel["transport"], "splice", "{channel:#}");
}

#[test]
fn slow_receiver_keeps_an_shm_channel_within_its_ring() {
    let node = TestNode::start_ebpf("slow-receiver-shm");
    let window = 8 * MIB; // the agent's default: the ring's size
    let bytes = 512 * MIB;
    let shmem_before = shmem_bytes();
    let agent_before = rss_bytes(node.agent.pid());

    let mut recv = spawn(node.probe_at(Door::Unix, "recv", "slow-shm", bytes).args([
        "--rate",
        &(64 * MIB).to_string(),
        "--chunk",
        &(256 * 1024).to_string(),
    ]));
    let send = spawn(&mut node.probe_at(Door::Unix, "send", "slow-shm", bytes));

    let (mut shmem_peak, mut agent_peak) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(90);
    while recv.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the slow transfer did not finish in 90 s"
        );
        shmem_peak = shmem_peak.max(shmem_bytes().saturating_sub(shmem_before));
        agent_peak = agent_peak.max(rss_bytes(node.agent.pid()).saturating_sub(agent_before));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_success(&send.wait_with_output().unwrap(), "sender");
    assert_success(&recv.wait_with_output().unwrap(), "slow receiver");

    // The ring (and its 4 KiB header) is all the shared memory the channel
    // takes, however far the sender is ahead; the rest is the machine's noise.
    let slack = 4 * MIB;
    eprintln!(
        "peak shared memory above baseline: {shmem_peak} B; agent RSS growth: {agent_peak} B"
    );
    assert!(
        shmem_peak <= window + slack,
        "shared memory rose by {shmem_peak} B (ring {window} B)"
    );
    assert!(
        agent_peak <= 2 * MIB,
        "the agent's RSS grew by {agent_peak} B"
    );
    let channel = node
        .agent
        .wait_finished("slow-shm", Duration::from_secs(10));
    assert_eq!(channel["transport"], "shm", "{channel:#}");
}

#[test]
fn slow_reader_of_a_named_pipe_keeps_the_agent_within_the_window() {
    let dir = std::env::temp_dir().join(format!("floki-pipes-memory-{}", std::process::id()));
    let node = TestNode::start(
        "slow-pipe",
        floki_tests::agent::AgentOptions {
            extra: vec!["--pipes-dir".into(), dir.display().to_string()],
            ..Default::default()
        },
    );
    let window = 4 * MIB;
    let spec = floki_tests::cluster::Spec::new("wf")
        .function("p", "test-node")
        .function("c", "test-node")
        .edge("e", &["p"], &["c"], "one-to-one", "4MiB");
    node.agent.apply(&spec.yaml()).expect("apply");
    let (input, output) = (dir.join("wf/e.in"), dir.join("wf/e.out"));
    while !output.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let bytes = 256 * MIB;
    let shmem_before = shmem_bytes();
    let agent_before = rss_bytes(node.agent.pid());
    let writer = std::thread::spawn(move || {
        let mut fifo = std::fs::OpenOptions::new().write(true).open(input).unwrap();
        let chunk = floki_tests::pattern(MIB as usize, 5);
        for _ in 0..bytes / MIB {
            std::io::Write::write_all(&mut fifo, &chunk).unwrap();
        }
    });
    // Reads at 64 MiB/s: the writer is far faster.
    let reader = std::thread::spawn(move || {
        let mut fifo = std::fs::File::open(output).unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let (mut got, started) = (0u64, Instant::now());
        loop {
            let n = std::io::Read::read(&mut fifo, &mut buf).unwrap();
            if n == 0 {
                return got;
            }
            got += n as u64;
            let due = Duration::from_secs_f64(got as f64 / (64 * MIB) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    });
    let (mut shmem_peak, mut agent_peak) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the slow pipe did not drain in 60 s"
        );
        shmem_peak = shmem_peak.max(shmem_bytes().saturating_sub(shmem_before));
        agent_peak = agent_peak.max(rss_bytes(node.agent.pid()).saturating_sub(agent_before));
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), bytes);
    let _ = std::fs::remove_dir_all(&dir);
    // The ring (the edge's buffer) is mapped by both of the agent's bridges:
    // counted twice in its RSS, once in the machine's shared memory; plus a
    // 1 MiB read buffer.
    eprintln!(
        "named pipe: peak shared memory above baseline {shmem_peak} B; agent RSS growth {agent_peak} B"
    );
    assert!(
        shmem_peak <= window + 4 * MIB,
        "shared memory rose by {shmem_peak} B"
    );
    assert!(
        agent_peak <= 2 * window + 8 * MIB,
        "the agent's RSS grew by {agent_peak} B"
    );
}
