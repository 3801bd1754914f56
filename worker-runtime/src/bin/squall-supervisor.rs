//! The supervisor sidecar of a worker pod (see `squall_runtime::cluster::supervisor`).
//! The same as `<topology binary> supervisor`, in an image that holds no user code.

use std::process::ExitCode;

use clap::Parser;
use squall_runtime::cli::{SupervisorArgs, init_logging, run_supervisor};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Squall supervisor sidecar: heartbeat, registration, stats and control for one worker"
)]
struct Args {
    #[command(flatten)]
    supervisor: SupervisorArgs,
}

fn main() -> ExitCode {
    init_logging();
    match run_supervisor(Args::parse().supervisor) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
