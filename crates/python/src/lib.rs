//! `supa_realtime._native`: the compiled core of the `supa_realtime` Python package.
//!
//! The package's public classes are thin Python wrappers (python/supa_realtime) over
//! [`client::NativeClient`] and [`channel::NativeChannel`], which drive the Rust client
//! crate `supa-realtime` on one lazy global tokio runtime ([`runtime`]).
//!
//! # Implementation
//!
//! * **GIL**: released around every wait on Rust ([`runtime::wait`], which also wakes every
//!   100 ms to run Python's signal handlers so Ctrl-C interrupts a blocking call).
//! * **No GIL on the runtime**: tokio's worker threads never attach to Python. What they
//!   produce (events, results of futures) is Rust data handed to a Python thread: the
//!   event loop's, woken through its [`hub`], or a sync client's callback thread.
//! * **Awaitables**: the `_async` methods return asyncio futures of the caller's loop
//!   ([`awaitable`]) whose Rust futures are polled and settled on the loop thread;
//!   cancelling one drops (cancels) the Rust future.
//! * **Callbacks**: see [`dispatch`]: JSON is parsed in Rust; events reach Python in
//!   batches, taken and run on the event loop (async) or on a callback thread attached
//!   once per batch (sync).
//! * **Logs**: `tracing` events of the Rust side reach Python's `logging` (logger
//!   `supa_realtime` and its children), see [`logging`].
//! * **Errors**: [`errors`] maps the client's `ErrorKind` to exception classes
//!   (`AuthorizationError`, `NotConnectedError`, ...) that carry the server's reason.

// A cdylib with no Rust API: its docs are for the people working on it, rendered with
// `cargo doc --document-private-items`, so they link to private items.
#![allow(rustdoc::private_intra_doc_links)]

use pyo3::prelude::*;

mod args;
mod awaitable;
mod callback_thread;
mod channel;
mod classes;
mod client;
mod convert;
mod dispatch;
mod errors;
mod handlers;
mod hub;
mod logging;
mod options;
mod rest;
mod runtime;
mod server;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logging::init(m.py())?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<channel::NativeChannel>()?;
    m.add_class::<hub::LoopHub>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(server::server_main, m)?)?;
    m.add_function(wrap_pyfunction!(rest::rest_broadcast, m)?)?;
    m.add_function(wrap_pyfunction!(rest::rest_broadcast_async, m)?)?;
    Ok(())
}
