//! Callbacks: from the client's event streams to Python functions, in batches.
//!
//! # How events reach a callback
//!
//! 1. The client crate parses every frame in Rust and offers each event to a bounded queue
//!    per stream. By default a full queue slows the reading of the socket (nothing is lost,
//!    see `supa_realtime::queue`); a client or channel may opt into dropping (`overflow`),
//!    and every drop is then logged and reported to the channel's `on_error`.
//! 2. A [`Source`] per (channel, kind of event) takes events from its stream and matches
//!    them against the handlers registered for it ([`crate::handlers`]), giving
//!    [`Item`]s: a handler and the event it gets.
//! 3. Where the sources are polled and the callbacks run depends on the client:
//!    * **asyncio client**: on the event loop's thread. The sources are polled there by the
//!      loop's [`crate::hub::LoopHub`], woken by the streams themselves (a waker that
//!      writes a byte the loop watches): one cross-thread hop from the connection task to
//!      the loop, no GIL on a tokio worker, and the callbacks run on the loop straight from
//!      the queue, as the official client runs them straight from its socket.
//!    * **sync client**: on the client's *callback thread* ([`crate::callback_thread`]):
//!      with no event loop to wake, callbacks need a Python thread of their own. One
//!      forwarder task per source drains it on the runtime and sends each batch, as Rust
//!      data, into a bounded queue; the thread waits for it without the GIL, then attaches
//!      once per batch. A slow thread makes the forwarders wait, so the streams fill and the
//!      socket slows down.
//!
//!    Either way the Python objects are built ([`crate::args`]) by the thread that runs the
//!    callbacks, `async def` callbacks are awaited, and an exception in a callback is logged
//!    with its traceback by the `supa_realtime` logger while delivery continues.
//!
//! Only the loop threads, the callback threads (and the logging thread,
//! [`crate::logging`]) attach to Python; tokio's worker threads never do.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use supa_realtime::{ClientEvent, EventStream};

use crate::callback_thread::CallbackThread;
use crate::classes;
use crate::handlers::{Event, Handler, Shape};
use crate::hub::{HubCore, LoopHub};

/// Most items handed to Python in one batch.
pub(crate) const MAX_BATCH: usize = 1024;
/// Most events taken from one stream at once.
pub(crate) const SOURCE_BATCH: usize = 256;

/// One callback call: a handler and the event it gets.
pub(crate) struct Item {
    pub(crate) handler: Arc<Handler>,
    pub(crate) event: Arc<Event>,
}

/// The handlers of one source; new registrations are seen from the next batch on.
pub(crate) type Handlers = Arc<Mutex<Vec<Arc<Handler>>>>;

/// The socket-level handlers of a client and whether the socket is open, as far as the
/// events taken so far say (both under one lock, so a new `on_open` handler is called
/// exactly once for an open socket: by the source or at registration).
#[derive(Default)]
pub(crate) struct ClientHandlers {
    handlers: Vec<Arc<Handler>>,
    open: bool,
}

/// Shared [`ClientHandlers`].
pub(crate) type SharedClientHandlers = Arc<Mutex<ClientHandlers>>;

/// Record that the socket is open before the source starts (its `Open` event may have
/// gone out before the event stream was registered).
pub(crate) fn set_open(shared: &SharedClientHandlers, open: bool) {
    if let Ok(mut g) = shared.lock() {
        g.open = open;
    }
}

/// What one [`Source::pull`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pulled {
    /// Took events: more may be queued, and no wake is registered (pull again).
    More,
    /// The stream is empty; its waker is registered.
    Idle,
    /// The stream has ended.
    Ended,
}

/// Up to `limit` events of `stream` if any are queued. The `recv_many` future is polled
/// once and dropped: pending, it has taken nothing and left `cx`'s waker registered with
/// the channel (tokio's receivers are cancel-safe); ready, the queue's accounting is done
/// once for the whole batch.
fn poll_batch<T, S>(
    stream: &mut EventStream<T, S>,
    cx: &mut Context<'_>,
    limit: usize,
) -> Poll<Vec<T>> {
    std::pin::pin!(stream.recv_many(limit)).poll(cx)
}

