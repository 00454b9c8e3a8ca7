//! The callback thread of a sync client (see [`crate::dispatch`] for why the asyncio client
//! has none).
//!
//! One forwarder task per source drains it on the runtime and sends each batch, as Rust
//! data, into the thread's bounded queue; the thread waits for a batch without the GIL,
//! takes what else is queued (up to [`MAX_BATCH`] items), attaches to Python **once**,
//! converts the batch and runs its callbacks (`run_batch`). A slow callback makes the
//! forwarders wait on the full queue, so their streams fill and the socket slows down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use tokio::sync::mpsc;

use crate::classes;
use crate::dispatch::{batch_list, log_error, Item, Pulled, Source, MAX_BATCH};
use crate::runtime::runtime;

/// Most events a forwarder takes from its stream at once.
const FORWARD_BATCH: usize = 256;
/// Batches the queue holds before forwarders wait.
const QUEUE: usize = 64;

/// A sync client's callback thread and the sending half of its queue.
pub(crate) struct CallbackThread {
    tx: mpsc::Sender<Vec<Item>>,
    stopped: Arc<AtomicBool>,
}

impl CallbackThread {
    pub(crate) fn start() -> PyResult<CallbackThread> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stopped = Arc::new(AtomicBool::new(false));
        let s = stopped.clone();
        std::thread::Builder::new()
            .name("supa-realtime-callbacks".into())
            .spawn(move || run(rx, &s))
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        Ok(CallbackThread { tx, stopped })
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Drain `source` on a task of the runtime into the queue.
    pub(crate) fn forward(&self, mut source: Box<dyn Source>) {
        let tx = self.tx.clone();
        runtime().spawn(async move {
            loop {
                let mut items = Vec::new();
                let ended =
                    std::future::poll_fn(|cx| match source.pull(cx, &mut items, FORWARD_BATCH) {
                        Pulled::Ended => std::task::Poll::Ready(true),
                        Pulled::More => std::task::Poll::Ready(false),
                        Pulled::Idle if !items.is_empty() => std::task::Poll::Ready(false),
                        Pulled::Idle => std::task::Poll::Pending,
                    })
                    .await;
                if !items.is_empty() && tx.send(items).await.is_err() {
                    return;
                }
                if ended {
                    return;
                }
            }
        });
    }

    /// Queue `items` after what is queued.
    pub(crate) fn inject(&self, items: Vec<Item>) {
        if let Err(mpsc::error::TrySendError::Full(items)) = self.tx.try_send(items) {
            let tx = self.tx.clone();
            runtime().spawn(async move {
                let _ = tx.send(items).await;
            });
        }
    }
}

fn run(mut rx: mpsc::Receiver<Vec<Item>>, stopped: &AtomicBool) {
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
            // Checked again attached: `stop` runs at interpreter exit, holding the GIL.
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let run = (|| -> PyResult<()> {
                let batch = batch_list(py, &items)?;
                classes::run_batch(py)?.call1((batch,))?;
                Ok(())
            })();
            if let Err(e) = run {
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
