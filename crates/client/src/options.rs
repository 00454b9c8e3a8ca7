//! Client options.

use std::fmt;
use std::time::Duration;

use crate::auth::TokenProvider;
use crate::queue::Overflow;

/// The serializer version the socket asks for with `vsn` (PROTOCOL.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vsn {
    /// `1.0.0`: JSON objects. No binary broadcasts.
    V1,
    /// `2.0.0`: JSON arrays plus binary user broadcasts (what current realtime-js uses).
    #[default]
    V2,
}

impl Vsn {
    /// The protocol crate's serializer for this version.
    pub fn serializer(self) -> supa_realtime_protocol::Serializer {
        match self {
            Vsn::V1 => supa_realtime_protocol::Serializer::V1,
            Vsn::V2 => supa_realtime_protocol::Serializer::V2,
        }
    }

    /// The `vsn` query value.
    pub fn as_str(self) -> &'static str {
        self.serializer().vsn()
    }
}

/// What a push (broadcast, track, untrack) does when its channel is not joined because the
/// socket is down or the channel is rejoining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflinePolicy {
    /// Keep up to `capacity` pushes per channel, in order, and send them once the channel is
    /// joined again. A push that waits longer than `timeout` fails with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout); a push beyond `capacity` fails at once
    /// with [`ErrorKind::BufferFull`](crate::ErrorKind::BufferFull). Nothing already buffered
    /// is ever dropped to make room.
    Buffer {
        /// Most pushes held per channel.
        capacity: usize,
        /// Longest a push waits in the buffer.
        timeout: Duration,
    },
    /// Fail at once with [`ErrorKind::NotConnected`](crate::ErrorKind::NotConnected).
    Fail,
}

