//! `gateway`: attach the data plane to a NIC, manage flows, read counters,
//! run the daemon.

use std::process::ExitCode;

use clap::Parser;
use gateway::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line naming the problem: the error chain joined by ": ".
            eprintln!("gateway: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
