//! The lazy global tokio runtime every client of the process runs on, and the one helper
//! through which blocking calls wait for it.
//!
//! Built on first use with two worker threads named `supa-realtime`; blocking calls run
//! their futures on it, awaitables ([`crate::awaitable`]) poll theirs on the loop thread
//! with it entered (its drivers wake them). Connection tasks keep reading,
//! heartbeating and reconnecting there while Python threads are busy. Its threads never
//! attach to Python.

use std::future::Future;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// How often a blocking wait wakes up to let Python handle signals (Ctrl-C).
const CHECK_SIGNALS_INTERVAL: Duration = Duration::from_millis(100);

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime (built on first use).
pub(crate) fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("supa-realtime")
            .enable_all()
            .build()
            // Only fails if the OS refuses threads or an epoll instance: nothing works then.
            .expect("cannot start the tokio runtime")
    })
}

/// Run `fut` on the runtime and wait for it on this thread with the GIL released, waking
/// every 100 ms to run Python's signal handlers. If one raises (KeyboardInterrupt), the
/// future is aborted and the exception propagates.
pub(crate) fn wait<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let rx = std::sync::Mutex::new(rx);
    let task = runtime().spawn(async move {
        let _ = tx.send(fut.await);
    });
    loop {
        match py.detach(|| match rx.lock() {
            Ok(rx) => rx.recv_timeout(CHECK_SIGNALS_INTERVAL),
            Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
        }) {
            Ok(v) => return Ok(v),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "the realtime runtime task ended without an answer (panic?)",
                ))
            }
        }
    }
}
