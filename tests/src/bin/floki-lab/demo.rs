//! `cargo xtask demo`: builds everything, starts an agent on this machine,
//! streams 1 GiB from a producer to a consumer through a spliced channel and
//! through a shared-memory ring, shows the CLI and the agent's status, and
//! compares with plain TCP and with the same bytes passed through an object
//! store (s3s-fs, PUT then GET), as serverless platforms do. Figures are
//! warm (one untimed pass of each way first) and the median of a few passes.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    str::FromStr as _,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{
    bench::paper::{
        Place, Server,
        endpoint::{Access, Plan},
        scenario::Stream,
        usage,
    },
    lab::{self, Lab, measured},
};

#[derive(Debug, Args)]
pub struct Options {
    /// Bytes to stream.
    #[arg(long, default_value = "1GiB")]
    pub size: String,
    /// Timed passes of each transfer; the demo reports their median.
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The median of `values` (not empty).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One end's output, each line whole, after the end exited.
fn print_end(who: &str, out: &std::process::Output) {
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        eprintln!("  {who}: {line}");
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bytes = bytesize::ByteSize::from_str(&opts.size)
        .map_err(|err| anyhow::anyhow!("--size {}: {err}", opts.size))?
        .as_u64();
    let passes = opts.passes.max(1);
    let size = bytesize::ByteSize(bytes).display().iec().to_string();
    eprintln!("== starting floki-agent on a cgroup of its own");
    let binaries = lab::Binaries::beside_me()?;
    let lab = Lab::start(&binaries, "demo", false)?;
    let agent = lab.addr();

    eprintln!("\n== the CLI: `floki-agent send greeting` | `floki-agent recv greeting`");
    let cli = |verb: &str| {
        let mut cmd = Command::new(&binaries.agent);
        cmd.args([verb, "greeting", "--agent", &agent])
            .stderr(Stdio::piped());
        lab.cgroup.spawn_inside(&mut cmd);
        cmd
    };
    let recv = cli("recv")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting recv")?;
    let mut send = cli("send")
        .stdin(Stdio::piped())
        .spawn()
        .context("starting send")?;
    send.stdin
        .take()
        .context("send's stdin")?
        .write_all(b"hello from the producer\n")?;
    let sent = send.wait_with_output()?;
    let out = recv.wait_with_output()?;
    print_end("producer", &sent);
    print_end("consumer", &out);
    if !sent.status.success() {
        bail!("floki-agent send failed");
    }
    if !out.status.success() {
        bail!("floki-agent recv failed");
    }
    eprint!(
        "  consumer's output: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let chunk = (1 << 20).to_string();
    // Producer and consumer as separate processes, `bytes` over `addr`
    // (`channel` for Floki, none for plain TCP): the consumer's own rate in
    // GB/s, the seconds end to end, and the transport it reported.
    let transfer =
        |addr: &str, channel: Option<&str>, bytes: u64| -> anyhow::Result<(f64, f64, String)> {
            let bytes_s = bytes.to_string();
            let mut common = strings(&["--addr", addr, "--bytes", &bytes_s, "--chunk", &chunk]);
            if let Some(channel) = channel {
                common.extend(strings(&["--channel", channel]));
            }
            let verbs = match channel {
                Some(_) => ["floki-recv", "floki-send"],
                None => ["tcp-sink", "tcp-source"],
            };
            let args = |verb: &str| [vec![verb.to_owned()], common.clone()].concat();
            let started = Instant::now();
            let consumer = lab.peer(&args(verbs[0]), None)?;
            let producer = lab.peer(&args(verbs[1]), None)?;
            let got = measured(consumer)?;
            measured(producer)?;
            let e2e = started.elapsed().as_secs_f64();
            let transport = got.transport.clone().unwrap_or_else(|| "tcp".into());
            Ok((got.bytes as f64 / got.seconds / 1e9, e2e, transport))
        };
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tcp_addr = format!("127.0.0.1:{tcp_port}");
    let unix = lab.socket_addr();
    let ways: [(&str, &str, Option<&str>); 3] = [
        (
            "spliced in the kernel (agent's TCP port)",
            agent.as_str(),
            Some("demo"),
        ),
        (
            "through a shared-memory ring (agent's Unix socket)",
            unix.as_str(),
            Some("demo-shm"),
        ),
        ("over plain TCP loopback, no agent", tcp_addr.as_str(), None),
    ];

    // The first touch of memory on a fresh machine is slow (page faults,
    // cold caches, first connections): one untimed pass of each first.
    eprintln!("\n== warming up: one untimed pass of each way");
    let warm = bytes.min(256 << 20);
    for (what, addr, channel) in ways {
        transfer(addr, channel.map(|c| format!("{c}-warm")).as_deref(), warm)
            .with_context(|| format!("warming up {what}"))?;
    }

    let mut rates = Vec::new();
    for (what, addr, channel) in ways {
        eprintln!("\n== {size} {what}: {passes} passes");
        let mut pass_rates = Vec::new();
        let mut pass_e2e = Vec::new();
        for pass in 0..passes {
            let channel = channel.map(|c| format!("{c}-{pass}"));
            let (rate, e2e, transport) = transfer(addr, channel.as_deref(), bytes)?;
            let checked = if channel.is_some() {
                "consumer verified length and XXH3"
            } else {
                "raw bytes"
            };
            eprintln!(
                "  pass {}: {rate:.2} GB/s over {transport}, {e2e:.2} s end to end ({checked})",
                pass + 1
            );
            pass_rates.push(rate);
            pass_e2e.push(e2e);
        }
        rates.push((median(pass_rates), median(pass_e2e)));
    }
    let [
        (splice_rate, splice_e2e),
        (shm_rate, shm_e2e),
        (tcp_rate, _),
    ] = rates[..]
    else {
        unreachable!("three ways");
    };

    eprintln!(
        "\n== the same {size} through an S3 object store (s3s-fs, files on local disk): PUT, then GET"
    );
    let store = object_store_round(&lab, bytes)?;
    eprintln!(
        "  {:.2} s end to end ({} written to disk)",
        store.seconds,
        bytesize::ByteSize(store.disk_bytes).display().iec()
    );

    eprintln!("\n== floki-agent status");
    let status = Command::new(&binaries.agent)
        .arg("status")
        .arg("--admin")
        .arg(&lab.agent.admin)
        .output()
        .context("running floki-agent status")?;
    print!("{}", String::from_utf8_lossy(&status.stdout));

    println!(
        "\n{size} through Floki (median of {passes} warm passes): {splice_rate:.2} GB/s spliced in the kernel and {shm_rate:.2} GB/s through a shared-memory ring, against {tcp_rate:.2} GB/s over plain TCP: {:.2}x and {:.2}x.",
        splice_rate / tcp_rate,
        shm_rate / tcp_rate
    );
    let best_e2e = splice_e2e.min(shm_e2e);
    println!(
        "{size} end to end: {best_e2e:.2} s through Floki, {:.2} s through the object store: {:.0}x faster, with 0 B written to disk against {}.",
        store.seconds,
        store.seconds / best_e2e,
        bytesize::ByteSize(store.disk_bytes).display().iec()
    );
    Ok(())
}

/// What passing the bytes through the object store cost.
struct StoreRound {
    seconds: f64,
    disk_bytes: u64,
}

/// A producer PUTs `bytes` into a fresh s3s-fs on this host, then a
/// consumer GETs and checks them, as a serverless platform passes data.
fn object_store_round(lab: &Lab, bytes: u64) -> anyhow::Result<StoreRound> {
    // On the local disk, where an object store keeps its data (not /tmp,
    // which may be memory).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/demo-s3");
    let server = Server::s3s_fs(&Place::Host(&lab.cgroup), &root)?;
    let before = usage::read(server.pid);
    let stream = Stream {
        producer: "producer".into(),
        consumer: "consumer".into(),
        bytes,
        seed: 42,
        key: "demo/object".into(),
    };
    let plan = |produce: bool| -> anyhow::Result<Vec<String>> {
        let plan = Plan {
            access: Access::s3(server.s3_endpoint("host")),
            function: if produce { "producer" } else { "consumer" }.into(),
            produce,
            streams: vec![stream.clone()],
        };
        Ok(vec!["paper-endpoint".into(), serde_json::to_string(&plan)?])
    };
    let started = Instant::now();
    let put = lab.peer(&plan(true)?, None)?.wait_with_output()?;
    if !put.status.success() {
        bail!("the PUT failed: {}", String::from_utf8_lossy(&put.stderr));
    }
    let get = lab.peer(&plan(false)?, None)?.wait_with_output()?;
    if !get.status.success() {
        bail!("the GET failed: {}", String::from_utf8_lossy(&get.stderr));
    }
    let seconds = started.elapsed().as_secs_f64();
    let disk_bytes = usage::since(before, usage::read(server.pid)).write_bytes;
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
    Ok(StoreRound {
        seconds,
        disk_bytes,
    })
}
