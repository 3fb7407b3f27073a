//! `floki-agent recv CHANNEL [-o FILE]`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use floki_agent::client::{ChannelOptions, Receiver};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{human, rate};
use crate::cli::RecvArgs;

const CHUNK: usize = 1 << 20;

pub async fn recv(args: RecvArgs) -> anyhow::Result<()> {
    let mut opts = ChannelOptions::new(&args.agent, &args.channel);
    opts.window = args.window.map(|size| size.0);
    opts.data_addr = args.data_addr;
    opts.pair_timeout = args.timeout.map(Duration::from_secs);

    // A file output appears under its name only once verified complete.
    let partial = args.output.as_deref().map(partial_path);
    let mut output: Box<dyn AsyncWrite + Unpin> = match &partial {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let result = receive(&args.channel, &opts, &mut output).await;
    drop(output);
    match (&result, &partial, &args.output) {
        (Ok(_), Some(partial), Some(output)) => std::fs::rename(partial, output)
            .with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?,
        (Err(_), Some(partial), _) => {
            let _ = std::fs::remove_file(partial);
        }
        _ => {}
    }
    let (summary, seconds) = result?;
    eprintln!(
        "floki: received {} on channel '{}' via {} in {seconds:.2} s ({}); end mark and checksum verified (xxh3 {:016x})",
        human(summary.bytes),
        args.channel,
        summary.transport,
        rate(summary.bytes, seconds),
        summary.checksum,
    );
    Ok(())
}

async fn receive(
    channel: &str,
    opts: &ChannelOptions,
    output: &mut (dyn AsyncWrite + Unpin),
) -> anyhow::Result<(floki_agent::client::Summary, f64)> {
    let mut rx = Receiver::connect(opts).await?;
    let started = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rx
            .read(&mut buf)
            .await
            .with_context(|| format!("channel '{channel}'"))?;
        if n == 0 {
            break;
        }
        output
            .write_all(&buf[..n])
            .await
            .context("writing the received stream to the output")?;
    }
    output
        .flush()
        .await
        .context("writing the received stream to the output")?;
    let summary = rx.finish().await?;
    Ok((summary, started.elapsed().as_secs_f64()))
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".floki-partial");
    output.with_file_name(name)
}
