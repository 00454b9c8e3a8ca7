//! Callbacks: from the client's event streams to Python functions, in batches.
//!
//! # How events reach a callback
//!
//! 1. The client crate parses every frame in Rust and offers each event to a bounded queue
//!    per stream (it never waits for a consumer; when a queue is full newer events are
//!    dropped for that consumer and counted, see `supa_realtime::events`).
//! 2. One *forwarder* task per (channel, kind of event) drains its stream with
//!    `recv_many`, matches the events against the handlers registered for it and sends the
//!    resulting items, as one batch, into the client's dispatch queue (bounded: a slow
//!    Python side makes the forwarder wait, so its stream fills and the drop policy of 1.
//!    applies; the socket is never held up).
//! 3. One *dispatcher thread* per client waits for a batch without holding the GIL, drains
//!    what else is queued (up to [`MAX_BATCH`] items), then attaches to Python **once**,
//!    converts every event into Python objects and either runs the callbacks right there
//!    (sync client) or hands the whole batch to the event loop with **one**
//!    `loop.call_soon_threadsafe` (async client). `async def` callbacks are awaited (as
//!    tasks on the loop). An exception in a callback is logged with its traceback by the
//!    `supa_realtime` logger and delivery continues.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use supa_realtime::{
    BroadcastMessage, ChannelStatus, ClientEvent, EventStream, PostgresChange, PresenceEvent,
    SystemMessage,
};
use tokio::sync::mpsc;

use crate::convert::{map_to_py, payload_to_py, presences_to_py, to_py};
use crate::errors::{exception_value, status_error_value};
use crate::runtime::runtime;

/// Most items handed to Python in one attach.
pub(crate) const MAX_BATCH: usize = 1024;
/// Most events a forwarder takes from its stream at once.
const FORWARD_BATCH: usize = 256;
/// Batches the dispatch queue holds before forwarders wait.
const DISPATCH_QUEUE: usize = 64;

/// Which presence events a spec-style handler wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PresenceKind {
    All,
    Sync,
    Join,
    Leave,
}

impl PresenceKind {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "*" => Some(PresenceKind::All),
            "sync" => Some(PresenceKind::Sync),
            "join" => Some(PresenceKind::Join),
            "leave" => Some(PresenceKind::Leave),
            _ => None,
        }
    }
}

/// What a handler wants and the arguments its callback receives.
#[derive(Debug, Clone)]
pub(crate) enum Shape {
    /// `on("broadcast", {"event": e}, cb)`: `cb(payload)` with the sender's payload, or
    /// `cb(payload, message)` when the callback takes two arguments.
    BroadcastUser { event: String, with_message: bool },
    /// `on_broadcast(e, cb)`: `cb({"event", "payload", ["meta"]})` (official shape).
    BroadcastOfficial { event: String },
    /// `on("presence", {"event": e}, cb)`: `cb(dict)` (see the package docs).
    PresenceSpec { kind: PresenceKind },
    /// `on_presence_sync(cb)`: `cb()`.
    PresenceSync,
    /// `on_presence_join(cb)`: `cb(key, current_presences, new_presences)`.
    PresenceJoin,
    /// `on_presence_leave(cb)`: `cb(key, current_presences, left_presences)`.
    PresenceLeave,
    /// `on("postgres_changes", ..)`: `cb({schema, table, commit_timestamp, eventType, new, old, errors})`.
    PostgresSpec,
    /// `on_postgres_changes(..)`: `cb({"data": {..., "type", "record", "old_record", "columns"}, "ids"})`.
    PostgresOfficial,
    /// `on("system", {}, cb)`: `cb({"extension", "status", "message", "channel"})`.
    SystemSpec,
    /// `on_system(cb)`: `cb(SystemPayload)` with attributes as the official package.
    SystemOfficial,
    /// `subscribe(callback)`: `cb(RealtimeSubscribeStates, Exception | None)` on every
    /// SUBSCRIBED / TIMED_OUT / CLOSED / CHANNEL_ERROR.
    SubscribeState,
    /// `channel.on_error(cb)`: `cb(exception)` on CHANNEL_ERROR and TIMED_OUT.
    ChannelError,
    /// `channel.on_close(cb)`: `cb()` (or `cb(reason)`) on CLOSED.
    ChannelClose { with_reason: bool },
    /// `realtime.on_open(cb)`: `cb()`.
    ClientOpen,
    /// `realtime.on_close(cb)`: `cb()`, `cb(reason)` or `cb(code, reason)` by arity.
    ClientClose { nargs: u8 },
    /// `realtime.on_error(cb)`: `cb(exception)`.
    ClientError,
}

