//! `supa-realtime-server`: the command line (see `supa_realtime_server::cli`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let status = supa_realtime_server::cli::run(std::env::args_os());
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
