//! The loop side of an asyncio client: one [`LoopHub`] per event loop, through which the
//! Rust runtime hands work to that loop's thread.
//!
//! # Why
//!
//! A tokio worker must never take the GIL: while it waits for the interpreter it reads no
//! socket and answers no heartbeat, and the loop thread that holds the GIL is the very
//! thread that would have to let go. So the runtime side only ever produces *Rust* data
//! (events in the client's bounded queues, a finished future's `Result`) and wakes the
//! loop; the loop thread turns that data into Python objects and runs the callbacks,
//! holding the GIL it already has. One cross-thread hop per batch, none of them with the
//! GIL.
//!
//! # How
//!
//! * The wake is a byte written into a non-blocking socket pair whose reading end is
//!   registered with `loop.add_reader` (see `supa_realtime._dispatch.hub`). Writing needs no
//!   GIL and no Python; an `armed` flag keeps it to one write per drain however many events
//!   or completions arrive meanwhile. The loop's reader callback is [`LoopHub::drain`].
//! * Events: the client's event streams are polled **on the loop thread** with a
//!   [`std::task::Waker`] that writes that byte ([`crate::dispatch::LoopDelivery`]): the
//!   connection task pushes an event into a stream's bounded queue and the stream's waker
//!   wakes the loop; there is no forwarder task in between. A drain takes up to
//!   [`crate::dispatch::MAX_BATCH`] events, runs their callbacks and, if more were queued,
//!   wakes itself for the next turn of the loop (other ready handles run in between).
//!   Backpressure is the client's: events the loop has not taken stay in the stream's
//!   queue, and a full queue stops the reading of the socket (`supa_realtime::queue`).
//!   `async def` callbacks run as tasks; at most [`MAX_IN_FLIGHT`] batches with unfinished
//!   tasks are outstanding before the hub stops taking events, so a loop that falls behind
//!   slows the socket too.
//! * Awaitables ([`crate::awaitable`]): the Rust future is polled on the loop thread too
//!   (with the runtime entered); its waker queues its id here, the drain polls it again
//!   and, once it has ended with a `Result`, settles the asyncio future (building the
//!   exception, if any, on the loop thread).

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use pyo3::prelude::*;
use supa_realtime::{Error, ErrorKind};

use crate::dispatch::{log_error, LoopDelivery, MAX_BATCH};
use crate::runtime::runtime;

/// Batches with unfinished `async def` callbacks before the hub stops taking events.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Most callbacks one drain runs before the loop gets its other ready handles.
const DRAIN_BUDGET: usize = 4 * MAX_BATCH;

/// What the runtime side of a hub shares with the loop side: the wake and the completed
/// futures. Everything here is plain Rust; no method takes the GIL.
pub(crate) struct HubCore {
    wake_tx: UnixStream,
    /// The loop's end, owned here too: while any waker can still write, the pair stays
    /// open, so a late wake never writes into a closed peer (EPIPE, or SIGPIPE where
    /// Python does not ignore it).
    wake_rx: UnixStream,
    /// A wake byte is written and not yet drained.
    armed: AtomicBool,
    /// Awaitables whose Rust future was woken: polled again at the next drain.
    ready: Mutex<Vec<u64>>,
    /// Batches run whose `async def` tasks have not all finished.
    in_flight: AtomicUsize,
}

impl HubCore {
    /// Awaitable `id`'s future was woken.
    fn ready(&self, id: u64) {
        if let Ok(mut r) = self.ready.lock() {
            r.push(id);
        }
        self.wake_now();
    }