/// A stream of events and the handlers they are offered to.
pub(crate) trait Source: Send {
    /// Take up to `limit` events, appending the handler calls they make to `out`.
    fn pull(&mut self, cx: &mut Context<'_>, out: &mut Vec<Item>, limit: usize) -> Pulled;
}

struct StreamSource<T, S, F> {
    stream: EventStream<T, S>,
    handlers: Handlers,
    make: F,
}

impl<T, S, F> Source for StreamSource<T, S, F>
where
    T: Send,
    S: Send,
    F: Fn(T) -> Event + Send,
{
    fn pull(&mut self, cx: &mut Context<'_>, out: &mut Vec<Item>, limit: usize) -> Pulled {
        let hs: Vec<Arc<Handler>> = match self.handlers.lock() {
            Ok(g) => g.clone(),
            Err(_) => return Pulled::Ended,
        };
        let batch = match poll_batch(&mut self.stream, cx, limit) {
            Poll::Pending => return Pulled::Idle,
            Poll::Ready(b) if b.is_empty() => return Pulled::Ended,
            Poll::Ready(b) => b,
        };
        for raw in batch {
            let event = Arc::new((self.make)(raw));
            for h in &hs {
                if h.wants(&event) {
                    out.push(Item {
                        handler: h.clone(),
                        event: event.clone(),
                    });
                }
            }
        }
        Pulled::More
    }
}

struct ClientSource {
    stream: EventStream<ClientEvent, ClientEvent>,
    shared: SharedClientHandlers,
}

impl Source for ClientSource {
    fn pull(&mut self, cx: &mut Context<'_>, out: &mut Vec<Item>, limit: usize) -> Pulled {
        let Ok(mut g) = self.shared.lock() else {
            return Pulled::Ended;
        };
        let batch = match poll_batch(&mut self.stream, cx, limit) {
            Poll::Pending => return Pulled::Idle,
            Poll::Ready(b) if b.is_empty() => return Pulled::Ended,
            Poll::Ready(b) => b,
        };
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
                    out.push(Item {
                        handler: h.clone(),
                        event: event.clone(),
                    });
                }
            }
        }
        Pulled::More
    }
}

/// The sources of an asyncio client, polled on its event loop by the loop's hub.
#[derive(Default)]
pub(crate) struct LoopDelivery {
    state: Mutex<LoopState>,
    stopped: AtomicBool,
}

#[derive(Default)]
struct LoopState {
    sources: Vec<Box<dyn Source>>,
    /// Items made outside a source (an `on_open` registered while open), run first.
    injected: Vec<Item>,
    /// The loop the callbacks run on, and its hub.
    event_loop: Option<Py<PyAny>>,
    hub: Option<Py<LoopHub>>,
}

impl LoopDelivery {
    /// Take up to `limit` items in all (appending to `out`); `true` if more may be queued.
    pub(crate) fn pull(&self, cx: &mut Context<'_>, out: &mut Vec<Item>, limit: usize) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        if self.stopped.load(Ordering::Acquire) {
            // Closed for good: let go of the streams (their queues stop holding the socket).
            st.sources.clear();
            st.injected.clear();
            return false;
        }
        out.append(&mut st.injected);
        let mut more = false;
        st.sources.retain_mut(|s| {
            if out.len() >= limit {
                more = true;
                return true;
            }
            match s.pull(cx, out, (limit - out.len()).min(SOURCE_BATCH)) {
                Pulled::More => {
                    more = true;
                    true
                }
                Pulled::Idle => true,
                Pulled::Ended => false,
            }
        });
        more
    }

    fn add(&self, py: Python<'_>, source: Box<dyn Source>) {
        // Polled (and its waker registered) at the hub's next drain.
        self.update_and_wake(py, |st| st.sources.push(source));
    }

    fn inject(&self, py: Python<'_>, item: Item) {
        self.update_and_wake(py, |st| st.injected.push(item));
    }

    /// Change the state, then wake the hub (outside the lock) so its next drain sees it.
    fn update_and_wake(&self, py: Python<'_>, f: impl FnOnce(&mut LoopState)) {
        let hub = match self.state.lock() {
            Ok(mut st) => {
                f(&mut st);
                st.hub.as_ref().map(|h| h.clone_ref(py))
            }
            Err(_) => None,
        };
        if let Some(h) = hub {
            h.get().core.wake_now();
        }
    }

    /// Run the callbacks on `event_loop` from now on.
    fn set_loop(self: &Arc<Self>, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let old = {
            let st = self
                .state
                .lock()
                .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("poisoned lock"))?;
            if st
                .event_loop
                .as_ref()
                .is_some_and(|l| l.bind(py).is(event_loop))
            {
                return Ok(());
            }
            st.hub.as_ref().map(|h| h.clone_ref(py))
        };
        let hub = classes::hub_for(py)?
            .call1((event_loop,))?
            .cast_into::<LoopHub>()?
            .unbind();
        if let Some(old) = old {
            old.get().detach_client(self);
        }
        if let Ok(mut st) = self.state.lock() {
            st.event_loop = Some(event_loop.clone().unbind());
            st.hub = Some(hub.clone_ref(py));
        }
        hub.get().attach_client(self);
        Ok(())
    }
}