/// A registered callback.
#[derive(Debug)]
pub(crate) struct Handler {
    pub(crate) callback: Py<PyAny>,
    pub(crate) shape: Shape,
}

/// An event as forwarded to Python.
#[derive(Debug)]
pub(crate) enum Event {
    Broadcast(BroadcastMessage),
    /// A presence event; `Sync` carries the state at that sync.
    Presence(PresenceEvent),
    Postgres(PostgresChange),
    System(SystemMessage),
    Status(ChannelStatus),
    Client(ClientEvent),
}

impl Handler {
    fn wants(&self, ev: &Event) -> bool {
        match (&self.shape, ev) {
            (
                Shape::BroadcastUser { event, .. } | Shape::BroadcastOfficial { event },
                Event::Broadcast(m),
            ) => m.matches(event),
            (Shape::PresenceSpec { kind }, Event::Presence(p)) => matches!(
                (kind, p),
                (PresenceKind::All, _)
                    | (PresenceKind::Sync, PresenceEvent::Sync { .. })
                    | (PresenceKind::Join, PresenceEvent::Join { .. })
                    | (PresenceKind::Leave, PresenceEvent::Leave { .. })
            ),
            (Shape::PresenceSync, Event::Presence(PresenceEvent::Sync { .. })) => true,
            (Shape::PresenceJoin, Event::Presence(PresenceEvent::Join { .. })) => true,
            (Shape::PresenceLeave, Event::Presence(PresenceEvent::Leave { .. })) => true,
            (Shape::PostgresSpec | Shape::PostgresOfficial, Event::Postgres(_)) => true,
            (Shape::SystemSpec | Shape::SystemOfficial, Event::System(_)) => true,
            (Shape::SubscribeState, Event::Status(s)) => matches!(
                s,
                ChannelStatus::Subscribed
                    | ChannelStatus::TimedOut
                    | ChannelStatus::Closed { .. }
                    | ChannelStatus::ChannelError { .. }
            ),
            (Shape::ChannelError, Event::Status(s)) => {
                matches!(
                    s,
                    ChannelStatus::TimedOut | ChannelStatus::ChannelError { .. }
                )
            }
            (Shape::ChannelClose { .. }, Event::Status(s)) => {
                matches!(s, ChannelStatus::Closed { .. })
            }
            (Shape::ClientOpen, Event::Client(ClientEvent::Open)) => true,
            (Shape::ClientClose { .. }, Event::Client(ClientEvent::Close { .. })) => true,
            (Shape::ClientError, Event::Client(ClientEvent::Error(_))) => true,
            _ => false,
        }
    }

