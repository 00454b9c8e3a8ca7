//! A blocking facade for code without an async runtime.
//!
//! # Implementation
//!
//! [`RealtimeClient`] owns a small tokio runtime with **one worker thread**, on which the
//! connection task runs. The socket is therefore read, heartbeated and reconnected even
//! while your thread is busy or asleep. Each blocking method is the async method run with
//! `Runtime::block_on` on your thread; streams are read with a blocking receive. Callbacks
//! run on the runtime's worker thread. Do not call these methods from async code.
//!
//! ```no_run
//! use supa_realtime::blocking::RealtimeClient;
//! use supa_realtime::{ChannelConfig, ClientOptions};
//! use serde_json::json;
//!
//! let client = RealtimeClient::connect("http://127.0.0.1:4000", "ANON_KEY", ClientOptions::default())?;
//! let channel = client.channel("room1", ChannelConfig::default().broadcast_self(true))?;
//! let messages = channel.broadcasts("*")?;
//! channel.subscribe()?;
//! channel.send_broadcast("hello", json!({"n": 1}))?;
//! for msg in messages.take(1) {
//!     println!("{msg:?}");
//! }
//! # Ok::<(), supa_realtime::Error>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::runtime::Runtime;

use crate::broadcast::{BroadcastMessage, BroadcastPayload};
use crate::config::{ChannelConfig, ChannelStatus};
use crate::connection::ConnectionState;
use crate::error::{Error, Result};
use crate::events::{ChannelEvent, ClientEvent, SystemMessage};
use crate::options::ClientOptions;
use crate::postgres::{PostgresChange, PostgresChangesFilter};
use crate::presence::{PresenceEvent, PresenceState};
use crate::queue::EventStream;

/// A blocking iterator over an [`EventStream`]. Ends when the stream ends.
#[derive(Debug)]
pub struct EventIter<T, S = ChannelEvent> {
    stream: EventStream<T, S>,
}

impl<T, S> EventIter<T, S> {
    /// The next event if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        self.stream.try_recv()
    }

    /// The next event, waiting at most `timeout`.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = self.stream.try_recv() {
                return Some(v);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Events dropped because this consumer was too slow.
    pub fn dropped(&self) -> u64 {
        self.stream.dropped()
    }
}

impl<T, S> Iterator for EventIter<T, S> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.stream.blocking_recv()
    }
}

/// The blocking twin of [`crate::RealtimeClient`].
#[derive(Clone, Debug)]
pub struct RealtimeClient {
    inner: crate::RealtimeClient,
    rt: Arc<Runtime>,
}

/// The blocking twin of [`crate::RealtimeChannel`].
#[derive(Clone, Debug)]
pub struct RealtimeChannel {
    inner: crate::RealtimeChannel,
    rt: Arc<Runtime>,
}

fn runtime() -> Result<Arc<Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("supa-realtime")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| Error::invalid("could not start the runtime thread").with_source(e))
}

impl RealtimeClient {
    /// Create a client and start connecting in the background.
    pub fn new(url: &str, key: &str, options: ClientOptions) -> Result<Self> {
        let rt = runtime()?;
        let inner = crate::RealtimeClient::new_on(rt.handle(), url, key, options)?;
        Ok(RealtimeClient { inner, rt })
    }

    /// Create a client and wait until its socket is open (see
    /// [`crate::RealtimeClient::connect`]).
    pub fn connect(url: &str, key: &str, options: ClientOptions) -> Result<Self> {
        let client = Self::new(url, key, options)?;
        match client.rt.block_on(client.inner.wait_open()) {
            Ok(()) => Ok(client),
            Err(e) => {
                client.rt.block_on(client.inner.disconnect());
                Err(e)
            }
        }
    }

    /// The async client, to use from async code running on [`runtime`](Self::runtime).
    pub fn as_async(&self) -> &crate::RealtimeClient {
        &self.inner
    }

    /// The runtime the connection runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.rt.handle()
    }

    /// See [`crate::RealtimeClient::connection_state`].
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.connection_state()
    }

    /// See [`crate::RealtimeClient::heartbeat_latency`].
    pub fn heartbeat_latency(&self) -> Option<Duration> {
        self.inner.heartbeat_latency()
    }

    /// See [`crate::RealtimeClient::channel`].
    pub fn channel(&self, name: &str, config: ChannelConfig) -> Result<RealtimeChannel> {
        let inner = self.rt.block_on(self.inner.channel(name, config))?;
        Ok(RealtimeChannel {
            inner,
            rt: self.rt.clone(),
        })
    }

    /// See [`crate::RealtimeClient::channels`].
    pub fn channels(&self) -> Result<Vec<RealtimeChannel>> {
        let list = self.rt.block_on(self.inner.channels())?;
        Ok(list
            .into_iter()
            .map(|inner| RealtimeChannel {
                inner,
                rt: self.rt.clone(),
            })
            .collect())
    }

    /// See [`crate::RealtimeClient::remove_channel`].
    pub fn remove_channel(&self, channel: &RealtimeChannel) -> Result<()> {
        self.rt.block_on(self.inner.remove_channel(&channel.inner))
    }

    /// See [`crate::RealtimeClient::remove_all_channels`].
    pub fn remove_all_channels(&self) -> Result<()> {
        self.rt.block_on(self.inner.remove_all_channels())
    }

    /// See [`crate::RealtimeClient::set_auth`].
    pub fn set_auth(&self, token: Option<String>) -> Result<()> {
        self.rt.block_on(self.inner.set_auth(token))
    }

    /// See [`crate::RealtimeClient::events`].
    pub fn events(&self) -> Result<EventIter<ClientEvent, ClientEvent>> {
        let stream = self.rt.block_on(self.inner.events())?;
        Ok(EventIter { stream })
    }

    /// See [`crate::RealtimeClient::on_open`].
    pub fn on_open(&self, f: impl Fn() + Send + 'static) -> Result<()> {
        self.rt.block_on(self.inner.on_open(f))
    }

    /// See [`crate::RealtimeClient::on_close`].
    pub fn on_close(&self, f: impl Fn(Option<u16>, String) + Send + 'static) -> Result<()> {
        self.rt.block_on(self.inner.on_close(f))
    }

    /// See [`crate::RealtimeClient::on_error`].
    pub fn on_error(&self, f: impl Fn(Error) + Send + 'static) -> Result<()> {
        self.rt.block_on(self.inner.on_error(f))
    }

    /// See [`crate::RealtimeClient::reconnect`].
    pub fn reconnect(&self) -> Result<()> {
        self.rt.block_on(self.inner.reconnect())
    }

    /// See [`crate::RealtimeClient::disconnect`].
    pub fn disconnect(&self) {
        self.rt.block_on(self.inner.disconnect())
    }
}