    pub(crate) fn wake_now(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            // WouldBlock means bytes are already waiting: the loop wakes anyway.
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// A batch with `async def` callbacks finished.
    pub(crate) fn release(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if before >= MAX_IN_FLIGHT {
            self.wake_now();
        }
    }
}

/// Set `fut`'s result, or the exception for the error (built here, on the loop thread),
/// unless it is done already (cancelled).
pub(crate) fn resolve(
    py: Python<'_>,
    fut: &Bound<'_, PyAny>,
    result: Result<(), Error>,
) -> PyResult<()> {
    if fut.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    match result {
        Ok(()) => fut.call_method1("set_result", (py.None(),))?,
        Err(e) => fut.call_method1("set_exception", (crate::errors::exception_value(py, &e)?,))?,
    };
    Ok(())
}

/// Poll an awaitable's future with the runtime entered (its timers and sockets register
/// with the runtime's drivers, whose threads wake `waker`). A panic becomes an error of the
/// awaitable instead of unwinding through the loop.
fn poll_task(task: &mut RustFuture, waker: &Waker) -> Poll<Result<(), Error>> {
    let _rt = runtime().enter();
    let mut cx = Context::from_waker(waker);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx))) {
        Ok(p) => p,
        Err(_) => Poll::Ready(Err(Error::new(
            ErrorKind::Protocol,
            "internal error: the operation panicked",
        ))),
    }
}

impl Wake for HubCore {
    fn wake(self: Arc<Self>) {
        self.wake_now();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_now();
    }
}

/// The waker of one awaitable's Rust future.
struct TaskWaker {
    id: u64,
    core: Arc<HubCore>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.core.ready(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.core.ready(self.id);
    }
}

/// The Rust side of an awaitable.
pub(crate) type RustFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// An awaitable not yet settled: its asyncio future, and its Rust future (out of the map
/// while it is being polled).
struct Pending {
    future: Py<PyAny>,
    task: Option<RustFuture>,
    waker: Waker,
}

/// One event loop's hub (made and registered by `supa_realtime._dispatch.hub`).
#[pyclass(frozen, module = "supa_realtime._native")]
pub(crate) struct LoopHub {
    pub(crate) core: Arc<HubCore>,
    /// Awaitables not yet settled, by id: only touched on the loop thread.
    futures: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    /// The async clients whose callbacks run on this loop.
    clients: Mutex<Vec<Weak<LoopDelivery>>>,
    /// Where the next drain starts among `clients` (fairness across clients).
    turn: AtomicUsize,
}

impl LoopHub {
    /// Poll `task` a first time, here on the loop thread (the command it sends to the
    /// connection task goes out now, with no hop through a runtime thread). Finished: its
    /// result. Else it is kept as awaitable `id` of `future`, polled again on the loop
    /// whenever it is woken; the id is returned.
    pub(crate) fn start(
        &self,
        mut task: RustFuture,
        future: impl FnOnce() -> PyResult<Py<PyAny>>,
    ) -> PyResult<Result<Result<(), Error>, u64>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            core: self.core.clone(),
        }));
        if let Poll::Ready(r) = poll_task(&mut task, &waker) {
            return Ok(Ok(r));
        }
        let future = future()?;
        if let Ok(mut f) = self.futures.lock() {
            f.insert(
                id,
                Pending {
                    future,
                    task: Some(task),
                    waker,
                },
            );
        }
        Ok(Err(id))
    }

    /// Forget awaitable `id` (its future is done: settled or cancelled); a Rust future
    /// still running is dropped, which cancels it.
    pub(crate) fn forget(&self, id: u64) -> Option<Py<PyAny>> {
        // The lock is let go before the Rust future is dropped.
        let pending = self.futures.lock().ok()?.remove(&id);
        pending.map(|p| p.future)
    }

    /// Poll the awaitables that were woken; settle the finished ones. `true` if any was
    /// polled.
    fn poll_ready(&self, py: Python<'_>) -> bool {
        let ids = match self.core.ready.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        };
        for &id in &ids {
            let taken = self.futures.lock().ok().and_then(|mut f| {
                let p = f.get_mut(&id)?;
                Some((p.task.take()?, p.waker.clone()))
            });
            // Done or cancelled already, or woken twice and polled meanwhile.
            let Some((mut task, waker)) = taken else {
                continue;
            };
            match poll_task(&mut task, &waker) {
                Poll::Ready(result) => {
                    if let Err(e) = self.settle(py, id, result) {
                        log_error(py, "supa_realtime: could not complete an awaitable", e);
                    }
                }
                Poll::Pending => {
                    if let Ok(mut f) = self.futures.lock() {
                        if let Some(p) = f.get_mut(&id) {
                            p.task = Some(task);
                        }
                    }
                }
            }
        }
        !ids.is_empty()
    }

    pub(crate) fn attach_client(&self, client: &Arc<LoopDelivery>) {
        if let Ok(mut c) = self.clients.lock() {
            c.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(client)));
            c.push(Arc::downgrade(client));
        }
        self.core.wake_now();
    }

    pub(crate) fn detach_client(&self, client: &LoopDelivery) {
        if let Ok(mut c) = self.clients.lock() {
            c.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), client));
        }
    }

    fn settle(&self, py: Python<'_>, id: u64, result: Result<(), Error>) -> PyResult<()> {
        let Some(fut) = self.forget(id) else {
            return Ok(()); // cancelled meanwhile
        };
        resolve(py, fut.bind(py), result)
    }

    /// Settle the finished awaitables, then take and run one batch of events (unless
    /// [`MAX_IN_FLIGHT`] batches still have tasks running). `true` if anything was done.
    fn round(&self, py: Python<'_>, cx: &mut Context<'_>, left: &mut usize) -> bool {
        let mut worked = self.poll_ready(py);
        if self.core.in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            return worked; // `release` wakes the hub when a slot frees
        }
        let (items, more) = self.pull(cx, (*left).min(MAX_BATCH));
        worked |= more || !items.is_empty();
        if !items.is_empty() {
            *left = left.saturating_sub(items.len());
            self.core.in_flight.fetch_add(1, Ordering::AcqRel);
            crate::dispatch::run_on_loop(py, &items, self.core.clone());
        }
        worked
    }

    /// Take up to `limit` items from the clients of this loop.
    fn pull(&self, cx: &mut Context<'_>, limit: usize) -> (Vec<crate::dispatch::Item>, bool) {
        let clients: Vec<Arc<LoopDelivery>> = match self.clients.lock() {
            Ok(mut c) => {
                c.retain(|w| w.strong_count() > 0);
                c.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return (Vec::new(), false),
        };
        let mut items = Vec::new();
        let mut more = false;
        let n = clients.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            if items.len() >= limit {
                more = true;
                break;
            }
            more |= clients[(start + k) % n].pull(cx, &mut items, limit);
        }
        (items, more)
    }
}

