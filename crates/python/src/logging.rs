//! The Rust side's `tracing` events, delivered to Python's `logging`.
//!
//! Reconnects, refused joins, drops and protocol errors are logged by the client crate with
//! `tracing`; Python users look in `logging`. A small `tracing` layer turns each event of a
//! `supa_realtime*` target into a record for the logger `supa_realtime.<module>` (e.g.
//! `supa_realtime.connection.task`, a child of `supa_realtime`), with levels mapped
//! (`ERROR` 40, `WARN` 30, `INFO` 20, `DEBUG` 10, `TRACE` 5) and the event's fields appended
//! as `key=value`.
//!
//! Why not `pyo3-log`: it calls into Python on the thread that logs, and here that is a
//! tokio worker running connection tasks: every log line would wait for the GIL and stall
//! the sockets behind a busy Python program. Instead the layer only formats the record and
//! hands it to a bounded queue; one `supa-realtime-log` thread attaches to Python and calls
//! the loggers. Records below the `supa_realtime` logger's effective level are not even
//! formatted: the thread reads that level every 250 ms (and whenever a client is created).
//! If the queue is ever full, the records that did not fit are counted and the count is
//! logged as a warning: nothing is lost silently.
//!
//! The thread stops at interpreter exit (an `atexit` hook waits for it, with the GIL
//! released): a thread that attaches while the interpreter finalizes aborts the process.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Records waiting for the logging thread.
const QUEUE: usize = 8192;
/// How often the thread reads the Python logger's level.
const LEVEL_EVERY: Duration = Duration::from_millis(250);

/// The `supa_realtime` logger's effective level (Python's numbers); WARNING until read.
static LEVEL: AtomicU8 = AtomicU8::new(30);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE_TX: OnceLock<SyncSender<Record>> = OnceLock::new();
/// Set at interpreter exit: the thread attaches no more.
static STOP: AtomicBool = AtomicBool::new(false);
/// The thread's handle, joined at exit.
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

struct Record {
    logger: String,
    level: u8,
    message: String,
}

fn py_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

fn ours(target: &str) -> bool {
    target.starts_with("supa_realtime")
}

/// `supa_realtime::connection::task` → `supa_realtime.connection.task`;
/// `supa_realtime_native::dispatch` → `supa_realtime.native.dispatch`.
fn logger_name(target: &str) -> String {
    let rest = target.strip_prefix("supa_realtime").unwrap_or(target);
    let rest = rest
        .strip_prefix('_')
        .map_or(rest.to_owned(), |r| format!("::{r}"));
    format!("supa_realtime{}", rest.replace("::", "."))
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

struct PythonLogging;

impl<S: tracing::Subscriber> Layer<S> for PythonLogging {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        // `sometimes`: the Python level can change at any time, so `enabled` decides per event.
        if ours(meta.target()) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        ours(meta.target()) && py_level(meta.level()) >= LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(tx) = QUEUE_TX.get() else { return };
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let record = Record {
            logger: logger_name(meta.target()),
            level: py_level(meta.level()),
            message: fields.message + &fields.rest,
        };
        if tx.try_send(record).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Install the layer as the process's `tracing` subscriber (unless another one is set) and
/// start the logging thread. Called once, from the module's init.
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    if QUEUE_TX.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::sync_channel::<Record>(QUEUE);
    if QUEUE_TX.set(tx).is_err() {
        return Ok(());
    }
    refresh_level(py);
    let spawned = std::thread::Builder::new()
        .name("supa-realtime-log".into())
        .spawn(move || log_loop(&rx));
    if let Ok(handle) = spawned {
        if let Ok(mut t) = THREAD.lock() {
            *t = Some(handle);
        }
        py.import("atexit")?
            .call_method1("register", (wrap_pyfunction!(stop_logging, py)?,))?;
        let _ = tracing_subscriber::registry()
            .with(PythonLogging)
            .try_init();
    }
    Ok(())
}

/// Stop the logging thread (registered with `atexit`): it attaches no more once this
/// returns.
#[pyfunction]
fn stop_logging(py: Python<'_>) {
    STOP.store(true, Ordering::SeqCst);
    let handle = THREAD.lock().ok().and_then(|mut t| t.take());
    if let Some(h) = handle {
        // The thread may be waiting for the GIL: release it while joining.
        py.detach(move || {
            let _ = h.join();
        });
    }
}

/// Read the `supa_realtime` logger's effective level now.
pub(crate) fn refresh_level(py: Python<'_>) {
    let level = crate::classes::logger(py)
        .and_then(|l| l.call_method0("getEffectiveLevel"))
        .and_then(|v| v.extract::<i64>());
    if let Ok(l) = level {
        LEVEL.store(l.clamp(1, 255) as u8, Ordering::Relaxed);
    }
}

fn log_loop(rx: &mpsc::Receiver<Record>) {
    let mut loggers: HashMap<String, Py<PyAny>> = HashMap::new();
    let mut level_read = Instant::now();
    loop {
        if STOP.load(Ordering::SeqCst) {
            return;
        }
        let first = match rx.recv_timeout(LEVEL_EVERY) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<Record> = first.into_iter().collect();
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let refresh = level_read.elapsed() >= LEVEL_EVERY;
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if batch.is_empty() && !refresh && dropped == 0 {
            continue;
        }
        if STOP.load(Ordering::SeqCst) {
            return;
        }
        // `None` while the interpreter is finalizing: nothing to log to any more.
        let attached = Python::try_attach(|py| {
            // Checked again with the GIL held: `stop_logging` sets it holding the GIL.
            if STOP.load(Ordering::SeqCst) {
                return;
            }
            if refresh {
                refresh_level(py);
                level_read = Instant::now();
            }
            if dropped > 0 {
                batch.push(Record {
                    logger: "supa_realtime".to_owned(),
                    level: 30,
                    message: format!(
                        "{dropped} log record(s) from the Rust core were dropped: the logging thread fell behind"
                    ),
                });
            }
            for r in batch.drain(..) {
                let logger = match loggers.get(&r.logger) {
                    Some(l) => l.bind(py).clone(),
                    None => {
                        let Ok(l) = py
                            .import("logging")
                            .and_then(|m| m.call_method1("getLogger", (r.logger.as_str(),)))
                        else {
                            continue;
                        };
                        loggers.insert(r.logger.clone(), l.clone().unbind());
                        l
                    }
                };
                if let Err(e) = logger.call_method1("log", (r.level, r.message)) {
                    e.print(py);
                }
            }
        });
        if attached.is_none() {
            return;
        }
    }
}
