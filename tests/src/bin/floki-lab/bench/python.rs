//! `cargo xtask bench python`: Floki from Python, on one node.
//!
//! * **Streams**: 1 GiB from a Python sender to a Python receiver
//!   (floki-py/benches/stream.py), against the Rust blocking client doing the
//!   same (`floki-lab peer floki-send` / `floki-recv`), over shm and over
//!   splice, runs interleaved, ends pinned to CPUs 0 and 1.
//! * **A real workflow**: the thumbnails pipeline of examples/python (split,
//!   four shrinks, assemble) through Floki, and the very same functions
//!   through boto3 and an S3 server (s3s-fs) as they pass data today, at
//!   16 MiB, 256 MiB and 1 GiB of input; the outputs must be equal.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr as _,
};

use anyhow::{Context as _, bail, ensure};
use clap::Args;
use serde_json::json;

use super::{
    paper::{
        human,
        servers::{Place, Server},
    },
    report::{self, Spread},
};
use crate::lab::{Binaries, Lab, Measured};

#[derive(Debug, Args)]
pub struct Options {
    /// Bytes per stream.
    #[arg(long, default_value = "1GiB")]
    pub size: String,
    /// Runs per stream measurement.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Inputs of the pipeline.
    #[arg(long, value_delimiter = ',', default_value = "16MiB,256MiB,1GiB")]
    pub pipeline: Vec<String>,
    /// Runs per pipeline input and system.
    #[arg(long, default_value_t = 3)]
    pub pipeline_runs: usize,
    /// The Python with the floki package [default: target/venv/bin/python].
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Print only; leave docs/BENCHMARKS.md alone.
    #[arg(long)]
    pub no_write: bool,
    /// The example, once: 256 MiB streams, the pipeline at 64 MiB, one run
    /// each, nothing written.
    #[arg(long)]
    pub quick: bool,
}

/// The repository, for the Python sources.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn parse_size(text: &str) -> anyhow::Result<u64> {
    bytesize::ByteSize::from_str(text)
        .map(|size| size.as_u64())
        .map_err(|err| anyhow::anyhow!("size {text}: {err}"))
}

/// A stream's ends: which language, which door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    RustShm,
    PythonShm,
    RustSplice,
    PythonSplice,
}

impl Ends {
    const ALL: [Self; 4] = [
        Self::RustShm,
        Self::PythonShm,
        Self::RustSplice,
        Self::PythonSplice,
    ];

    fn python(self) -> bool {
        matches!(self, Self::PythonShm | Self::PythonSplice)
    }

    fn transport(self) -> &'static str {
        match self {
            Self::RustShm | Self::PythonShm => "shm",
            Self::RustSplice | Self::PythonSplice => "splice",
        }
    }
}

struct Bench {
    lab: Lab,
    python: PathBuf,
}