impl Default for OfflinePolicy {
    fn default() -> Self {
        OfflinePolicy::Buffer {
            capacity: 100,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Options of a [`RealtimeClient`](crate::RealtimeClient). Built with struct-update syntax
/// or the `with_*` methods:
///
/// ```
/// use std::time::Duration;
/// use supa_realtime::{ClientOptions, Vsn};
///
/// let options = ClientOptions::default()
///     .with_vsn(Vsn::V1)
///     .with_hb_interval(Duration::from_secs(5))
///     .with_max_retries(None);
/// assert_eq!(options.hb_interval, Duration::from_secs(5));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Serializer version. Default [`Vsn::V2`].
    pub vsn: Vsn,
    /// Time between heartbeats. Default 25 s (as realtime-js). The server closes sockets that
    /// are silent for 60 s. A channel may ask for shorter heartbeats with
    /// [`ChannelConfig::hb_interval`](crate::ChannelConfig::hb_interval): the socket then
    /// beats at the smallest interval asked, while that channel exists.
    pub hb_interval: Duration,
    /// How long a heartbeat may go unanswered before the connection is declared dead, closed
    /// and reconnected. A connection that stops answering is therefore noticed within
    /// `hb_interval + heartbeat_timeout`. Default 10 s.
    pub heartbeat_timeout: Duration,
    /// Timeout of joins, leaves, acknowledged broadcasts and presence pushes. Default 10 s.
    /// Keep it above ~6 s against upstream servers, which delay join errors by 5 s.
    pub timeout: Duration,
    /// Reconnect after the socket drops. Default `true`.
    pub auto_reconnect: bool,
    /// Give up after this many failed reconnect attempts in a row; `None` (the default)
    /// retries forever.
    pub max_retries: Option<u32>,
    /// First reconnect delay; it doubles per failed attempt, with jitter, up to
    /// `max_backoff`. Default 1 s.
    pub initial_backoff: Duration,
    /// Cap of the reconnect delay. Default 10 s.
    pub max_backoff: Duration,
    /// Rejoin delays of a channel after a join error or timeout, by attempt (the last one
    /// repeats). Default 1 s, 2 s, 5 s, 10 s (as Phoenix). A channel can set its own policy
    /// (give up after N failures, exponential delays): [`ChannelConfig::rejoin`](crate::ChannelConfig::rejoin).
    pub rejoin_backoff: Vec<Duration>,
    /// Rejoin a channel the server closed (`phx_close` we did not ask for, e.g. after its
    /// token expired), after asking the token provider for a fresh token. Default `true`.
    pub rejoin_on_server_close: bool,
    /// Pushes while a channel is not joined. Default: buffer 100 per channel for 30 s.
    pub offline_policy: OfflinePolicy,
    /// What a stream or callback that falls behind does: slow the reading of the socket
    /// (the default, [`Overflow::Backpressure`]: nothing is lost) or drop events, counted and
    /// reported. A channel can set its own ([`ChannelConfig::overflow`](crate::ChannelConfig::overflow)).
    /// See [`queue`](crate::queue).
    pub overflow: Overflow,
    /// Most events queued for one stream / callback. Default 1024.
    pub event_queue_capacity: usize,
    /// Most payload bytes queued for one stream / callback (one event always fits).
    /// Default 16 MiB.
    pub event_queue_bytes: usize,
    /// Events that may wait on the connection task for full consumer queues before it stops
    /// reading the socket. While it still reads, replies, heartbeats and channel control
    /// messages are handled at once, ahead of the backlog. Default 4096.
    pub backlog_events: usize,
    /// Bytes that may wait likewise. Default 16 MiB.
    pub backlog_bytes: usize,
    /// Extra query parameters of the WebSocket URL (`apikey` and `vsn` are always set).
    pub params: Vec<(String, String)>,
    /// The user's access token sent in joins (defaults to the API key).
    pub access_token: Option<String>,
    /// Asked for a fresh access token before each (re)join and before the current one
    /// expires.
    pub token_provider: Option<TokenProvider>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            vsn: Vsn::V2,
            hb_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            auto_reconnect: true,
            max_retries: None,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            rejoin_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(5),
                Duration::from_secs(10),
            ],
            rejoin_on_server_close: true,
            offline_policy: OfflinePolicy::default(),
            overflow: Overflow::Backpressure,
            event_queue_capacity: 1024,
            event_queue_bytes: 16 << 20,
            backlog_events: 4096,
            backlog_bytes: 16 << 20,
            params: Vec::new(),
            access_token: None,
            token_provider: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("vsn", &self.vsn)
            .field("hb_interval", &self.hb_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("timeout", &self.timeout)
            .field("auto_reconnect", &self.auto_reconnect)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("rejoin_backoff", &self.rejoin_backoff)
            .field("rejoin_on_server_close", &self.rejoin_on_server_close)
            .field("offline_policy", &self.offline_policy)
            .field("overflow", &self.overflow)
            .field("event_queue_capacity", &self.event_queue_capacity)
            .field("event_queue_bytes", &self.event_queue_bytes)
            .field("backlog_events", &self.backlog_events)
            .field("backlog_bytes", &self.backlog_bytes)
            .field("params", &self.params)
            .field("access_token", &self.access_token.as_ref().map(|_| "<set>"))
            .field(
                "token_provider",
                &self.token_provider.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl ClientOptions {
    /// Set [`vsn`](Self::vsn).
    pub fn with_vsn(mut self, vsn: Vsn) -> Self {
        self.vsn = vsn;
        self
    }
    /// Set [`hb_interval`](Self::hb_interval).
    pub fn with_hb_interval(mut self, d: Duration) -> Self {
        self.hb_interval = d;
        self
    }
    /// Set [`heartbeat_timeout`](Self::heartbeat_timeout).
    pub fn with_heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }
    /// Set [`timeout`](Self::timeout).
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Set [`auto_reconnect`](Self::auto_reconnect).
    pub fn with_auto_reconnect(mut self, on: bool) -> Self {
        self.auto_reconnect = on;
        self
    }
    /// Set [`max_retries`](Self::max_retries).
    pub fn with_max_retries(mut self, n: Option<u32>) -> Self {
        self.max_retries = n;
        self
    }
    /// Set [`initial_backoff`](Self::initial_backoff) and [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }
    /// Set [`rejoin_backoff`](Self::rejoin_backoff).
    pub fn with_rejoin_backoff(mut self, steps: Vec<Duration>) -> Self {
        self.rejoin_backoff = steps;
        self
    }
    /// Set [`offline_policy`](Self::offline_policy).
    pub fn with_offline_policy(mut self, p: OfflinePolicy) -> Self {
        self.offline_policy = p;
        self
    }
    /// Set [`event_queue_capacity`](Self::event_queue_capacity).
    pub fn with_event_queue_capacity(mut self, n: usize) -> Self {
        self.event_queue_capacity = n.max(1);
        self
    }
    /// Set [`overflow`](Self::overflow).
    pub fn with_overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }
    /// Set [`event_queue_bytes`](Self::event_queue_bytes).
    pub fn with_event_queue_bytes(mut self, n: usize) -> Self {
        self.event_queue_bytes = n.max(1);
        self
    }
    /// Set [`backlog_events`](Self::backlog_events) and [`backlog_bytes`](Self::backlog_bytes).
    pub fn with_backlog(mut self, events: usize, bytes: usize) -> Self {
        self.backlog_events = events.max(1);
        self.backlog_bytes = bytes.max(1);
        self
    }
    /// Set [`access_token`](Self::access_token).
    pub fn with_access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }
    /// Set [`token_provider`](Self::token_provider).
    pub fn with_token_provider(mut self, provider: TokenProvider) -> Self {
        self.token_provider = Some(provider);
        self
    }
    /// Add a query parameter to the WebSocket URL.
    pub fn with_param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((key.into(), value.into()));
        self
    }
}
