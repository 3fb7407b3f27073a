//! What `send` and `recv` share: streaming between a file and channel ends,
//! and the function's place in a workflow.

use std::{
    fs::{self, File},
    io::{self, BufRead as _, Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use floki_client::{
    Summary, Transport,
    blocking::{Receiver, Sender},
    workflow::EdgeOptions,
};

use crate::cli::{EdgeArgs, EndArgs};

/// Read size: small enough to stay in cache between the copy out of the
/// kernel and the checksum pass over it (measured faster than 1 MiB reads).
pub const READ_CHUNK: usize = 128 << 10;
/// Write size for inputs.
pub const WRITE_CHUNK: usize = 1 << 20;

/// The workflow edge named on the command line, if any.
pub fn edge_options(
    edge: &EdgeArgs,
    end: &EndArgs,
    timeout: Option<u64>,
) -> anyhow::Result<Option<EdgeOptions>> {
    let Some(workflow) = &edge.workflow else {
        return Ok(None);
    };
    let token = edge
        .token
        .clone()
        .context("--workflow needs the workflow's token: --token or FLOKI_TOKEN (printed by `floki-agent apply`)")?;
    let mut opts = EdgeOptions::new(
        &end.agent,
        workflow,
        token,
        edge.edge.clone().unwrap_or_default(),
        edge.function.clone().unwrap_or_default(),
    );
    opts.pair_timeout = timeout.map(Duration::from_secs);
    opts.transport = end.transport;
    opts.run = end.run.clone();
    Ok(Some(opts))
}

/// Streams `input` into every sender (one for a plain channel, one per
/// consumer for a broadcast), then finishes them.
pub fn send_to_all(
    input: impl Read,
    senders: Vec<(String, Sender)>,
) -> anyhow::Result<Vec<(String, Summary)>> {
    finish_all(stream_to_all(input, senders)?)
}

/// Waits for the verdict on every stream [`stream_to_all`] ended.
pub fn finish_all(ended: Vec<(String, Sender)>) -> anyhow::Result<Vec<(String, Summary)>> {
    ended
        .into_iter()
        .map(|(peer, sender)| {
            let summary = sender
                .finish()
                .with_context(|| format!("stream to {peer}"))?;
            Ok((peer, summary))
        })
        .collect()
}

/// Streams `input` into every sender and ends their streams: the end marks
/// go out at once, so the receivers verify together while
/// [`finish_all`] waits for each verdict in turn.
pub fn stream_to_all(
    mut input: impl Read,
    senders: Vec<(String, Sender)>,
) -> anyhow::Result<Vec<(String, Sender)>> {
    let mut senders = senders;
    if senders.len() == 1 {
        // One receiver: the input is read straight into the ring, when the
        // stream goes through one.
        let (peer, mut sender) = senders.pop().expect("one sender");
        let mut input = InputOf(&mut input, None);
        if let Err(err) = sender.write_from(&mut input) {
            return match input.1 {
                Some(reason) => {
                    sender.abort(&reason);
                    bail!("{reason}; the receiver was told")
                }
                None => Err(anyhow::Error::new(err).context(format!("stream to {peer}"))),
            };
        }
        sender.end()?;
        return Ok(vec![(peer, sender)]);
    }
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                let reason = format!("reading the sender's input failed: {err}");
                for (_, sender) in senders {
                    sender.abort(&reason);
                }
                bail!("{reason}; the receivers were told");
            }
        };
        if n == 0 {
            break;
        }
        for (peer, sender) in &mut senders {
            sender
                .write_all(&buf[..n])
                .with_context(|| format!("stream to {peer}"))?;
        }
    }
    for (peer, sender) in &mut senders {
        sender.end().with_context(|| format!("stream to {peer}"))?;
    }
    Ok(senders)
}

/// Reads a channel end to its verified end into `output`.
pub fn receive_into(rx: &mut Receiver, output: &mut dyn Write) -> anyhow::Result<()> {
    if rx.transport() != Transport::Shm {
        return copy_out(rx, output);
    }
    loop {
        // Straight from the ring: no copy into a buffer of our own.
        let data = match rx.fill_buf() {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
        };
        if data.is_empty() {
            break;
        }
        let n = data.len();
        output
            .write_all(data)
            .context("writing the received stream to the output")?;
        rx.consume(n);
    }
    output
        .flush()
        .context("writing the received stream to the output")
}

/// Receives from a socket through a buffer of [`READ_CHUNK`] bytes.
fn copy_out(rx: &mut Receiver, output: &mut dyn Write) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match rx.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err.into()),
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
        .context("writing the received stream to the output")
}

/// A sender's input that remembers why it failed, to tell its failure
/// from the stream's.
struct InputOf<'a, R>(&'a mut R, Option<String>);

impl<R: Read> Read for InputOf<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).inspect_err(|err| {
            if err.kind() != io::ErrorKind::Interrupted {
                self.1 = Some(format!("reading the sender's input failed: {err}"));
            }
        })
    }
}

/// Receives into `path`, which appears only once the stream is verified.
pub fn receive_to_file(rx: Receiver, path: &Path) -> anyhow::Result<Summary> {
    let partial = partial_path(path);
    let mut rx = rx;
    let result = File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))
        .and_then(|mut file| receive_into(&mut rx, &mut file))
        .and_then(|()| Ok(rx.finish()?));
    match &result {
        Ok(_) => fs::rename(&partial, path)
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?,
        Err(_) => {
            let _ = fs::remove_file(&partial);
        }
    }
    result
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".floki-partial");
    output.with_file_name(name)
}
