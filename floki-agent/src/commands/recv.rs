//! `floki-agent recv CHANNEL [-o FILE]` (blocking client: plain reads and writes).

use std::{
    fs::{self, File},
    io::{self, Read as _, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use floki_agent::client::{ChannelOptions, Summary, blocking::Receiver};

use super::print_summary;
use crate::cli::RecvArgs;

/// Read size: small enough to stay in cache between the copy out of the
/// kernel and the checksum pass over it (measured faster than 1 MiB reads).
const CHUNK: usize = 128 << 10;

pub fn recv(args: RecvArgs) -> anyhow::Result<()> {
    let mut opts = ChannelOptions::new(&args.agent, &args.channel);
    opts.window = args.window.map(|size| size.0);
    opts.data_addr = args.data_addr;
    opts.pair_timeout = args.timeout.map(Duration::from_secs);

    // A file output appears under its name only once verified complete.
    let partial = args.output.as_deref().map(partial_path);
    let mut output: Box<dyn Write> = match &partial {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let result = receive(&args.channel, &opts, &mut output);
    drop(output);
    match (&result, &partial, &args.output) {
        (Ok(_), Some(partial), Some(output)) => fs::rename(partial, output)
            .with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?,
        (Err(_), Some(partial), _) => {
            let _ = fs::remove_file(partial);
        }
        _ => {}
    }
    let (summary, seconds) = result?;
    print_summary(
        "received",
        &args.channel,
        &summary,
        seconds,
        "end mark and checksum verified",
    );
    Ok(())
}

fn receive(
    channel: &str,
    opts: &ChannelOptions,
    output: &mut dyn Write,
) -> anyhow::Result<(Summary, f64)> {
    let mut rx = Receiver::connect(opts)?;
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match rx.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).with_context(|| format!("channel '{channel}'")),
        };
        if n == 0 {
            break;
        }
        output
            .write_all(&buf[..n])
            .context("writing the received stream to the output")?;
    }
    output
        .flush()
        .context("writing the received stream to the output")?;
    let summary = rx.finish()?;
    Ok((summary, started.elapsed().as_secs_f64()))
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".floki-partial");
    output.with_file_name(name)
}