    /// The callback's arguments for `ev`.
    fn args<'py>(&self, py: Python<'py>, ev: &Event) -> PyResult<Bound<'py, PyTuple>> {
        match (&self.shape, ev) {
            (Shape::BroadcastUser { with_message, .. }, Event::Broadcast(m)) => {
                let payload = payload_to_py(py, &m.payload)?;
                if *with_message {
                    PyTuple::new(py, [payload, broadcast_official(py, m, true)?])
                } else {
                    PyTuple::new(py, [payload])
                }
            }
            (Shape::BroadcastOfficial { .. }, Event::Broadcast(m)) => {
                PyTuple::new(py, [broadcast_official(py, m, false)?])
            }
            (Shape::PresenceSpec { .. }, Event::Presence(p)) => {
                PyTuple::new(py, [presence_spec(py, p)?])
            }
            (Shape::PresenceSync, _) => Ok(PyTuple::empty(py)),
            (Shape::PresenceJoin, Event::Presence(PresenceEvent::Join { key, current, new })) => {
                PyTuple::new(
                    py,
                    [
                        key.into_pyobject(py)?.into_any(),
                        presences_to_py(py, current)?.into_any(),
                        presences_to_py(py, new)?.into_any(),
                    ],
                )
            }
            (
                Shape::PresenceLeave,
                Event::Presence(PresenceEvent::Leave { key, current, left }),
            ) => PyTuple::new(
                py,
                [
                    key.into_pyobject(py)?.into_any(),
                    presences_to_py(py, current)?.into_any(),
                    presences_to_py(py, left)?.into_any(),
                ],
            ),
            (Shape::PostgresSpec, Event::Postgres(c)) => {
                PyTuple::new(py, [to_py(py, &c.to_json())?])
            }
            (Shape::PostgresOfficial, Event::Postgres(c)) => {
                PyTuple::new(py, [postgres_official(py, c)?])
            }
            (Shape::SystemSpec, Event::System(s)) => {
                let d = PyDict::new(py);
                d.set_item("extension", &s.extension)?;
                d.set_item("status", &s.status)?;
                d.set_item("message", &s.message)?;
                d.set_item("channel", s.channel.as_deref())?;
                PyTuple::new(py, [d])
            }
            (Shape::SystemOfficial, Event::System(s)) => {
                let cls = py
                    .import("supa_realtime._types")?
                    .getattr("SystemPayload")?;
                let v = cls.call1((
                    s.channel.as_deref().unwrap_or_default(),
                    &s.extension,
                    &s.message,
                    &s.status,
                ))?;
                PyTuple::new(py, [v])
            }
            (Shape::SubscribeState, Event::Status(s)) => {
                let cls = py
                    .import("supa_realtime._types")?
                    .getattr("RealtimeSubscribeStates")?;
                let state = cls.call1((s.as_str(),))?;
                let err = match s {
                    ChannelStatus::ChannelError { .. } => status_error_value(py, s)?,
                    _ => py.None().into_bound(py),
                };
                PyTuple::new(py, [state, err])
            }
            (Shape::ChannelError, Event::Status(s)) => {
                PyTuple::new(py, [status_error_value(py, s)?])
            }
            (
                Shape::ChannelClose { with_reason },
                Event::Status(ChannelStatus::Closed { reason }),
            ) => {
                if *with_reason {
                    PyTuple::new(py, [reason.as_deref().into_pyobject(py)?.into_any()])
                } else {
                    Ok(PyTuple::empty(py))
                }
            }
            (Shape::ClientOpen, _) => Ok(PyTuple::empty(py)),
            (Shape::ClientClose { nargs }, Event::Client(ClientEvent::Close { code, reason })) => {
                let code = code.into_pyobject(py)?.into_any();
                let reason = reason.into_pyobject(py)?.into_any();
                match nargs {
                    0 => Ok(PyTuple::empty(py)),
                    1 => PyTuple::new(py, [reason]),
                    _ => PyTuple::new(py, [code, reason]),
                }
            }
            (Shape::ClientError, Event::Client(ClientEvent::Error(e))) => {
                PyTuple::new(py, [exception_value(py, e)?])
            }
            _ => Ok(PyTuple::empty(py)),
        }
    }
}

/// `{"event", "payload", ["meta"]}` (official), plus `"type": "broadcast"` (realtime-js).
fn broadcast_official<'py>(
    py: Python<'py>,
    m: &BroadcastMessage,
    with_type: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    if with_type {
        d.set_item("type", "broadcast")?;
    }
    d.set_item("event", &m.event)?;
    d.set_item("payload", payload_to_py(py, &m.payload)?)?;
    if let Some(meta) = &m.meta {
        d.set_item("meta", to_py(py, meta)?)?;
    }
    Ok(d.into_any())
}

/// A join or leave for a spec-style presence callback: `presence` (the first presence that
/// changed), `key`, and the current and changed lists under both camelCase and snake_case names.
fn presence_change(
    py: Python<'_>,
    d: &Bound<'_, PyDict>,
    event: &str,
    key: &str,
    current: &[supa_realtime::Presence],
    changed: &[supa_realtime::Presence],
    (camel, snake): (&str, &str),
) -> PyResult<()> {
    d.set_item("event", event)?;
    d.set_item("key", key)?;
    let cur = presences_to_py(py, current)?;
    let changed_py = presences_to_py(py, changed)?;
    d.set_item(
        "presence",
        match changed.first() {
            Some(p) => map_to_py(py, p)?.into_any(),
            None => PyDict::new(py).into_any(),
        },
    )?;
    d.set_item("currentPresences", &cur)?;
    d.set_item(camel, &changed_py)?;
    d.set_item("current_presences", cur)?;
    d.set_item(snake, changed_py)?;
    Ok(())
}

/// The dict a spec-style presence callback receives.
fn presence_spec<'py>(py: Python<'py>, p: &PresenceEvent) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    match p {
        PresenceEvent::Sync { state } => {
            d.set_item("event", "sync")?;
            let presences = PyDict::new(py);
            for (k, v) in state.iter() {
                presences.set_item(k, presences_to_py(py, v)?)?;
            }
            d.set_item("presences", presences)?;
        }
        PresenceEvent::Join { key, current, new } => {
            presence_change(
                py,
                &d,
                "join",
                key,
                current,
                new,
                ("newPresences", "new_presences"),
            )?;
        }
        PresenceEvent::Leave { key, current, left } => {
            presence_change(
                py,
                &d,
                "leave",
                key,
                current,
                left,
                ("leftPresences", "left_presences"),
            )?;
        }
    }
    Ok(d.into_any())
}

