//! [`RealtimeClient`]: the handle to one socket and its channels.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::channel::RealtimeChannel;
use crate::config::ChannelConfig;
use crate::connection::{self, Command, ConnectionState};
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::events::ClientEvent;
use crate::options::ClientOptions;
use crate::queue::{self, EventStream, Flow, QueueSpec};
use crate::shared::Shared;

/// Capacity of the command queue from handles to the connection task.
const COMMAND_QUEUE: usize = 1024;

/// A Supabase Realtime client: one WebSocket, any number of channels. A cheap, cloneable
/// handle; the socket is owned by one background task (see the crate docs).
///
/// ```no_run
/// use supa_realtime::{ClientOptions, RealtimeClient};
///
/// # async fn demo() -> supa_realtime::Result<()> {
/// let client = RealtimeClient::connect("https://abc.supabase.co", "ANON_KEY", ClientOptions::default()).await?;
/// println!("{:?}", client.connection_state());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RealtimeClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RealtimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeClient")
            .field("endpoint", &self.shared.endpoint.rest.as_str())
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

impl RealtimeClient {
    /// Create a client and start connecting in the background (it keeps trying per the
    /// reconnect options). Must be called within a tokio runtime.
    ///
    /// `url` may be a project URL (`https://abc.supabase.co`), a realtime endpoint
    /// (`https://abc.supabase.co/realtime/v1`, `ws://localhost:4000/socket`) or a full
    /// `.../websocket` URL. `key` is the API key sent as `apikey`.
    pub fn new(url: &str, key: &str, options: ClientOptions) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::invalid("RealtimeClient::new must be called within a tokio runtime")
        })?;
        Self::new_on(&runtime, url, key, options)
    }

    pub(crate) fn new_on(
        runtime: &tokio::runtime::Handle,
        url: &str,
        key: &str,
        options: ClientOptions,
    ) -> Result<Self> {
        let endpoint = Endpoint::parse(url, key, options.vsn, &options.params)?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let flow = Flow::new();
        let parts = connection::spawn(
            runtime,
            options.clone(),
            endpoint.clone(),
            key.to_owned(),
            rx,
            flow.clone(),
        );
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::invalid("could not build the HTTP client").with_source(e))?;
        Ok(RealtimeClient {
            shared: Arc::new(Shared {
                runtime: runtime.clone(),
                options,
                endpoint,
                apikey: key.to_owned(),
                http,
                tx,
                state: parts.state,
                latency: parts.latency,
                token: parts.token,
                flow,
            }),
        })
    }

    /// Create a client and wait until its socket is open. Fails with the first attempt's
    /// error (e.g. [`ErrorKind::Authorization`](crate::ErrorKind::Authorization) with the
    /// server's reason for a refused key); the client is then shut down.
    pub async fn connect(url: &str, key: &str, options: ClientOptions) -> Result<Self> {
        let client = Self::new(url, key, options)?;
        match client.wait_open().await {
            Ok(()) => Ok(client),
            Err(e) => {
                client.disconnect().await;
                Err(e)
            }
        }
    }

    /// Wait until the socket is open, or fail with the next failed attempt's error.
    pub async fn wait_open(&self) -> Result<()> {
        self.shared
            .command(|reply| Command::WaitOpen { reply })
            .await?
    }

    /// The socket's state.
    pub fn connection_state(&self) -> ConnectionState {
        self.shared.state.borrow().clone()
    }

    /// A `watch` of the socket's state.
    pub fn connection_state_watch(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.clone()
    }

    /// Whether the socket is open.
    pub fn is_connected(&self) -> bool {
        self.shared.state.borrow().is_open()
    }

    /// Round trip of the last answered heartbeat.
    pub fn heartbeat_latency(&self) -> Option<Duration> {
        *self.shared.latency.borrow()
    }

    /// The access token channels join with (`None`: the API key).
    pub fn access_token(&self) -> Option<String> {
        self.shared.token.borrow().clone()
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.shared.options
    }

    /// A channel on topic `realtime:<name>` (`name` may already carry the prefix). If the
    /// client already has a channel on that topic, that channel is returned and `config` is
    /// ignored, as in realtime-js.
    pub async fn channel(&self, name: &str, config: ChannelConfig) -> Result<RealtimeChannel> {
        let topic = name.to_owned();
        let parts = self
            .shared
            .command(|reply| Command::Channel {
                topic,
                config,
                reply,
            })
            .await?;
        Ok(RealtimeChannel::from_parts(&self.shared, parts))
    }

    /// Every channel of the client.
    pub async fn channels(&self) -> Result<Vec<RealtimeChannel>> {
        let parts = self
            .shared
            .command(|reply| Command::Channels { reply })
            .await?;
        Ok(parts
            .into_iter()
            .map(|p| RealtimeChannel::from_parts(&self.shared, p))
            .collect())
    }

    /// Unsubscribe a channel and forget it; its streams end.
    pub async fn remove_channel(&self, channel: &RealtimeChannel) -> Result<()> {
        let id = channel.inner.id;
        self.shared
            .command(|reply| Command::Remove { id, reply })
            .await?
    }

    /// Remove every channel.
    pub async fn remove_all_channels(&self) -> Result<()> {
        self.shared
            .command(|reply| Command::RemoveAll { reply })
            .await?
    }

    /// Set the access token: pushed to every joined channel at once (`access_token`) and used
    /// by every later join. `None` falls back to the API key.
    pub async fn set_auth(&self, token: Option<String>) -> Result<()> {
        self.shared
            .tx
            .send(Command::SetAuth { token })
            .await
            .map_err(|_| Error::closed())
    }

    /// Events this client dropped because a consumer that opted into a drop policy was too
    /// slow (0 under the default [`Overflow::Backpressure`](crate::Overflow::Backpressure)).
    pub fn dropped_events(&self) -> u64 {
        self.shared.flow.dropped()
    }

    /// Socket events: open, close, errors, reconnect attempts, heartbeat latencies.
    pub async fn events(&self) -> Result<EventStream<ClientEvent, ClientEvent>> {
        let o = &self.shared.options;
        let spec = QueueSpec {
            capacity: o.event_queue_capacity,
            max_bytes: o.event_queue_bytes,
            overflow: o.overflow,
        };
        let (sub, rx) = queue::queue(&self.shared.flow, spec);
        self.shared
            .tx
            .send(Command::ClientListen { sub })
            .await
            .map_err(|_| Error::closed())?;
        Ok(EventStream::new(rx, Some))
    }

    async fn on_event<T: Send + 'static>(
        &self,
        pick: fn(ClientEvent) -> Option<T>,
        f: impl Fn(T) + Send + 'static,
    ) -> Result<()> {
        let mut stream = self.events().await?;
        self.shared.runtime.spawn(async move {
            while let Some(ev) = stream.recv().await {
                if let Some(v) = pick(ev) {
                    f(v);
                }
            }
        });
        Ok(())
    }

    /// Call `f` each time the socket opens.
    pub async fn on_open(&self, f: impl Fn() + Send + 'static) -> Result<()> {
        self.on_event(
            |e| matches!(e, ClientEvent::Open).then_some(()),
            move |()| f(),
        )
        .await
    }

    /// Call `f(code, reason)` each time the socket closes.
    pub async fn on_close(&self, f: impl Fn(Option<u16>, String) + Send + 'static) -> Result<()> {
        self.on_event(
            |e| match e {
                ClientEvent::Close { code, reason } => Some((code, reason)),
                _ => None,
            },
            move |(c, r)| f(c, r),
        )
        .await
    }

    /// Call `f` for each socket error (failed attempts, heartbeat timeouts, giving up).
    pub async fn on_error(&self, f: impl Fn(Error) + Send + 'static) -> Result<()> {
        self.on_event(
            |e| match e {
                ClientEvent::Error(e) => Some(e),
                _ => None,
            },
            f,
        )
        .await
    }

    /// Connect again after [`disconnect`](Self::disconnect) or after reconnecting gave up.
    /// Channels that were subscribed rejoin.
    pub async fn reconnect(&self) -> Result<()> {
        self.shared
            .tx
            .send(Command::Connect)
            .await
            .map_err(|_| Error::closed())?;
        self.wait_open().await
    }

    /// Close the socket (code 1000) and stop reconnecting. Channels are kept and rejoin on
    /// [`reconnect`](Self::reconnect).
    pub async fn disconnect(&self) {
        if let Ok(rx) = self
            .shared
            .send(|reply| Command::Disconnect { reply })
            .await
        {
            let _ = rx.await;
        }
    }
}
