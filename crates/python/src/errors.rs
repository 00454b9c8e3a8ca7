//! From the client's typed errors to Python exceptions.
//!
//! The exception classes live in `supabase_realtime/_exceptions.py` (so they can use
//! multiple inheritance, e.g. `RealtimeTimeoutError(RealtimeError, TimeoutError)`, and
//! pickle); each carries `message`, `reason` (the server's, verbatim, or `None`) and `kind`.

use pyo3::prelude::*;
use supabase_realtime::{Error, ErrorKind};

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
    let module = py.import("supabase_realtime._exceptions")?;
    module.getattr(class)?.call1((message, reason, kind))
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

/// The exception to raise for `e`.
pub(crate) fn to_pyerr(e: Error) -> PyErr {
    Python::attach(|py| match exception_value(py, &e) {
        Ok(v) => PyErr::from_value(v),
        Err(import_failed) => import_failed,
    })
}

/// Join error reasons that mean "your token or your rights" (as the client crate decides
/// for `subscribe()` errors; status events only carry the reason string).
pub(crate) fn is_auth_reason(reason: &str) -> bool {
    const MARKERS: [&str; 9] = [
        "InvalidJWTToken",
        "MalformedJWT",
        "JwtSignatureError",
        "JwtSignerError",
        "Unauthorized",
        "Token has expired",
        "not a valid JWT",
        "permission",
        "are required in JWT",
    ];
    MARKERS.iter().any(|m| reason.contains(m))
}

/// The exception value for a channel that went to `CHANNEL_ERROR` with `reason`.
pub(crate) fn channel_error_value<'py>(
    py: Python<'py>,
    reason: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let (class, kind) = if is_auth_reason(reason) {
        ("AuthorizationError", "authorization")
    } else {
        ("ChannelError", "channel_error")
    };
    new_exception(py, class, reason, Some(reason), kind)
}
