//! `NativeChannel`: the Python handle of one `supa_realtime::RealtimeChannel`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use supa_realtime::{
    BroadcastPayload, ChannelStatus, Error, ErrorKind, PostgresChangesFilter, PostgresEvent,
    RealtimeChannel,
};

use crate::awaitable::awaitable;
use crate::convert::{from_py, payload_from_py, presences_to_py};
use crate::dispatch::{Dispatcher, Handlers};
use crate::errors::to_pyerr;
use crate::handlers::{Event, Handler, PresenceKind, Shape};
use crate::runtime::wait;

/// The forwarders of one channel, created on first registration of their kind.
#[derive(Default)]
struct Listeners {
    broadcast: Option<Handlers>,
    presence: Option<Handlers>,
    system: Option<Handlers>,
    status: Option<Handlers>,
    /// Drop reports for `on_error`.
    drops: Option<Handlers>,
}

/// The native channel. Use `supa_realtime.SyncRealtimeChannel` /
/// `AsyncRealtimeChannel`, which wrap it.
#[pyclass(frozen, module = "supa_realtime._native")]
pub(crate) struct NativeChannel {
    pub(crate) inner: RealtimeChannel,
    dispatcher: Arc<Dispatcher>,
    listeners: Mutex<Listeners>,
}

/// Subscribe (the client crate fails fast on a refused handshake or a closed client); on
/// failure optionally leave the channel so it does not keep retrying in the background.
async fn subscribe(
    channel: RealtimeChannel,
    timeout: Option<Duration>,
    leave_on_error: bool,
) -> Result<(), Error> {
    let joined = channel.subscribe();
    let r = match timeout {
        Some(t) => tokio::time::timeout(t, joined).await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "subscribing to {} timed out after {} ms",
                    channel.topic(),
                    t.as_millis()
                ),
            ))
        }),
        None => joined.await,
    };
    if r.is_err() && leave_on_error {
        let _ = channel.unsubscribe().await;
    }
    r
}

/// A broadcast: over the socket when joined (buffered while rejoining), through REST when
/// the channel was never subscribed, `NotConnected` when it was left or closed.
async fn send(
    channel: RealtimeChannel,
    event: String,
    payload: BroadcastPayload,
) -> Result<(), Error> {
    match channel.status() {
        ChannelStatus::Closed { reason } => Err(Error::new(
            ErrorKind::NotConnected,
            format!(
                "channel {} is not joined (CLOSED{}): call subscribe() first, or http_send() to send through REST",
                channel.topic(),
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        )),
        ChannelStatus::Leaving => Err(Error::new(
            ErrorKind::NotConnected,
            format!("channel {} is leaving", channel.topic()),
        )),
        _ => channel.send_broadcast(&event, payload).await,
    }
}

fn ms(timeout_ms: Option<f64>) -> Option<Duration> {
    timeout_ms.map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0))
}

impl NativeChannel {
    pub(crate) fn new(inner: RealtimeChannel, dispatcher: Arc<Dispatcher>) -> Self {
        NativeChannel {
            inner,
            dispatcher,
            listeners: Mutex::new(Listeners::default()),
        }
    }

    /// Add `handler` to the forwarder picked by `slot`, starting it with `start` if needed.
    fn add(
        &self,
        py: Python<'_>,
        handler: Handler,
        slot: fn(&mut Listeners) -> &mut Option<Handlers>,
        start: impl FnOnce(Python<'_>, &Self, Handlers) -> PyResult<()>,
    ) -> PyResult<()> {
        let handler = Arc::new(handler);
        let mut guard = self
            .listeners
            .lock()
            .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("poisoned lock"))?;
        let entry = slot(&mut guard);
        if let Some(hs) = entry.as_ref() {
            if let Ok(mut v) = hs.lock() {
                v.push(handler);
            }
            return Ok(());
        }
        let hs: Handlers = Arc::new(Mutex::new(vec![handler]));
        start(py, self, hs.clone())?;
        *entry = Some(hs);
        Ok(())
    }
}

#[pymethods]
impl NativeChannel {
    /// `realtime:<name>`.
    #[getter]
    fn topic(&self) -> &str {
        self.inner.topic()
    }

