//! The subcommands: each turns its arguments into library calls and the
//! outcome into text for humans (errors with `anyhow` context).

mod apply;
mod channel;
mod cleanup;
mod kernel;
mod recv;
mod run;
mod send;
mod status;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

/// Runs the chosen subcommand. `send` and `recv` use the blocking client;
/// the agent and `status` run on a tokio runtime.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Send(args) => send::send(args),
        Command::Recv(args) => recv::recv(args),
        Command::Run(args) => runtime()?.block_on(run::run(*args)),
        Command::Status(args) => runtime()?.block_on(status::status(args)),
        Command::Apply(args) => runtime()?.block_on(apply::apply(args)),
        Command::Delete(args) => runtime()?.block_on(apply::delete(args)),
        Command::Kernel(args) => kernel::kernel(&args),
        Command::Cleanup(args) => runtime()?.block_on(cleanup::cleanup(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| anyhow::anyhow!("cannot start the async runtime: {err}"))
}

/// Logs to stderr: `info` for the agent, `warn` for the client commands,
/// `RUST_LOG` overrides.
pub fn init_logging(cli: &Cli) {
    let default = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `1.00 GiB`-style sizes for summaries.
fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// The line `send` and `recv` print on stderr for a verified stream; `what`
/// says which (`on channel 'x'`, `to f on edge w/e`).
fn print_summary(
    verb: &str,
    what: &str,
    summary: &floki_client::Summary,
    seconds: f64,
    verified: &str,
) {
    // One write for the whole line: stderr is unbuffered, and `eprintln!`
    // writes each formatted piece on its own, so two ends sharing a
    // terminal would interleave character by character.
    let line = format!(
        "floki: {verb} {} {what} via {} in {seconds:.2} s ({}); {verified} (xxh3 {:016x})\n",
        human(summary.bytes),
        summary.transport,
        rate(summary.bytes, seconds),
        summary.checksum,
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// Throughput of `bytes` over `seconds`, in GB/s or MB/s.
fn rate(bytes: u64, seconds: f64) -> String {
    let per_second = bytes as f64 / seconds.max(1e-9);
    if per_second >= 1e9 {
        format!("{:.2} GB/s", per_second / 1e9)
    } else {
        format!("{:.1} MB/s", per_second / 1e6)
    }
}
