//! `NativeClient`: the Python handle of one `supa_realtime::RealtimeClient`.
//!
//! Every method comes in a blocking form (waits on this thread with the GIL released,
//! waking every 100 ms for Ctrl-C) and, where it waits on the server, an `_async` form that
//! returns an awaitable resolved on the running event loop.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use supa_realtime::{ConnectionState, Error, RealtimeClient};

use crate::awaitable::awaitable;
use crate::channel::NativeChannel;
use crate::dispatch::{set_open, Dispatcher, SharedClientHandlers};
use crate::errors::to_pyerr;
use crate::handlers::{Handler, Shape};
use crate::options::{channel_config, client_options};
use crate::runtime::{runtime, wait};

/// Open (or reopen after `close()`) and wait until the socket is open; fails with the next
/// failed attempt's error.
async fn connect(client: RealtimeClient, timeout: Option<Duration>) -> Result<(), Error> {
    let fut = async {
        if matches!(client.connection_state(), ConnectionState::Closed { .. }) {
            client.reconnect().await
        } else {
            client.wait_open().await
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            Err(Error::new(
                supa_realtime::ErrorKind::Timeout,
                "connecting timed out",
            ))
        }),
        None => fut.await,
    }
}

/// The native client. Use `supa_realtime.SyncRealtimeClient` /
/// `AsyncRealtimeClient`, which wrap it.
#[pyclass(frozen, module = "supa_realtime._native")]
pub(crate) struct NativeClient {
    pub(crate) inner: RealtimeClient,
    pub(crate) dispatcher: Arc<Dispatcher>,
    client_handlers: SharedClientHandlers,
}

impl NativeClient {
    fn add_client_handler(&self, py: Python<'_>, shape: Shape, callback: Py<PyAny>) {
        self.dispatcher
            .add_client_handler(py, &self.client_handlers, Handler { callback, shape });
    }

    fn wrap(&self, ch: supa_realtime::RealtimeChannel) -> NativeChannel {
        NativeChannel::new(ch, self.dispatcher.clone())
    }
}

#[pymethods]
impl NativeClient {
    /// Create a client and start connecting in the background. `options` is a normalised
    /// dict (see `options.rs`); `is_async` selects where callbacks run.
    #[new]
    #[pyo3(signature = (url, key, options = None, is_async = false))]
    fn py_new(
        py: Python<'_>,
        url: &str,
        key: &str,
        options: Option<Bound<'_, PyDict>>,
        is_async: bool,
    ) -> PyResult<Self> {
        let opts = client_options(options.as_ref())?;
        crate::logging::refresh_level(py);
        let _guard = runtime().enter();
        let inner = RealtimeClient::new(url, key, opts).map_err(to_pyerr)?;
        // Listen to socket events from the start, so `on_open` knows whether it is open.
        let c = inner.clone();
        let events = wait(py, async move { c.events().await })?.map_err(to_pyerr)?;
        // A round trip through the connection task (commands are handled in order): after
        // it the event stream is registered, so the state says whether an `Open` went out
        // before it.
        let c = inner.clone();
        wait(py, async move { c.channels().await })?.map_err(to_pyerr)?;
        let dispatcher = Arc::new(Dispatcher::start(is_async)?);
        let client_handlers = SharedClientHandlers::default();
        set_open(&client_handlers, inner.is_connected());
        dispatcher.forward_client(py, events, client_handlers.clone());
        Ok(NativeClient {
            inner,
            dispatcher,
            client_handlers,
        })
    }

    /// Remember the event loop async callbacks run on.
    fn set_loop(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        self.dispatcher.set_loop(py, event_loop)
    }

    /// A channel (the existing one if the client already has this topic).
    #[pyo3(signature = (topic, config = None))]
    fn channel(
        &self,
        py: Python<'_>,
        topic: String,
        config: Option<Bound<'_, PyDict>>,
    ) -> PyResult<NativeChannel> {
        let cfg = channel_config(config.as_ref())?;
        let client = self.inner.clone();
        let ch = wait(py, async move { client.channel(&topic, cfg).await })?.map_err(to_pyerr)?;
        Ok(self.wrap(ch))
    }

