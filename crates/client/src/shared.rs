//! What every handle of one client shares: the way to the connection task, the options and
//! the watches it publishes. Below the handles ([`RealtimeClient`](crate::RealtimeClient),
//! [`RealtimeChannel`](crate::RealtimeChannel)) and REST, above the connection task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::{Command, ConnectionState};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::queue::Flow;

pub(crate) struct Shared {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) options: ClientOptions,
    pub(crate) endpoint: Endpoint,
    pub(crate) apikey: String,
    pub(crate) http: reqwest::Client,
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) latency: watch::Receiver<Option<Duration>>,
    pub(crate) token: watch::Receiver<Option<String>>,
    /// Flow control of the client's event queues (see [`queue`](crate::queue)).
    pub(crate) flow: Arc<Flow>,
}

impl Shared {
    /// Send a command that carries a oneshot; return the receiving half.
    pub(crate) async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::closed())?;
        Ok(rx)
    }

    /// Send a command and wait for its answer.
    pub(crate) async fn command<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T> {
        self.send(make).await?.await.map_err(|_| Error::closed())
    }
}