impl RealtimeChannel {
    /// The async channel.
    pub fn as_async(&self) -> &crate::RealtimeChannel {
        &self.inner
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.inner.topic()
    }

    /// See [`crate::RealtimeChannel::status`].
    pub fn status(&self) -> ChannelStatus {
        self.inner.status()
    }

    /// See [`crate::RealtimeChannel::presence_state`].
    pub fn presence_state(&self) -> PresenceState {
        self.inner.presence_state()
    }

    /// See [`crate::RealtimeChannel::subscribe`].
    pub fn subscribe(&self) -> Result<()> {
        self.rt.block_on(self.inner.subscribe())
    }

    /// See [`crate::RealtimeChannel::unsubscribe`].
    pub fn unsubscribe(&self) -> Result<()> {
        self.rt.block_on(self.inner.unsubscribe())
    }

    /// See [`crate::RealtimeChannel::send_broadcast`].
    pub fn send_broadcast(&self, event: &str, payload: impl Into<BroadcastPayload>) -> Result<()> {
        self.rt.block_on(self.inner.send_broadcast(event, payload))
    }

    /// See [`crate::RealtimeChannel::http_send`].
    pub fn http_send(&self, event: &str, payload: impl Into<BroadcastPayload>) -> Result<()> {
        self.rt.block_on(self.inner.http_send(event, payload))
    }

    /// See [`crate::RealtimeChannel::track`].
    pub fn track(&self, payload: Value) -> Result<()> {
        self.rt.block_on(self.inner.track(payload))
    }

    /// See [`crate::RealtimeChannel::untrack`].
    pub fn untrack(&self) -> Result<()> {
        self.rt.block_on(self.inner.untrack())
    }

    /// See [`crate::RealtimeChannel::events`].
    pub fn events(&self) -> Result<EventIter<ChannelEvent>> {
        Ok(EventIter {
            stream: self.rt.block_on(self.inner.events())?,
        })
    }

    /// See [`crate::RealtimeChannel::broadcasts`].
    pub fn broadcasts(&self, event: &str) -> Result<EventIter<BroadcastMessage>> {
        Ok(EventIter {
            stream: self.rt.block_on(self.inner.broadcasts(event))?,
        })
    }

    /// See [`crate::RealtimeChannel::presence_events`].
    pub fn presence_events(&self) -> Result<EventIter<PresenceEvent>> {
        Ok(EventIter {
            stream: self.rt.block_on(self.inner.presence_events())?,
        })
    }

    /// See [`crate::RealtimeChannel::postgres_changes`].
    pub fn postgres_changes(
        &self,
        filter: PostgresChangesFilter,
    ) -> Result<EventIter<PostgresChange>> {
        Ok(EventIter {
            stream: self.rt.block_on(self.inner.postgres_changes(filter))?,
        })
    }

    /// See [`crate::RealtimeChannel::system_messages`].
    pub fn system_messages(&self) -> Result<EventIter<SystemMessage>> {
        Ok(EventIter {
            stream: self.rt.block_on(self.inner.system_messages())?,
        })
    }

    /// See [`crate::RealtimeChannel::status_changes`].
    pub fn status_changes(&self) -> Result<EventIter<ChannelStatus>> {
        Ok(EventIter {
            stream: self.rt.block_on(self.inner.status_changes())?,
        })
    }

    /// See [`crate::RealtimeChannel::on_broadcast`].
    pub fn on_broadcast(
        &self,
        event: &str,
        f: impl Fn(BroadcastMessage) + Send + 'static,
    ) -> Result<()> {
        self.rt.block_on(self.inner.on_broadcast(event, f))
    }

    /// See [`crate::RealtimeChannel::on_presence`].
    pub fn on_presence(&self, f: impl Fn(PresenceEvent) + Send + 'static) -> Result<()> {
        self.rt.block_on(self.inner.on_presence(f))
    }

    /// See [`crate::RealtimeChannel::on_status`].
    pub fn on_status(&self, f: impl Fn(ChannelStatus) + Send + 'static) -> Result<()> {
        self.rt.block_on(self.inner.on_status(f))
    }
}