/// `{"data": {schema, table, commit_timestamp, type, errors, columns, record?, old_record?}, "ids"}`.
fn postgres_official<'py>(py: Python<'py>, c: &PostgresChange) -> PyResult<Bound<'py, PyAny>> {
    let data = PyDict::new(py);
    data.set_item("schema", &c.schema)?;
    data.set_item("table", &c.table)?;
    data.set_item("commit_timestamp", c.commit_timestamp.as_deref())?;
    data.set_item("type", c.event_type.as_str())?;
    data.set_item(
        "errors",
        match &c.errors {
            Some(e) => PyList::new(py, e)?.into_any(),
            None => py.None().into_bound(py),
        },
    )?;
    let cols = PyList::empty(py);
    for (name, ty) in &c.columns {
        let col = PyDict::new(py);
        col.set_item("name", name)?;
        col.set_item("type", ty)?;
        cols.append(col)?;
    }
    data.set_item("columns", cols)?;
    use supa_realtime::PostgresEvent as E;
    if matches!(c.event_type, E::Insert | E::Update) {
        data.set_item("record", map_to_py(py, &c.new)?)?;
    }
    if matches!(c.event_type, E::Update | E::Delete) {
        data.set_item("old_record", map_to_py(py, &c.old)?)?;
    }
    let d = PyDict::new(py);
    d.set_item("data", data)?;
    d.set_item("ids", PyList::new(py, &c.ids)?)?;
    Ok(d.into_any())
}

/// One callback call: a handler and the event it gets.
pub(crate) struct Item {
    handler: Arc<Handler>,
    event: Arc<Event>,
}

/// The handlers of one forwarder; new registrations are seen from the next batch on.
pub(crate) type Handlers = Arc<Mutex<Vec<Arc<Handler>>>>;

/// The socket-level handlers of a client and whether the socket is open, as far as the
/// events forwarded so far say (both under one lock, so a new `on_open` handler is called
/// exactly once for an open socket: by the forwarder or at registration).
#[derive(Default)]
pub(crate) struct ClientHandlers {
    handlers: Vec<Arc<Handler>>,
    open: bool,
}

/// Shared [`ClientHandlers`].
pub(crate) type SharedClientHandlers = Arc<Mutex<ClientHandlers>>;

/// Record that the socket is open before the forwarder starts (its `Open` event may have
/// gone out before the event stream was registered).
pub(crate) fn set_open(shared: &SharedClientHandlers, open: bool) {
    if let Ok(mut g) = shared.lock() {
        g.open = open;
    }
}

/// Where a client's callbacks run.
pub(crate) enum Mode {
    /// On the dispatcher thread.
    Sync,
    /// On this event loop (set by the client's async methods), through
    /// `call_soon_threadsafe`.
    Async(Mutex<Option<Py<PyAny>>>),
}

/// A client's dispatch queue and thread.
pub(crate) struct Dispatcher {
    tx: mpsc::Sender<Vec<Item>>,
    pub(crate) mode: Arc<Mode>,
    stopped: Arc<AtomicBool>,
}

