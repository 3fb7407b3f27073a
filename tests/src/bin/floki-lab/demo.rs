//! `cargo xtask demo`: builds everything, starts an agent on this machine,
//! streams 1 GiB from a producer to a consumer through a spliced channel and
//! through a shared-memory ring, shows the CLI and the agent's status, and
//! compares with plain TCP and
//! with the same bytes passed through an object store (s3s-fs, PUT then
//! GET), as serverless platforms do.

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
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let bytes = bytesize::ByteSize::from_str(&opts.size)
        .map_err(|err| anyhow::anyhow!("--size {}: {err}", opts.size))?
        .as_u64();
    let size = bytesize::ByteSize(bytes).display().iec().to_string();
    eprintln!("== starting floki-agent on a cgroup of its own");
    let binaries = lab::Binaries::beside_me()?;
    let lab = Lab::start(&binaries, "demo", false)?;
    let agent = lab.addr();

    eprintln!("\n== the CLI: `floki-agent send greeting` | `floki-agent recv greeting`");
    let cli = |verb: &str| {
        let mut cmd = Command::new(&binaries.agent);
        cmd.args([verb, "greeting", "--agent", &agent]);
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
    if !send.wait()?.success() {
        bail!("floki-agent send failed");
    }
    let out = recv.wait_with_output()?;
    if !out.status.success() {
        bail!("floki-agent recv failed");
    }
    eprint!("consumer got: {}", String::from_utf8_lossy(&out.stdout));

    eprintln!(
        "\n== {size} from a producer to a consumer through channel 'demo' (agent's TCP port)"
    );
    let chunk = (1 << 20).to_string();
    let bytes_s = bytes.to_string();
    // Producer and consumer as separate processes; end to end, and the
    // consumer's own measure.
    let transfer = |addr: &str, channel: &str| -> anyhow::Result<(crate::peer::Measured, f64)> {
        let common = [
            "--addr",
            addr,
            "--channel",
            channel,
            "--bytes",
            &bytes_s,
            "--chunk",
            &chunk,
        ];
        let started = Instant::now();
        let consumer = lab.peer(&strings(&[&["floki-recv"][..], &common].concat()), None)?;
        let producer = lab.peer(&strings(&[&["floki-send"][..], &common].concat()), None)?;
        let got = measured(consumer)?;
        measured(producer)?;
        let e2e = started.elapsed().as_secs_f64();
        eprintln!(
            "consumer verified {size} (length and XXH3) in {:.2} s: {:.2} GB/s over {}",
            got.seconds,
            got.bytes as f64 / got.seconds / 1e9,
            got.transport.as_deref().unwrap_or("?")
        );
        Ok((got, e2e))
    };
    let (floki, floki_e2e) = transfer(&agent, "demo")?;
    let floki_rate = floki.bytes as f64 / floki.seconds / 1e9;

    eprintln!("\n== the same through channel 'demo-shm', both ends on the agent's Unix socket");
    let (shm, shm_e2e) = transfer(&lab.socket_addr(), "demo-shm")?;
    let shm_rate = shm.bytes as f64 / shm.seconds / 1e9;

    eprintln!("\n== the same {size} over plain TCP loopback, no agent");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tcp_addr = format!("127.0.0.1:{port}");
    let common = [
        "--addr",
        tcp_addr.as_str(),
        "--bytes",
        &bytes_s,
        "--chunk",
        &chunk,
    ];
    let sink = lab.peer(&strings(&[&["tcp-sink"][..], &common].concat()), None)?;
    let source = lab.peer(&strings(&[&["tcp-source"][..], &common].concat()), None)?;
    let tcp = measured(sink)?;
    measured(source)?;
    let tcp_rate = tcp.bytes as f64 / tcp.seconds / 1e9;
    eprintln!("{:.2} s: {tcp_rate:.2} GB/s", tcp.seconds);

    eprintln!(
        "\n== the same {size} through an S3 object store (s3s-fs, files on local disk): PUT, then GET"
    );
    let store = object_store_round(&lab, bytes)?;
    eprintln!(
        "{:.2} s end to end ({} written to disk)",
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
        "\n{size} through Floki: {floki_rate:.2} GB/s spliced in the kernel and {shm_rate:.2} GB/s through a shared-memory ring, against {tcp_rate:.2} GB/s over plain TCP: {:.2}x and {:.2}x.",
        floki_rate / tcp_rate,
        shm_rate / tcp_rate
    );
    let best_e2e = floki_e2e.min(shm_e2e);
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