    /// The topics of every channel of the client.
    fn topics(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let client = self.inner.clone();
        let chans = wait(py, async move { client.channels().await })?.map_err(to_pyerr)?;
        Ok(chans.iter().map(|c| c.topic().to_owned()).collect())
    }

    fn remove_channel(&self, py: Python<'_>, channel: &NativeChannel) -> PyResult<()> {
        let (client, ch) = (self.inner.clone(), channel.inner.clone());
        wait(py, async move { client.remove_channel(&ch).await })?.map_err(to_pyerr)
    }

    fn remove_channel_async<'py>(
        &self,
        py: Python<'py>,
        channel: &NativeChannel,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (client, ch) = (self.inner.clone(), channel.inner.clone());
        awaitable(py, async move { client.remove_channel(&ch).await })
    }

    fn remove_all_channels(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.inner.clone();
        wait(py, async move { client.remove_all_channels().await })?.map_err(to_pyerr)
    }

    fn remove_all_channels_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        awaitable(py, async move { client.remove_all_channels().await })
    }

    /// Wait until the socket is open (reopening it after `close()`); `timeout_ms` bounds the wait.
    #[pyo3(signature = (timeout_ms = None))]
    fn connect(&self, py: Python<'_>, timeout_ms: Option<f64>) -> PyResult<()> {
        let t = timeout_ms.map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0));
        wait(py, connect(self.inner.clone(), t))?.map_err(to_pyerr)
    }

    #[pyo3(signature = (timeout_ms = None))]
    fn connect_async<'py>(
        &self,
        py: Python<'py>,
        timeout_ms: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = timeout_ms.map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0));
        awaitable(py, connect(self.inner.clone(), t))
    }

    /// Close the socket (code 1000) and stop reconnecting; channels are kept.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.inner.clone();
        wait(py, async move { client.disconnect().await })
    }

    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        awaitable(py, async move {
            client.disconnect().await;
            Ok(())
        })
    }

    /// Close for good: disconnect and stop calling Python.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.dispatcher.stop();
        let client = self.inner.clone();
        wait(py, async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        })
    }

    #[pyo3(signature = (token))]
    fn set_auth(&self, py: Python<'_>, token: Option<String>) -> PyResult<()> {
        let client = self.inner.clone();
        wait(py, async move { client.set_auth(token).await })?.map_err(to_pyerr)
    }

    #[pyo3(signature = (token))]
    fn set_auth_async<'py>(
        &self,
        py: Python<'py>,
        token: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        awaitable(py, async move { client.set_auth(token).await })
    }

    fn on_open(&self, py: Python<'_>, callback: Py<PyAny>) {
        self.add_client_handler(py, Shape::ClientOpen, callback)
    }

    #[pyo3(signature = (callback, nargs = 0))]
    fn on_close(&self, py: Python<'_>, callback: Py<PyAny>, nargs: u8) {
        self.add_client_handler(py, Shape::ClientClose { nargs }, callback)
    }

    fn on_error(&self, py: Python<'_>, callback: Py<PyAny>) {
        self.add_client_handler(py, Shape::ClientError, callback)
    }

    /// `connecting`, `open`, `reconnecting` or `closed`.
    fn connection_state(&self) -> &'static str {
        match self.inner.connection_state() {
            ConnectionState::Connecting { .. } => "connecting",
            ConnectionState::Open => "open",
            ConnectionState::Reconnecting { .. } => "reconnecting",
            ConnectionState::Closed { .. } => "closed",
        }
    }

    /// Events this client dropped for callbacks that fell behind (drop policies only).
    #[getter]
    fn dropped_events(&self) -> u64 {
        self.inner.dropped_events()
    }

    #[getter]
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    #[getter]
    fn access_token(&self) -> Option<String> {
        self.inner.access_token()
    }

    /// Round trip of the last answered heartbeat, in seconds.
    #[getter]
    fn heartbeat_latency(&self) -> Option<f64> {
        self.inner.heartbeat_latency().map(|d| d.as_secs_f64())
    }
}
