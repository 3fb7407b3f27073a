//! `floki-agent`: the node agent (`run`), the function authors' CLI (`send`,
//! `recv`) and the operators' view (`status`). Thin: parsing and dispatch
//! here, the work in the library.

mod cli;
mod commands;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    commands::init_logging(&cli);
    match commands::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("floki-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
