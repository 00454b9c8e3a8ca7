//! The realtime server, inside the wheel: `supa_realtime._native.server_main(argv)` is the
//! `supa-realtime-server` command line (`python -m supa_realtime.server`, the
//! `supa-realtime-server` console script, and the pytest plugin's `realtime_server` fixture
//! all run it).
//!
//! # Why linked in, not shipped as a binary
//!
//! The server crate is a library with a thin `main`; linking it into the extension module
//! gives one artifact per platform that is already abi3, built by the same `maturin build`,
//! of the same version as the client it is tested with, with nothing to find on `PATH`. A
//! shipped executable would need maturin's data-scripts layout, a second build, and a lookup
//! at run time. The cost is size: the module also carries axum and tokio-postgres.
//!
//! # Implementation
//!
//! The server runs on a runtime of its own (all cores, not the client's two workers) with the
//! GIL released for its whole life; it ends on SIGINT/SIGTERM (the server's own signal
//! handling), after which Python sees the pending KeyboardInterrupt, if any.
//!
//! The argument grammar and what each subcommand does are the server crate's
//! (`supa_realtime_server::cli`), shared with the binary.

use pyo3::prelude::*;

/// Run the server command line with `argv` (`argv[0]` is the program name); returns the
/// exit status. Usage errors, `--help` and `--version` print as the binary's do.
#[pyfunction]
pub(crate) fn server_main(py: Python<'_>, argv: Vec<String>) -> PyResult<i32> {
    // The caller may have configured `logging` after the module was imported: read the level
    // now, so the first lines (the listen address) are not filtered by the import-time level.
    crate::logging::refresh_level(py);
    // The whole command runs with the GIL released: `serve` blocks until SIGINT/SIGTERM.
    Ok(py.detach(|| supa_realtime_server::cli::run(argv)))
}
