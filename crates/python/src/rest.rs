//! `rest_broadcast`: a broadcast through the REST endpoint with no client and no socket.
//!
//! A lazy client (the full `supabase` client's realtime) opens its socket only when a channel
//! is subscribed; a program that only sends on a channel it never subscribed must therefore
//! reach the server without one. The request itself is the Rust client's
//! (`supa_realtime::rest::broadcast`), the same the joined channels' `http_send` makes.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::awaitable::awaitable;
use crate::convert::payload_from_py;
use crate::errors::to_pyerr;
use crate::options::client_options;
use crate::runtime::wait;

/// What both faces take, converted while the GIL is held.
struct Request {
    url: String,
    apikey: String,
    token: Option<String>,
    name: String,
    event: String,
    payload: supa_realtime::BroadcastPayload,
    private: bool,
    options: supa_realtime::ClientOptions,
}

impl Request {
    async fn send(self) -> supa_realtime::Result<()> {
        supa_realtime::rest::broadcast(
            &self.url,
            &self.apikey,
            self.token.as_deref(),
            &self.name,
            &self.event,
            self.payload,
            self.private,
            &self.options,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)]
fn request(
    url: String,
    apikey: String,
    token: Option<String>,
    name: String,
    event: String,
    payload: &Bound<'_, PyAny>,
    private: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Request> {
    Ok(Request {
        url,
        apikey,
        token,
        name,
        event,
        payload: payload_from_py(payload)?,
        private,
        options: client_options(options)?,
    })
}

/// Broadcast `payload` as `event` on channel `name` through `url`'s REST endpoint; waits for
/// the server's 202 (the GIL released).
#[pyfunction]
#[pyo3(signature = (url, apikey, token, name, event, payload, private, options=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rest_broadcast(
    py: Python<'_>,
    url: String,
    apikey: String,
    token: Option<String>,
    name: String,
    event: String,
    payload: &Bound<'_, PyAny>,
    private: bool,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let req = request(url, apikey, token, name, event, payload, private, options)?;
    wait(py, req.send())?.map_err(to_pyerr)
}

/// [`rest_broadcast`] as an awaitable.
#[pyfunction]
#[pyo3(signature = (url, apikey, token, name, event, payload, private, options=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rest_broadcast_async<'py>(
    py: Python<'py>,
    url: String,
    apikey: String,
    token: Option<String>,
    name: String,
    event: String,
    payload: &Bound<'py, PyAny>,
    private: bool,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let req = request(url, apikey, token, name, event, payload, private, options)?;
    awaitable(py, req.send())
}
