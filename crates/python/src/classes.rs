//! The Python objects the native module calls, each looked up once per process.
//!
//! They live in the package's own Python modules (`supa_realtime._types`,
//! `supa_realtime._exceptions`, `supa_realtime._dispatch`) and in `logging` and `asyncio`. Looking them up
//! on first use rather than in the module's init function keeps `_native` importable on its
//! own (the package imports `_native` while it is itself being imported); after that first
//! use every call is a pointer read, not an import.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

macro_rules! cached {
    ($(#[$doc:meta])* $name:ident, $module:literal, $attr:literal) => {
        $(#[$doc])*
        pub(crate) fn $name(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
            static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            CELL.import(py, $module, $attr)
        }
    };
}

cached!(
    /// `supa_realtime._types.SystemPayload`.
    system_payload,
    "supa_realtime._types",
    "SystemPayload"
);
cached!(
    /// `supa_realtime._types.RealtimeSubscribeStates`.
    subscribe_states,
    "supa_realtime._types",
    "RealtimeSubscribeStates"
);
cached!(
    /// `supa_realtime._dispatch.run_batch`.
    run_batch,
    "supa_realtime._dispatch",
    "run_batch"
);
cached!(
    /// `supa_realtime._dispatch.hub`: the hub of an event loop, made on first use.
    hub_for,
    "supa_realtime._dispatch",
    "hub"
);
cached!(
    /// `asyncio.get_running_loop`.
    get_running_loop,
    "asyncio",
    "get_running_loop"
);
cached!(
    /// `supa_realtime._dispatch.run_batch_async`.
    run_batch_async,
    "supa_realtime._dispatch",
    "run_batch_async"
);

/// `supa_realtime._exceptions`.
pub(crate) fn exceptions(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static CELL: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || Ok(py.import("supa_realtime._exceptions")?.unbind()))
        .map(|m| m.bind(py))
}

/// `logging.getLogger("supa_realtime")`.
pub(crate) fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CELL.get_or_try_init(py, || {
        Ok(py
            .import("logging")?
            .call_method1("getLogger", ("supa_realtime",))?
            .unbind())
    })
    .map(|l| l.bind(py))
}