impl Dispatcher {
    /// Start the dispatcher thread.
    pub(crate) fn start(mode: Mode) -> PyResult<Dispatcher> {
        let (tx, rx) = mpsc::channel(DISPATCH_QUEUE);
        let mode = Arc::new(mode);
        let stopped = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stopped.clone());
        std::thread::Builder::new()
            .name("supa-realtime-callbacks".into())
            .spawn(move || dispatch_loop(rx, &m, &s))
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        Ok(Dispatcher { tx, mode, stopped })
    }

    /// Stop calling Python (interpreter shutdown, client closed for good).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Remember the event loop async callbacks run on.
    pub(crate) fn set_loop(&self, event_loop: Py<PyAny>) {
        if let Mode::Async(l) = &*self.mode {
            if let Ok(mut g) = l.lock() {
                *g = Some(event_loop);
            }
        }
    }

    /// Drain `stream` on a task of the runtime, offering each event (made by `make`) to
    /// `handlers`, and queue the matches for Python.
    pub(crate) fn forward<T, S, F>(
        &self,
        mut stream: EventStream<T, S>,
        handlers: Handlers,
        make: F,
    ) where
        T: Send + 'static,
        S: Send + 'static,
        F: Fn(T) -> Event + Send + 'static,
    {
        let tx = self.tx.clone();
        runtime().spawn(async move {
            loop {
                let batch = stream.recv_many(FORWARD_BATCH).await;
                if batch.is_empty() {
                    return;
                }
                let hs: Vec<Arc<Handler>> = match handlers.lock() {
                    Ok(g) => g.clone(),
                    Err(_) => return,
                };
                let mut items = Vec::new();
                for raw in batch {
                    let event = Arc::new(make(raw));
                    for h in &hs {
                        if h.wants(&event) {
                            items.push(Item {
                                handler: h.clone(),
                                event: event.clone(),
                            });
                        }
                    }
                }
                if !items.is_empty() && tx.send(items).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Forward socket events to `shared`'s handlers.
    pub(crate) fn forward_client(
        &self,
        mut stream: EventStream<ClientEvent, ClientEvent>,
        shared: SharedClientHandlers,
    ) {
        let tx = self.tx.clone();
        runtime().spawn(async move {
            loop {
                let batch = stream.recv_many(FORWARD_BATCH).await;
                if batch.is_empty() {
                    return;
                }
                let items = {
                    let Ok(mut g) = shared.lock() else { return };
                    let mut items = Vec::new();
                    for raw in batch {
                        match raw {
                            // Already known open (see `set_open`): this Open was seen.
                            ClientEvent::Open if g.open => continue,
                            ClientEvent::Open => g.open = true,
                            ClientEvent::Close { .. } => g.open = false,
                            _ => {}
                        }
                        let event = Arc::new(Event::Client(raw));
                        for h in &g.handlers {
                            if h.wants(&event) {
                                items.push(Item {
                                    handler: h.clone(),
                                    event: event.clone(),
                                });
                            }
                        }
                    }
                    items
                };
                if !items.is_empty() && tx.send(items).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Register a socket-level handler; an `on_open` handler registered while the socket is
    /// open is called once right away (through the same queue, so in order).
    pub(crate) fn add_client_handler(&self, shared: &SharedClientHandlers, handler: Handler) {
        let handler = Arc::new(handler);
        let Ok(mut g) = shared.lock() else { return };
        g.handlers.push(handler.clone());
        if g.open && matches!(handler.shape, Shape::ClientOpen) {
            let item = vec![Item {
                handler,
                event: Arc::new(Event::Client(ClientEvent::Open)),
            }];
            if let Err(mpsc::error::TrySendError::Full(item)) = self.tx.try_send(item) {
                let tx = self.tx.clone();
                runtime().spawn(async move {
                    let _ = tx.send(item).await;
                });
            }
        }
    }
}

fn dispatch_loop(mut rx: mpsc::Receiver<Vec<Item>>, mode: &Mode, stopped: &AtomicBool) {
    while let Some(mut items) = rx.blocking_recv() {
        while items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => items.extend(more),
                Err(_) => break,
            }
        }
        if stopped.load(Ordering::SeqCst) {
            continue;
        }
        Python::attach(|py| {
            if let Err(e) = deliver(py, mode, &items) {
                log_error(
                    py,
                    "supa_realtime: could not deliver events to callbacks",
                    e,
                );
            }
            drop(items);
        });
    }
}

/// Convert a batch and run it (sync) or schedule it on the loop (async).
fn deliver(py: Python<'_>, mode: &Mode, items: &[Item]) -> PyResult<()> {
    let batch = PyList::empty(py);
    for item in items {
        match item.handler.args(py, &item.event) {
            Ok(args) => batch.append((item.handler.callback.clone_ref(py), args))?,
            Err(e) => log_error(py, "supa_realtime: could not convert an event", e),
        }
    }
    let helpers = py.import("supa_realtime._dispatch")?;
    let event_loop = match mode {
        Mode::Sync => None,
        Mode::Async(l) => l
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|l| l.clone_ref(py))),
    };
    match event_loop {
        None => {
            helpers.getattr("run_batch")?.call1((batch,))?;
        }
        Some(l) => {
            let run = helpers.getattr("run_batch_async")?;
            if let Err(e) = l
                .bind(py)
                .call_method1("call_soon_threadsafe", (run, batch))
            {
                // The loop is closed: nobody is left to receive these events.
                tracing::debug!("event loop closed, dropping callbacks: {e}");
            }
        }
    }
    Ok(())
}

/// Log `e` through Python's `logging` (`supa_realtime` logger) with its traceback.
pub(crate) fn log_error(py: Python<'_>, what: &str, e: PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("supa_realtime",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", e.value(py))?;
        logger.call_method("error", (what,), Some(&kwargs))?;
        Ok(())
    })();
    if logged.is_err() {
        e.print(py);
    }
}
