//! Callbacks: from the client's event streams to Python functions, in batches.
//!
//! # How events reach a callback
//!
//! 1. The client crate parses every frame in Rust and offers each event to a bounded queue
//!    per stream. By default a full queue slows the reading of the socket (nothing is lost,
//!    see `supa_realtime::queue`); a client or channel may opt into dropping (`overflow`),
//!    and every drop is then logged and reported to the channel's `on_error`.
//! 2. One *forwarder* task per (channel, kind of event) drains its stream with
//!    `recv_many`, matches the events against the handlers registered for it
//!    ([`crate::handlers`]) and sends the resulting items, as one batch, into the client's
//!    dispatch queue. That queue is bounded: a slow Python side makes the forwarder wait, so
//!    its stream fills and the socket slows down (1.).
//! 3. One *dispatcher thread* per client waits for a batch without holding the GIL, drains
//!    what else is queued (up to [`MAX_BATCH`] items), then attaches to Python **once**,
//!    converts every event into Python objects ([`crate::args`]) and either runs the
//!    callbacks right there (sync client) or hands the whole batch to the event loop with
//!    **one** `loop.call_soon_threadsafe` (async client). The loop's queue is unbounded, so
//!    the async path holds at most [`MAX_IN_FLIGHT`] batches scheduled and not yet run: the
//!    batch's last call releases its slot, and the dispatcher waits (without the GIL) for a
//!    free slot before scheduling another. A loop that falls behind thus slows the socket
//!    like a slow sync callback does. `async def` callbacks are awaited (as tasks on the
//!    loop). An exception in a callback is logged with its traceback by the `supa_realtime`
//!    logger and delivery continues.
//!
//! Only the dispatcher thread (and the logging thread, [`crate::logging`]) attach to Python;
//! tokio's worker threads never do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use supa_realtime::{ClientEvent, EventStream};
use tokio::sync::mpsc;

use crate::classes;
use crate::handlers::{Event, Handler, Shape};
use crate::runtime::runtime;

/// Most items handed to Python in one attach.
pub(crate) const MAX_BATCH: usize = 1024;
/// Most events a forwarder takes from its stream at once.
const FORWARD_BATCH: usize = 256;
/// Batches the dispatch queue holds before forwarders wait.
const DISPATCH_QUEUE: usize = 64;
/// Batches scheduled on an event loop and not yet run.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Slots of batches scheduled on the loop (async clients).
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    freed: Condvar,
}

impl InFlight {
    /// Wait for a free slot; `false` if `stopped` was set meanwhile.
    fn acquire(&self, stopped: &AtomicBool) -> bool {
        let Ok(mut n) = self.count.lock() else {
            return false;
        };
        while *n >= MAX_IN_FLIGHT {
            if stopped.load(Ordering::SeqCst) {
                return false;
            }
            n = match self.freed.wait_timeout(n, Duration::from_millis(100)) {
                Ok((g, _)) => g,
                Err(_) => return false,
            };
        }
        *n += 1;
        true
    }

    fn release(&self) {
        if let Ok(mut n) = self.count.lock() {
            *n = n.saturating_sub(1);
            self.freed.notify_one();
        }
    }
}

/// Handed to the loop with each batch; calling it (or dropping it) frees the batch's slot.
#[pyclass(module = "supa_realtime._native")]
pub(crate) struct BatchDone {
    slot: Option<Arc<InFlight>>,
}

#[pymethods]
impl BatchDone {
    fn __call__(&mut self) {
        if let Some(s) = self.slot.take() {
            s.release();
        }
    }
}

impl Drop for BatchDone {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            s.release();
        }
    }
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
            .spawn(move || dispatch_loop(rx, &m, &s, &Arc::new(InFlight::default())))
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

fn dispatch_loop(
    mut rx: mpsc::Receiver<Vec<Item>>,
    mode: &Mode,
    stopped: &AtomicBool,
    in_flight: &Arc<InFlight>,
) {
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
        let slot = match mode {
            Mode::Sync => None,
            Mode::Async(_) => {
                if !in_flight.acquire(stopped) {
                    continue;
                }
                Some(in_flight.clone())
            }
        };
        Python::attach(|py| {
            // Checked again attached: `stop` runs at interpreter exit, holding the GIL.
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = deliver(py, mode, &items, slot) {
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

/// Convert a batch and run it (sync) or schedule it on the loop (async) with `slot`, which
/// the batch frees when it has run.
fn deliver(
    py: Python<'_>,
    mode: &Mode,
    items: &[Item],
    slot: Option<Arc<InFlight>>,
) -> PyResult<()> {
    // Freed on every early return too (its Drop).
    let done = Py::new(py, BatchDone { slot })?;
    let batch = PyList::empty(py);
    for item in items {
        match item.handler.args(py, &item.event) {
            Ok(args) => batch.append((item.handler.callback.clone_ref(py), args))?,
            Err(e) => log_error(py, "supa_realtime: could not convert an event", e),
        }
    }
    let event_loop = match mode {
        Mode::Sync => None,
        Mode::Async(l) => l
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|l| l.clone_ref(py))),
    };
    match event_loop {
        None => {
            classes::run_batch(py)?.call1((batch,))?;
        }
        Some(l) => {
            let run = classes::run_batch_async(py)?;
            if let Err(e) = l
                .bind(py)
                .call_method1("call_soon_threadsafe", (run, batch, done))
            {
                // The loop is closed: nobody is left to receive these events.
                tracing::warn!(
                    "event loop closed, {} callback(s) not run: {e}",
                    items.len()
                );
            }
        }
    }
    Ok(())
}

/// Log `e` through Python's `logging` (`supa_realtime` logger) with its traceback.
pub(crate) fn log_error(py: Python<'_>, what: &str, e: PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = classes::logger(py)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", e.value(py))?;
        logger.call_method("error", (what,), Some(&kwargs))?;
        Ok(())
    })();
    if logged.is_err() {
        e.print(py);
    }
}
