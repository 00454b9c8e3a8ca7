//! Awaitables: a Rust future of the client as an asyncio future of the running loop.
//!
//! The Rust future is polled **on the loop thread** ([`LoopHub::start`]): its first poll
//! sends its command to the connection task right away, and every later wake-up (the
//! connection task's reply, a timer, a socket of the runtime's reactor, all with the
//! runtime entered) queues its id on the loop's hub, whose next drain polls it again. When
//! it ends, with Rust data (`Result<(), Error>`), the drain sets the asyncio future's
//! result or builds the exception ([`crate::errors`]) and sets it, on the loop thread. No
//! runtime thread touches Python, and there is no hop through a spawned task.
//!
//! Cancelling the asyncio future forgets the id and drops the Rust future (its done
//! callback, [`OnDone`]), which cancels it, so a cancelled call leaves nothing behind.

use std::future::Future;

use pyo3::prelude::*;
use supa_realtime::Error;

use crate::classes;
use crate::hub::{resolve, LoopHub};

/// Run `fut` as an awaitable of the running loop.
pub(crate) fn awaitable<'py, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<(), Error>> + Send + 'static,
{
    let event_loop = classes::get_running_loop(py)?.call0()?;
    let hub = classes::hub_for(py)?
        .call1((&event_loop,))?
        .cast_into::<LoopHub>()?;
    let mut future = None;
    let started = hub.get().start(Box::pin(fut), || {
        let f = event_loop.call_method0("create_future")?;
        future = Some(f.clone());
        Ok(f.unbind())
    })?;
    match started {
        // Finished at the first poll (e.g. refused before anything was sent).
        Ok(result) => {
            let f = event_loop.call_method0("create_future")?;
            resolve(py, &f, result)?;
            Ok(f)
        }
        Err(id) => {
            let f = future.ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("awaitable without a future")
            })?;
            f.call_method1(
                "add_done_callback",
                (OnDone {
                    hub: hub.unbind(),
                    id,
                },),
            )?;
            Ok(f)
        }
    }
}

/// The asyncio future's done callback: forget its id (dropping, so cancelling, a Rust
/// future still running).
#[pyclass(frozen, module = "supa_realtime._native")]
pub(crate) struct OnDone {
    hub: Py<LoopHub>,
    id: u64,
}

#[pymethods]
impl OnDone {
    fn __call__(&self, _future: &Bound<'_, PyAny>) {
        self.hub.get().forget(self.id);
    }
}