impl Bench {
    /// One end, inside the lab's cgroup, pinned to `cpu`.
    fn end(&self, ends: Ends, verb: &str, channel: &str, bytes: u64) -> anyhow::Result<Child> {
        let addr = match ends.transport() {
            "shm" => self.lab.socket_addr(),
            _ => self.lab.addr(),
        };
        let common = [
            "--addr".to_owned(),
            addr,
            "--channel".into(),
            channel.into(),
            "--bytes".into(),
            bytes.to_string(),
            "--chunk".into(),
            (1 << 20).to_string(),
        ];
        let cpu = if verb == "recv" { 0 } else { 1 };
        if !ends.python() {
            let mut args = vec![format!("floki-{verb}")];
            args.extend(common);
            return self.lab.peer(&args, Some(cpu));
        }
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &cpu.to_string()])
            .arg(&self.python)
            .arg(root().join("floki-py/benches/stream.py"))
            .arg(verb)
            .args(common)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.lab.cgroup.spawn_inside(&mut cmd);
        cmd.spawn().context("starting a Python end")
    }

    /// Receiver-side throughput of one stream, GB/s.
    fn stream(&self, ends: Ends, bytes: u64, run: usize) -> anyhow::Result<f64> {
        let channel = format!("py-bench-{ends:?}-{run}").to_lowercase();
        let receiver = self.end(ends, "recv", &channel, bytes)?;
        let sender = self.end(ends, "send", &channel, bytes)?;
        let got: Measured = crate::lab::measured(receiver)?;
        crate::lab::measured(sender)?;
        ensure!(
            got.transport.as_deref() == Some(ends.transport()),
            "{ends:?} ran over {:?}",
            got.transport
        );
        Ok(got.bytes as f64 / got.seconds / 1e9)
    }

    /// `python -m thumbnails.run ARGS` in the lab's cgroup: its JSON line.
    fn thumbnails(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "thumbnails.run"])
            .args(args)
            .current_dir(root().join("examples/python"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.lab.cgroup.spawn_inside(&mut cmd);
        let out = cmd.output().context("running the thumbnails pipeline")?;
        if !out.status.success() {
            bail!(
                "thumbnails.run {}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(last).with_context(|| format!("thumbnails.run said {text:?}"))
    }
}

/// What the pipeline measured at one input size.
struct PipelineRow {
    input: u64,
    frames: u64,
    floki: Vec<f64>,
    s3: Vec<f64>,
    /// Bytes s3s-fs wrote to disk per run.
    s3_disk: Vec<u64>,
    /// Bytes the agent wrote to disk per run.
    floki_disk: Vec<u64>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let quick;
    let opts = if opts.quick {
        quick = Options {
            size: "256MiB".into(),
            runs: 1,
            pipeline: vec!["64MiB".into()],
            pipeline_runs: 1,
            python: opts.python.clone(),
            no_write: true,
            quick: true,
        };
        &quick
    } else {
        opts
    };
    let binaries = Binaries::beside_me()?;
    let lab = Lab::start(&binaries, "bench-python", false)?;
    let python = opts
        .python
        .clone()
        .unwrap_or_else(|| root().join("target/venv/bin/python"));
    ensure!(
        python.exists(),
        "{} missing: `cargo xtask bench python` makes the environment and installs the wheel",
        python.display()
    );
    let bench = Bench { lab, python };
    let bytes = parse_size(&opts.size)?;
    let streams = streams(&bench, bytes, opts.runs)?;
    let pipeline = pipeline(&bench, opts)?;
    let (markdown, data) = report_of(&streams, &pipeline, bytes, opts);
    println!("{markdown}");
    if opts.no_write {
        return Ok(());
    }
    plot(&pipeline)?;
    report::write_section("python", &markdown, &data)
}

/// GB/s per (ends, run), runs interleaved and rotated.
fn streams(bench: &Bench, bytes: u64, runs: usize) -> anyhow::Result<Vec<(Ends, Vec<f64>)>> {
    let mut results: Vec<(Ends, Vec<f64>)> = Ends::ALL.iter().map(|e| (*e, Vec::new())).collect();
    // Warm the memory and the page tables first; not recorded.
    for ends in Ends::ALL {
        bench.stream(ends, bytes.min(256 << 20), 1000)?;
    }
    for run in 0..runs {
        eprintln!(
            "floki-lab: bench python, streams, run {} of {runs}",
            run + 1
        );
        for i in 0..Ends::ALL.len() {
            let ends = Ends::ALL[(i + run) % Ends::ALL.len()];
            let rate = bench.stream(ends, bytes, run)?;
            results
                .iter_mut()
                .find(|(e, _)| *e == ends)
                .expect("every ends")
                .1
                .push(rate);
        }
    }
    Ok(results)
}

fn pipeline(bench: &Bench, opts: &Options) -> anyhow::Result<Vec<PipelineRow>> {
    let work = std::env::temp_dir().join(format!("floki-bench-python-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let s3_root = PathBuf::from("/var/tmp").join(format!("floki-s3-{}", std::process::id()));
    let s3 = Server::s3s_fs(&Place::Host(&bench.lab.cgroup), &s3_root)?;
    let floki_tests::servers::S3Endpoint {
        url: endpoint,
        bucket,
        key,
        secret,
    } = s3.s3_endpoint("host");
    let node = bench.lab.agent.status()["node"]
        .as_str()
        .unwrap_or("test-node")
        .to_owned();
    let spec = bench.thumbnails_spec(&node)?;
    let token = bench
        .lab
        .agent
        .apply(&spec)
        .map_err(|err| anyhow::anyhow!("applying the thumbnails workflow: {err}"))?;
    let socket = bench.lab.socket_addr();
    let mut rows = Vec::new();
    let sizes: Vec<u64> = opts
        .pipeline
        .iter()
        .map(|s| parse_size(s))
        .collect::<anyhow::Result<_>>()?;
    for (i, input) in sizes.iter().copied().enumerate() {
        let video = work.join(format!("video-{input}.raw"));
        let made = bench.thumbnails(&[
            "input",
            "--bytes",
            &input.to_string(),
            "--out",
            path(&video),
        ])?;
        let frames = made["frames"].as_u64().unwrap_or(0);
        let mut row = PipelineRow {
            input: made["bytes"].as_u64().unwrap_or(input),
            frames,
            floki: Vec::new(),
            s3: Vec::new(),
            s3_disk: Vec::new(),
            floki_disk: Vec::new(),
        };
        // The first size once through each, untimed: warm caches and pages.
        let runs = opts.pipeline_runs + usize::from(i == 0);
        for run in 0..runs {
            eprintln!(
                "floki-lab: bench python, pipeline {}, run {} of {runs}",
                human(input),
                run + 1
            );
            let floki_out = work.join("sheet-floki.raw");
            let s3_out = work.join("sheet-s3.raw");
            let agent_written = written(bench.lab.agent.pid());
            let floki = bench.thumbnails(&[
                "floki",
                "--agent",
                &socket,
                "--token",
                &token,
                "--input",
                path(&video),
                "--output",
                path(&floki_out),
            ])?;
            let agent_written = written(bench.lab.agent.pid()) - agent_written;
            clear_bucket(&s3_root.join(&bucket))?;
            let s3_written = written(s3.pid);
            let over_s3 = bench.thumbnails(&[
                "s3",
                "--endpoint",
                &endpoint,
                "--bucket",
                &bucket,
                "--access-key",
                &key,
                "--secret-key",
                &secret,
                "--input",
                path(&video),
                "--output",
                path(&s3_out),
            ])?;
            let s3_written = written(s3.pid) - s3_written;
            ensure!(
                std::fs::read(&floki_out)? == std::fs::read(&s3_out)?,
                "the pipeline's output through Floki differs from its output through S3"
            );
            if i == 0 && run == 0 {
                continue;
            }
            row.floki
                .push(floki["seconds"].as_f64().unwrap_or(f64::NAN));
            row.s3.push(over_s3["seconds"].as_f64().unwrap_or(f64::NAN));
            row.s3_disk.push(s3_written);
            row.floki_disk.push(agent_written);
        }
        let _ = std::fs::remove_file(&video);
        rows.push(row);
    }
    clear_bucket(&s3_root.join(&bucket))?;
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&s3_root);
    Ok(rows)
}

impl Bench {
    fn thumbnails_spec(&self, node: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "thumbnails.run", "spec", "--node", node])
            .current_dir(root().join("examples/python"));
        let out = cmd.output().context("printing the thumbnails workflow")?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary paths")
}

/// Bytes process `pid` has written to storage (`/proc/PID/io`).
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Empties the bucket between runs (s3s-fs keeps objects as files).
fn clear_bucket(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn report_of(
    streams: &[(Ends, Vec<f64>)],
    pipeline: &[PipelineRow],
    bytes: u64,
    opts: &Options,
) -> (String, serde_json::Value) {
    let rate = |ends: Ends| {
        Spread::of(
            &streams
                .iter()
                .find(|(e, _)| *e == ends)
                .expect("measured")
                .1,
        )
    };
    let mut md = format!(
        "## Python: the floki package against the Rust client, and a Python workflow against boto3 and S3\n\n\
         Measured {} on {}.\n\
         Reproduce: `cargo xtask bench python` (as root; builds the wheel into target/venv). \
         Streams: {} runs of {} each, medians with the range; the pipeline: {} runs per input.\n\n\
         **Streams.** A Python sender and receiver (floki-py/benches/stream.py) against the Rust \
         blocking client's bench peers doing the same: 1 MiB writes from memory, the receiver reading \
         in place over shm (`read_view`, Rust: `BufRead`) and into its own 1 MiB buffer over a socket \
         (`readinto`, Rust: `read`); ends pinned to CPUs 0 and 1, runs interleaved.\n\n\
         | transport | Rust blocking client GB/s | Python GB/s | Python / Rust |\n|---|---|---|---|\n",
        report::today(),
        report::machine(),
        opts.runs,
        human(bytes),
        opts.pipeline_runs,
    );
    let mut floors = Vec::new();
    for (name, rust, py) in [
        ("shm", Ends::RustShm, Ends::PythonShm),
        ("splice", Ends::RustSplice, Ends::PythonSplice),
    ] {
        let (rust, py) = (rate(rust), rate(py));
        let ratio = py.median / rust.median;
        md.push_str(&format!(
            "| {name} | {} | {} | **{ratio:.2}x** |\n",
            rust.cell(2),
            py.cell(2)
        ));
        floors.push(format!(
            "- a Python stream over {name} at least 0.8x the Rust client's: {ratio:.2}x, {}",
            if ratio >= 0.8 { "met" } else { "NOT met" }
        ));
    }
    md.push_str(
        "\n**A Python workflow.** examples/python/thumbnails: `split` deals the frames of a raw \
         640x480 RGB video to four `shrink` functions (a shuffle edge), each makes half-size grayscale \
         thumbnails with NumPy, `assemble` gathers them back in order into one file. The same \
         functions run over Floki (every function started at once, each streaming into the next over \
         the agent's Unix socket: shared-memory rings) and over S3 with boto3 against s3s-fs \
         (`upload_fileobj` / `download_fileobj`, a stage started when the previous one has uploaded, \
         as an orchestrator runs them). Times are the whole workflow, first function started to last \
         one exited, Python start-up included; the two outputs are compared byte for byte.\n\n\
         | input | frames | Floki s | S3 (s3s-fs, boto3) s | Floki vs S3 | written to disk: the agent (its log) / s3s-fs |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in pipeline {
        let (floki, s3) = (Spread::of(&row.floki), Spread::of(&row.s3));
        let speedup = s3.median / floki.median;
        let disk = |v: &[u64]| human(v.iter().copied().max().unwrap_or(0));
        md.push_str(&format!(
            "| {} | {} | {} | {} | **{speedup:.1}x** | {} / {} |\n",
            human(row.input),
            row.frames,
            floki.cell(2),
            s3.cell(2),
            disk(&row.floki_disk),
            disk(&row.s3_disk),
        ));
    }
    if let Some(largest) = pipeline.iter().max_by_key(|row| row.input) {
        let speedup = Spread::of(&largest.s3).median / Spread::of(&largest.floki).median;
        floors.push(format!(
            "- the workflow at {} at least 10x faster end to end through Floki than through boto3 and s3s-fs: {speedup:.1}x, {}",
            human(largest.input),
            if speedup >= 10.0 { "met" } else { "NOT met" }
        ));
    }
    md.push_str(&format!(
        "\nFloors (issue 14):\n{}\n\n![The thumbnails workflow](benchmarks/python-pipeline.svg)\n",
        floors.join("\n")
    ));
    let data = json!({
        "date": report::today(),
        "machine": report::machine(),
        "streams": streams.iter().map(|(ends, v)| json!({"ends": format!("{ends:?}"), "gbps": v})).collect::<Vec<_>>(),
        "pipeline": pipeline.iter().map(|row| json!({
            "input": row.input, "frames": row.frames, "floki_s": row.floki, "s3_s": row.s3,
            "floki_disk": row.floki_disk, "s3_disk": row.s3_disk,
        })).collect::<Vec<_>>(),
    });
    (md, data)
}

/// Seconds per input, Floki and S3, log axes (docs/benchmarks, SVG and PNG).
fn plot(rows: &[PipelineRow]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    super::paper::register_font()?;
    let dir = root().join("docs/benchmarks");
    std::fs::create_dir_all(&dir)?;
    let svg = dir.join("python-pipeline.svg");
    let png = dir.join("python-pipeline.png");
    draw(SVGBackend::new(&svg, (900, 500)).into_drawing_area(), rows)?;
    draw(
        BitMapBackend::new(&png, (900, 500)).into_drawing_area(),
        rows,
    )
}

fn draw<DB: plotters::prelude::DrawingBackend>(
    area: plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    rows: &[PipelineRow],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let failed = |err: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing: {err:?}");
    area.fill(&WHITE).map_err(failed)?;
    let medians = |row: &PipelineRow| (Spread::of(&row.floki).median, Spread::of(&row.s3).median);
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|row| {
            let (floki, s3) = medians(row);
            [floki, s3]
        })
        .collect();
    let (lo, hi) = (
        all.iter().copied().fold(f64::INFINITY, f64::min) / 2.0,
        all.iter().copied().fold(0.0, f64::max) * 2.0,
    );
    let sizes: Vec<f64> = rows.iter().map(|row| row.input as f64).collect();
    let (x0, x1) = (
        sizes.first().copied().unwrap_or(1.0) / 2.0,
        sizes.last().copied().unwrap_or(2.0) * 2.0,
    );
    let mut chart = ChartBuilder::on(&area)
        .caption("thumbnails workflow, end to end", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale(), (lo..hi).log_scale())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("input")
        .y_desc("seconds")
        .x_label_formatter(&|x| human(*x as u64))
        .draw()
        .map_err(failed)?;
    for (label, color, floki) in [
        ("Floki", RGBColor(0x1b, 0x9e, 0x77), true),
        ("S3 (s3s-fs, boto3)", RGBColor(0xd9, 0x5f, 0x02), false),
    ] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|row| {
                let (f, s) = medians(row);
                (row.input as f64, if floki { f } else { s })
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(failed)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 5, color.filled())))
            .map_err(failed)?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(failed)?;
    area.present().map_err(failed)?;
    Ok(())
}