#[pymethods]
impl LoopHub {
    #[new]
    fn py_new() -> PyResult<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(LoopHub {
            core: Arc::new(HubCore {
                wake_tx,
                wake_rx,
                armed: AtomicBool::new(false),
                ready: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
            }),
            futures: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            clients: Mutex::new(Vec::new()),
            turn: AtomicUsize::new(0),
        })
    }

    /// The file descriptor the loop watches (`loop.add_reader`).
    fn fileno(&self) -> i32 {
        self.core.wake_rx.as_raw_fd()
    }

    /// Awaitables of this loop not yet settled (for tests: cancellation leaves none).
    #[getter]
    fn pending(&self) -> usize {
        self.futures.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// The loop's reader callback: settle finished awaitables, take batches of events and
    /// run their callbacks, until nothing is left or [`DRAIN_BUDGET`] callbacks ran (then
    /// the loop runs its other ready handles first, and this comes back).
    fn drain(&self, py: Python<'_>) {
        // One read: `armed` keeps the bytes written per drain to one, and any left make the
        // descriptor readable again, which only costs an extra, empty drain.
        let mut buf = [0u8; 64];
        let _ = (&self.core.wake_rx).read(&mut buf);
        let waker = Waker::from(self.core.clone());
        let mut cx = Context::from_waker(&waker);
        let mut left = DRAIN_BUDGET;
        // While `armed` stays set no runtime thread writes a byte: events pushed meanwhile
        // are found by the next round. Only a round that runs after clearing it and finds
        // nothing ends the drain: every stream's waker is registered then, so whatever comes
        // next writes a byte.
        let mut cleared = false;
        loop {
            let worked = self.round(py, &mut cx, &mut left);
            if left == 0 {
                self.core.armed.store(false, Ordering::Release);
                self.core.wake_now();
                return;
            }
            if worked {
                cleared = false;
            } else if cleared {
                return;
            } else {
                self.core.armed.store(false, Ordering::SeqCst);
                cleared = true;
            }
        }
    }
}
