//! Awaitables: a Rust future of the client as an asyncio future of the running loop.
//!
//! The asyncio future is created on the loop (the caller's thread, which holds the GIL);
//! the Rust future runs on the runtime and ends with Rust data, a `Result<(), Error>`, which
//! it queues on the loop's hub by id ([`crate::hub`]). The hub's next drain, on the loop
//! thread, sets the result or builds the exception ([`crate::errors`]) and sets it. No
//! runtime thread touches Python.
//!
//! Cancelling the asyncio future aborts the Rust task (its done callback, [`OnDone`]) and
//! forgets the id, so a cancelled call leaves nothing behind on either side; a result that
//! arrives for a forgotten id is dropped.

use std::future::Future;

use pyo3::prelude::*;
use supa_realtime::Error;
use tokio::task::AbortHandle;

use crate::classes;
use crate::hub::LoopHub;
use crate::runtime::runtime;

/// Run `fut` on the runtime as an awaitable of the running loop.
pub(crate) fn awaitable<'py, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<(), Error>> + Send + 'static,
{
    let event_loop = classes::get_running_loop(py)?.call0()?;
    let hub = classes::hub_for(py)?
        .call1((&event_loop,))?
        .cast_into::<LoopHub>()?;
    let future = event_loop.call_method0("create_future")?;
    let id = hub.get().register(future.clone().unbind());
    let core = hub.get().core.clone();
    let task = runtime().spawn(async move {
        let result = fut.await;
        core.complete(id, result);
    });
    let on_done = OnDone {
        hub: hub.unbind(),
        id,
        abort: task.abort_handle(),
    };
    future.call_method1("add_done_callback", (on_done,))?;
    Ok(future)
}

/// The asyncio future's done callback: forget its id; if it was cancelled, abort the Rust
/// side.
#[pyclass(frozen, module = "supa_realtime._native")]
pub(crate) struct OnDone {
    hub: Py<LoopHub>,
    id: u64,
    abort: AbortHandle,
}

#[pymethods]
impl OnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        self.hub.get().forget(self.id);
        if future.call_method0("cancelled")?.is_truthy()? {
            self.abort.abort();
        }
        Ok(())
    }
}
