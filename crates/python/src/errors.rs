//! From the client's typed errors to Python exceptions.
//!
//! The exception classes live in `supa_realtime/_exceptions.py` (so they can use
//! multiple inheritance, e.g. `RealtimeTimeoutError(RealtimeError, TimeoutError)`, and
//! pickle); each carries `message`, `reason` (the server's, verbatim, or `None`) and `kind`.

use pyo3::prelude::*;
use supa_realtime::{ChannelStatus, Error, ErrorKind};

/// The exception class name for an error kind.
pub(crate) fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Authorization => "AuthorizationError",
        ErrorKind::NotConnected | ErrorKind::Closed => "NotConnectedError",
        ErrorKind::Timeout => "RealtimeTimeoutError",
        ErrorKind::ChannelError => "ChannelError",
        ErrorKind::BufferFull => "BufferFullError",
        ErrorKind::InvalidInput => "InvalidInputError",
        ErrorKind::Http => "RealtimeHTTPError",
        ErrorKind::Overflow => "EventsDroppedError",
        _ => "ProtocolError",
    }
}

/// The `kind` string exposed on exceptions.
pub(crate) fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Authorization => "authorization",
        ErrorKind::NotConnected => "not_connected",
        ErrorKind::Closed => "closed",
        ErrorKind::Timeout => "timeout",
        ErrorKind::ChannelError => "channel_error",
        ErrorKind::BufferFull => "buffer_full",
        ErrorKind::InvalidInput => "invalid_input",
        ErrorKind::Http => "http",
        ErrorKind::Overflow => "overflow",
        _ => "protocol",
    }
}

/// An exception instance of `class` with message, reason and kind.
pub(crate) fn new_exception<'py>(
    py: Python<'py>,
    class: &str,
    message: &str,
    reason: Option<&str>,
    kind: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let module = crate::classes::exceptions(py)?;
    match module.getattr(class) {
        Ok(cls) => cls.call1((message, reason, kind)),
        // A class the Python package does not define (yet): its base error.
        Err(_) => module
            .getattr("RealtimeError")?
            .call1((message, reason, kind)),
    }
}

/// The exception instance for `e` (used for callbacks, which receive errors as values).
pub(crate) fn exception_value<'py>(py: Python<'py>, e: &Error) -> PyResult<Bound<'py, PyAny>> {
    new_exception(
        py,
        class_name(e.kind()),
        &match e.reason() {
            Some(r) => format!("{} (server: {r})", e.message()),
            None => e.message().to_owned(),
        },
        e.reason(),
        kind_name(e.kind()),
    )
}

/// The exception to raise for `e`, from a blocking call (the calling Python thread holds
/// the GIL already). Awaitables build theirs on the loop thread ([`crate::hub`]); no
/// runtime thread ever calls this.
pub(crate) fn to_pyerr(e: Error) -> PyErr {
    Python::attach(|py| match exception_value(py, &e) {
        Ok(v) => PyErr::from_value(v),
        Err(import_failed) => import_failed,
    })
}

/// The exception value for a channel status of `CHANNEL_ERROR` / `TIMED_OUT`: the class
/// follows the status's `ErrorKind` (e.g. `AuthorizationError` for a token/RLS refusal).
pub(crate) fn status_error_value<'py>(
    py: Python<'py>,
    status: &ChannelStatus,
) -> PyResult<Bound<'py, PyAny>> {
    match (status, status.error_kind()) {
        (ChannelStatus::ChannelError { reason, .. }, Some(kind)) => {
            new_exception(py, class_name(kind), reason, Some(reason), kind_name(kind))
        }
        (_, Some(kind)) => new_exception(
            py,
            class_name(kind),
            "the join timed out; retrying",
            None,
            kind_name(kind),
        ),
        (_, None) => Ok(py.None().into_bound(py)),
    }
}