/// Where a client's callbacks run.
pub(crate) enum Dispatcher {
    /// On the client's callback thread.
    Sync(CallbackThread),
    /// On the event loop set by the client's async methods.
    Async(Arc<LoopDelivery>),
}

impl Dispatcher {
    /// A dispatcher for a sync (a callback thread) or an asyncio client.
    pub(crate) fn start(is_async: bool) -> PyResult<Dispatcher> {
        Ok(if is_async {
            Dispatcher::Async(Arc::default())
        } else {
            Dispatcher::Sync(CallbackThread::start()?)
        })
    }

    /// Stop calling Python (interpreter shutdown, client closed for good).
    pub(crate) fn stop(&self) {
        match self {
            Dispatcher::Sync(t) => t.stop(),
            Dispatcher::Async(d) => d.stopped.store(true, Ordering::Release),
        }
    }

    /// Run async callbacks on `event_loop` from now on.
    pub(crate) fn set_loop(&self, py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        match self {
            Dispatcher::Sync(_) => Ok(()),
            Dispatcher::Async(d) => d.set_loop(py, event_loop),
        }
    }

    fn add_source(&self, py: Python<'_>, source: Box<dyn Source>) {
        match self {
            Dispatcher::Sync(t) => t.forward(source),
            Dispatcher::Async(d) => d.add(py, source),
        }
    }

    /// Offer the events of `stream` (made by `make`) to `handlers`.
    pub(crate) fn forward<T, S, F>(
        &self,
        py: Python<'_>,
        stream: EventStream<T, S>,
        handlers: Handlers,
        make: F,
    ) where
        T: Send + 'static,
        S: Send + 'static,
        F: Fn(T) -> Event + Send + 'static,
    {
        self.add_source(
            py,
            Box::new(StreamSource {
                stream,
                handlers,
                make,
            }),
        );
    }

    /// Offer socket events to `shared`'s handlers.
    pub(crate) fn forward_client(
        &self,
        py: Python<'_>,
        stream: EventStream<ClientEvent, ClientEvent>,
        shared: SharedClientHandlers,
    ) {
        self.add_source(py, Box::new(ClientSource { stream, shared }));
    }

    /// Register a socket-level handler; an `on_open` handler registered while the socket is
    /// open is called once right away (after what is already queued, so in order).
    pub(crate) fn add_client_handler(
        &self,
        py: Python<'_>,
        shared: &SharedClientHandlers,
        handler: Handler,
    ) {
        let handler = Arc::new(handler);
        let Ok(mut g) = shared.lock() else { return };
        g.handlers.push(handler.clone());
        if g.open && matches!(handler.shape, Shape::ClientOpen) {
            let item = Item {
                handler,
                event: Arc::new(Event::Client(ClientEvent::Open)),
            };
            drop(g);
            match self {
                Dispatcher::Sync(t) => t.inject(vec![item]),
                Dispatcher::Async(d) => d.inject(py, item),
            }
        }
    }
}

/// The batch as the Python side runs it: a list of `(callback, args)`; events that cannot
/// be converted are logged and skipped.
pub(crate) fn batch_list<'py>(py: Python<'py>, items: &[Item]) -> PyResult<Bound<'py, PyList>> {
    let batch = PyList::empty(py);
    for item in items {
        match item.handler.args(py, &item.event) {
            Ok(args) => batch.append((item.handler.callback.clone_ref(py), args))?,
            Err(e) => log_error(py, "supa_realtime: could not convert an event", e),
        }
    }
    Ok(batch)
}

/// Handed to `run_batch_async` with each batch run on a loop; calling it (or dropping it)
/// tells the hub the batch's `async def` callbacks have all finished.
#[pyclass(module = "supa_realtime._native")]
pub(crate) struct BatchDone {
    core: Option<Arc<HubCore>>,
}

#[pymethods]
impl BatchDone {
    fn __call__(&mut self) {
        if let Some(c) = self.core.take() {
            c.release();
        }
    }
}

impl Drop for BatchDone {
    fn drop(&mut self) {
        if let Some(c) = self.core.take() {
            c.release();
        }
    }
}

/// Run a batch on the current (loop) thread; `core`'s in-flight count, raised by the
/// caller, is released when its `async def` callbacks have finished.
pub(crate) fn run_on_loop(py: Python<'_>, items: &[Item], core: Arc<HubCore>) {
    let done = BatchDone { core: Some(core) };
    let run = (|| -> PyResult<()> {
        let batch = batch_list(py, items)?;
        let done = Py::new(py, done)?;
        classes::run_batch_async(py)?.call1((batch, done))?;
        Ok(())
    })();
    if let Err(e) = run {
        log_error(
            py,
            "supa_realtime: could not deliver events to callbacks",
            e,
        );
    }
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