    /// `<name>`.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// `IDLE`, `JOINING`, `SUBSCRIBED`, `TIMED_OUT`, `CHANNEL_ERROR`, `LEAVING` or `CLOSED`.
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status().as_str()
    }

    /// The reason of a `CHANNEL_ERROR` or server `CLOSED` status.
    #[getter]
    fn status_reason(&self) -> Option<String> {
        self.inner.status().reason().map(str::to_owned)
    }

    /// Presence: `{key: [presence, ...]}`, each presence the tracked state plus `presence_ref`.
    fn presence_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = self.inner.presence_state();
        let d = PyDict::new(py);
        for (k, v) in &state {
            d.set_item(k, presences_to_py(py, v)?)?;
        }
        Ok(d)
    }

    fn same_as(&self, other: &NativeChannel) -> bool {
        self.inner == other.inner
    }

    #[pyo3(signature = (timeout_ms = None, leave_on_error = true))]
    fn subscribe(
        &self,
        py: Python<'_>,
        timeout_ms: Option<f64>,
        leave_on_error: bool,
    ) -> PyResult<()> {
        let fut = subscribe(self.inner.clone(), ms(timeout_ms), leave_on_error);
        wait(py, fut)?.map_err(to_pyerr)
    }

    #[pyo3(signature = (timeout_ms = None, leave_on_error = true))]
    fn subscribe_async<'py>(
        &self,
        py: Python<'py>,
        timeout_ms: Option<f64>,
        leave_on_error: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        awaitable(
            py,
            subscribe(self.inner.clone(), ms(timeout_ms), leave_on_error),
        )
    }

    fn unsubscribe(&self, py: Python<'_>) -> PyResult<()> {
        let ch = self.inner.clone();
        wait(py, async move { ch.unsubscribe().await })?.map_err(to_pyerr)
    }

    fn unsubscribe_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let ch = self.inner.clone();
        awaitable(py, async move { ch.unsubscribe().await })
    }

    fn send(&self, py: Python<'_>, event: String, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = payload_from_py(payload)?;
        wait(py, send(self.inner.clone(), event, p))?.map_err(to_pyerr)
    }

    fn send_async<'py>(
        &self,
        py: Python<'py>,
        event: String,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let p = payload_from_py(payload)?;
        awaitable(py, send(self.inner.clone(), event, p))
    }

    fn http_send(&self, py: Python<'_>, event: String, payload: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = payload_from_py(payload)?;
        let ch = self.inner.clone();
        wait(py, async move { ch.http_send(&event, p).await })?.map_err(to_pyerr)
    }

    fn http_send_async<'py>(
        &self,
        py: Python<'py>,
        event: String,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let p = payload_from_py(payload)?;
        let ch = self.inner.clone();
        awaitable(py, async move { ch.http_send(&event, p).await })
    }

    fn track(&self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let v = from_py(state)?;
        let ch = self.inner.clone();
        wait(py, async move { ch.track(v).await })?.map_err(to_pyerr)
    }

    fn track_async<'py>(
        &self,
        py: Python<'py>,
        state: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let v = from_py(state)?;
        let ch = self.inner.clone();
        awaitable(py, async move { ch.track(v).await })
    }

    fn untrack(&self, py: Python<'_>) -> PyResult<()> {
        let ch = self.inner.clone();
        wait(py, async move { ch.untrack().await })?.map_err(to_pyerr)
    }

    fn untrack_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let ch = self.inner.clone();
        awaitable(py, async move { ch.untrack().await })
    }

    /// Broadcast callback for `event` (`*` = all, case-insensitive). `official`: the callback
    /// gets `{"event", "payload", ["meta"]}`; otherwise the sender's payload (and the whole
    /// message as a second argument if `with_message`).
    #[pyo3(signature = (event, callback, official = false, with_message = false))]
    fn on_broadcast(
        &self,
        py: Python<'_>,
        event: String,
        callback: Py<PyAny>,
        official: bool,
        with_message: bool,
    ) -> PyResult<()> {
        let shape = if official {
            Shape::BroadcastOfficial { event }
        } else {
            Shape::BroadcastUser {
                event,
                with_message,
            }
        };
        self.add(
            py,
            Handler { callback, shape },
            |l| &mut l.broadcast,
            |py, me, hs| {
                let ch = me.inner.clone();
                let stream =
                    wait(py, async move { ch.broadcasts("*").await })?.map_err(to_pyerr)?;
                me.dispatcher.forward(py, stream, hs, Event::Broadcast);
                Ok(())
            },
        )
    }

    /// Presence callback. `kind`: `*`, `sync`, `join`, `leave` (dict argument), or
    /// `official_sync`, `official_join`, `official_leave` (official positional arguments).
    fn on_presence(&self, py: Python<'_>, kind: &str, callback: Py<PyAny>) -> PyResult<()> {
        let shape = match kind {
            "official_sync" => Shape::PresenceSync,
            "official_join" => Shape::PresenceJoin,
            "official_leave" => Shape::PresenceLeave,
            other => Shape::PresenceSpec {
                kind: PresenceKind::parse(other).ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "unknown presence event {other:?}: use \"sync\", \"join\", \"leave\" or \"*\""
                    ))
                })?,
            },
        };
        self.add(
            py,
            Handler { callback, shape },
            |l| &mut l.presence,
            |py, me, hs| {
                let ch = me.inner.clone();
                let stream =
                    wait(py, async move { ch.presence_events().await })?.map_err(to_pyerr)?;
                me.dispatcher.forward(py, stream, hs, Event::Presence);
                Ok(())
            },
        )
    }

    /// A `postgres_changes` binding (before subscribe) and its callback.
    #[pyo3(signature = (event, callback, schema = None, table = None, filter = None, official = false))]
    #[allow(clippy::too_many_arguments)]
    fn on_postgres_changes(
        &self,
        py: Python<'_>,
        event: &str,
        callback: Py<PyAny>,
        schema: Option<String>,
        table: Option<String>,
        filter: Option<String>,
        official: bool,
    ) -> PyResult<()> {
        let ev = match event.to_ascii_uppercase().as_str() {
            "*" => PostgresEvent::All,
            "INSERT" => PostgresEvent::Insert,
            "UPDATE" => PostgresEvent::Update,
            "DELETE" => PostgresEvent::Delete,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown postgres_changes event {other:?}: use \"*\", \"INSERT\", \"UPDATE\" or \"DELETE\""
                )))
            }
        };
        let mut f =
            PostgresChangesFilter::new(ev).schema(schema.unwrap_or_else(|| "public".into()));
        if let Some(t) = table {
            f = f.table(t);
        }
        if let Some(x) = filter {
            f = f.filter(x);
        }
        let ch = self.inner.clone();
        let stream = wait(py, async move { ch.postgres_changes(f).await })?.map_err(to_pyerr)?;
        let shape = if official {
            Shape::PostgresOfficial
        } else {
            Shape::PostgresSpec
        };
        let hs: Handlers = Arc::new(Mutex::new(vec![Arc::new(Handler { callback, shape })]));
        self.dispatcher.forward(py, stream, hs, Event::Postgres);
        Ok(())
    }

    /// `system` messages.
    #[pyo3(signature = (callback, official = false))]
    fn on_system(&self, py: Python<'_>, callback: Py<PyAny>, official: bool) -> PyResult<()> {
        let shape = if official {
            Shape::SystemOfficial
        } else {
            Shape::SystemSpec
        };
        self.add(
            py,
            Handler { callback, shape },
            |l| &mut l.system,
            |py, me, hs| {
                let ch = me.inner.clone();
                let stream =
                    wait(py, async move { ch.system_messages().await })?.map_err(to_pyerr)?;
                me.dispatcher.forward(py, stream, hs, Event::System);
                Ok(())
            },
        )
    }

    /// Status callback. `kind`: `subscribe` (official subscribe callback), `error`, `close`.
    #[pyo3(signature = (kind, callback, with_reason = false))]
    fn on_status(
        &self,
        py: Python<'_>,
        kind: &str,
        callback: Py<PyAny>,
        with_reason: bool,
    ) -> PyResult<()> {
        let shape = match kind {
            "subscribe" => Shape::SubscribeState,
            "error" => Shape::ChannelError,
            "close" => Shape::ChannelClose { with_reason },
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown status callback kind {other:?}"
                )))
            }
        };
        if matches!(shape, Shape::ChannelError) {
            // Reports of dropped events reach `on_error` too (from the channel's error
            // stream, which also carries the error statuses: those come from the status
            // forwarder, whose order with the other status callbacks matters).
            self.add(
                py,
                Handler {
                    callback: callback.clone_ref(py),
                    shape: shape.clone(),
                },
                |l| &mut l.drops,
                |py, me, hs| {
                    let ch = me.inner.clone();
                    let stream = wait(py, async move { ch.errors().await })?.map_err(to_pyerr)?;
                    me.dispatcher.forward(py, stream, hs, Event::Error);
                    Ok(())
                },
            )?;
        }
        self.add(
            py,
            Handler { callback, shape },
            |l| &mut l.status,
            |py, me, hs| {
                let ch = me.inner.clone();
                let stream =
                    wait(py, async move { ch.status_changes().await })?.map_err(to_pyerr)?;
                me.dispatcher.forward(py, stream, hs, Event::Status);
                Ok(())
            },
        )
    }

    /// Events of this channel dropped for callbacks that fell behind (drop policies only).
    #[getter]
    fn dropped_events(&self) -> u64 {
        self.inner.dropped_events()
    }

    fn __repr__(&self) -> String {
        format!(
            "NativeChannel(topic={:?}, status={})",
            self.inner.topic(),
            self.inner.status().as_str()
        )
    }
}
