//! The [`RealtimeChannel`] handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use crate::broadcast::{BroadcastMessage, BroadcastPayload};
use crate::config::{ChannelConfig, ChannelStatus};
use crate::connection::{ChannelId, ChannelParts, Command, PushKind, PushOutcome};
use crate::error::{Error, ErrorKind, Result};
use crate::events::{ChannelEvent, EventFilter, SystemMessage};
use crate::postgres::{PostgresChange, PostgresChangesFilter};
use crate::presence::{PresenceEvent, PresenceState};
use crate::queue::{self, EventStream, QueueSpec};
use crate::rest;
use crate::shared::Shared;

pub(crate) struct ChannelInner {
    pub(crate) id: ChannelId,
    pub(crate) topic: String,
    pub(crate) config: ChannelConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) status: watch::Receiver<ChannelStatus>,
    pub(crate) presence: watch::Receiver<PresenceState>,
    pub(crate) dropped: Arc<AtomicU64>,
}

/// A channel: a cheap, cloneable handle. All clones refer to the same channel of the
/// client; the connection task owns its state.
///
/// ```no_run
/// # async fn demo(client: supa_realtime::RealtimeClient) -> supa_realtime::Result<()> {
/// use supa_realtime::ChannelConfig;
/// use serde_json::json;
///
/// let channel = client.channel("room1", ChannelConfig::default().broadcast_ack(true)).await?;
/// let mut cursors = channel.broadcasts("cursor").await?;
/// channel.subscribe().await?;
/// channel.send_broadcast("cursor", json!({"x": 1})).await?;
/// while let Some(msg) = cursors.recv().await {
///     println!("{}: {:?}", msg.event, msg.payload);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RealtimeChannel {
    pub(crate) inner: Arc<ChannelInner>,
}

impl std::fmt::Debug for RealtimeChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeChannel")
            .field("topic", &self.inner.topic)
            .field("status", &*self.inner.status.borrow())
            .finish()
    }
}

impl PartialEq for RealtimeChannel {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id && Arc::ptr_eq(&self.inner.shared, &other.inner.shared)
    }
}

impl RealtimeChannel {
    pub(crate) fn from_parts(shared: &Arc<Shared>, p: ChannelParts) -> RealtimeChannel {
        RealtimeChannel {
            inner: Arc::new(ChannelInner {
                id: p.id,
                topic: p.topic,
                config: p.config,
                shared: shared.clone(),
                status: p.status,
                presence: p.presence,
                dropped: p.dropped,
            }),
        }
    }

    /// Events of this channel dropped because a consumer that opted into a drop policy
    /// ([`ChannelConfig::overflow`]) was too slow. Always 0 under the default
    /// [`Overflow::Backpressure`](crate::Overflow::Backpressure).
    pub fn dropped_events(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn queue_spec(&self) -> QueueSpec {
        let o = &self.inner.shared.options;
        QueueSpec {
            capacity: o.event_queue_capacity,
            max_bytes: o.event_queue_bytes,
            overflow: self.inner.config.overflow.unwrap_or(o.overflow),
        }
    }

    /// The topic, `realtime:<name>`.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The sub-topic (`<name>`), as REST and SQL use it.
    pub fn name(&self) -> &str {
        self.inner
            .topic
            .strip_prefix("realtime:")
            .unwrap_or(&self.inner.topic)
    }

    /// The configuration it joins with.
    pub fn config(&self) -> &ChannelConfig {
        &self.inner.config
    }

    /// The current status.
    pub fn status(&self) -> ChannelStatus {
        self.inner.status.borrow().clone()
    }

    /// A `watch` of the status (every change is seen at least as its latest value).
    pub fn status_watch(&self) -> watch::Receiver<ChannelStatus> {
        self.inner.status.clone()
    }

    /// The presence state, always consistent with the server's (Phoenix sync algorithm).
    pub fn presence_state(&self) -> PresenceState {
        self.inner.presence.borrow().clone()
    }

    async fn command<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        self.inner.shared.command(make).await
    }

    async fn listen<T>(
        &self,
        filter: EventFilter,
        map: fn(ChannelEvent) -> Option<T>,
    ) -> Result<EventStream<T>> {
        let (sub, rx) = queue::queue(&self.inner.shared.flow, self.queue_spec());
        let id = self.inner.id;
        self.command(|reply| Command::Listen {
            id,
            filter,
            sub,
            reply,
        })
        .await??;
        Ok(EventStream::new(rx, map))
    }

    /// Subscribe (join). Resolves on `SUBSCRIBED`; fails with the server's reason on
    /// `CHANNEL_ERROR` ([`ErrorKind::Authorization`] for token/RLS refusals), or with
    /// [`ErrorKind::Timeout`]. It does not wait for its timeout when the socket cannot open:
    /// a handshake refused for the key or token (HTTP 401/403) fails it at once with
    /// [`ErrorKind::Authorization`] and the server's text (e.g. `Token has expired`), and a
    /// disconnected client with [`ErrorKind::NotConnected`].
    ///
    /// After a failure the channel keeps retrying in the background (as realtime-js) until
    /// [`unsubscribe`](Self::unsubscribe) — except after a binding mismatch, which leaves the
    /// channel, or when its [`RejoinPolicy`](crate::RejoinPolicy) gives up.
    pub async fn subscribe(&self) -> Result<()> {
        let id = self.inner.id;
        let wait = self.inner.shared.options.timeout + Duration::from_millis(500);
        let rx = self
            .inner
            .shared
            .send(|reply| Command::Subscribe { id, reply })
            .await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::closed()),
            Err(_) => Err(Error::timeout(format!(
                "subscribing to {} timed out",
                self.topic()
            ))),
        }
    }

    /// Leave the channel. It stays known to the client (see
    /// [`RealtimeClient::remove_channel`](crate::RealtimeClient::remove_channel)).
    pub async fn unsubscribe(&self) -> Result<()> {
        let id = self.inner.id;
        self.command(|reply| Command::Unsubscribe { id, reply })
            .await?
    }

    /// Send a broadcast. Over the socket when the channel is subscribed (waiting for the
    /// server's ack, up to the timeout, if [`ChannelConfig::broadcast_ack`] is set); buffered
    /// per the [`OfflinePolicy`](crate::OfflinePolicy) while the channel is rejoining; and
    /// through the REST endpoint when the channel was never subscribed (or was unsubscribed).
    ///
    /// Binary payloads go out as kind-3 frames on vsn 2.0.0 and are refused on 1.0.0.
    pub async fn send_broadcast(
        &self,
        event: &str,
        payload: impl Into<BroadcastPayload>,
    ) -> Result<()> {
        let payload = payload.into();
        let id = self.inner.id;
        let kind = PushKind::Broadcast {
            event: event.to_owned(),
            payload: payload.clone(),
        };
        let outcome = self
            .command(|reply| Command::Push { id, kind, reply })
            .await?;
        let rx = match outcome? {
            PushOutcome::Done => return Ok(()),
            PushOutcome::Wait(rx) => rx,
            PushOutcome::UseRest => return self.http_send(event, payload).await,
        };
        rx.await.map_err(|_| Error::closed())?
    }

    /// Send a broadcast through the REST endpoint
    /// `POST /api/broadcast/<name>/events/<event>` (PROTOCOL.md §7.4), whatever the socket
    /// is doing. Resolves when the server answered 202.
    pub async fn http_send(&self, event: &str, payload: impl Into<BroadcastPayload>) -> Result<()> {
        rest::send(
            &self.inner.shared,
            self.name(),
            event,
            &payload.into(),
            self.inner.config.private,
        )
        .await
    }

    /// Track this client's presence with `payload` (a JSON object). Waits for the server's
    /// reply when subscribed. While the channel is not joined the payload is remembered and
    /// tracked on (re)join; the call then returns at once. The payload is tracked again after
    /// every reconnect.
    pub async fn track(&self, payload: Value) -> Result<()> {
        self.push(PushKind::Track(payload)).await
    }

    /// Stop tracking presence.
    pub async fn untrack(&self) -> Result<()> {
        self.push(PushKind::Untrack).await
    }

    async fn push(&self, kind: PushKind) -> Result<()> {
        let id = self.inner.id;
        let outcome = self
            .command(|reply| Command::Push { id, kind, reply })
            .await?;
        match outcome? {
            PushOutcome::Done => Ok(()),
            PushOutcome::Wait(rx) => rx.await.map_err(|_| Error::closed())?,
            PushOutcome::UseRest => Err(Error::new(
                ErrorKind::NotConnected,
                "channel is not subscribed",
            )),
        }
    }

    /// Every event of the channel.
    pub async fn events(&self) -> Result<EventStream<ChannelEvent>> {
        self.listen(EventFilter::All, Some).await
    }

    /// Broadcasts of `event` (`*` for all; case-insensitive).
    pub async fn broadcasts(&self, event: &str) -> Result<EventStream<BroadcastMessage>> {
        self.listen(EventFilter::Broadcast(event.to_owned()), |e| match e {
            ChannelEvent::Broadcast(m) => Some(Arc::unwrap_or_clone(m)),
            _ => None,
        })
        .await
    }

    /// Presence events (sync, join, leave); each `Sync` carries the state. Registering one
    /// enables presence for the channel: on a channel that is joined (or joining) without
    /// presence, by leaving and joining again at once (status `JOINING` then `SUBSCRIBED`),
    /// as realtime-js and the official Python client do, so that the presence state arrives.
    pub async fn presence_events(&self) -> Result<EventStream<PresenceEvent>> {
        self.listen(EventFilter::Presence, |e| match e {
            ChannelEvent::Presence(p) => Some(Arc::unwrap_or_clone(p)),
            _ => None,
        })
        .await
    }

    /// `system` messages.
    pub async fn system_messages(&self) -> Result<EventStream<SystemMessage>> {
        self.listen(EventFilter::System, |e| match e {
            ChannelEvent::System(s) => Some(Arc::unwrap_or_clone(s)),
            _ => None,
        })
        .await
    }

    /// Status changes, in order (`SUBSCRIBED`, `TIMED_OUT`, `CLOSED`, `CHANNEL_ERROR`...).
    pub async fn status_changes(&self) -> Result<EventStream<ChannelStatus>> {
        self.listen(EventFilter::Status, |e| match e {
            ChannelEvent::Status(s) => Some(s),
            _ => None,
        })
        .await
    }

    /// Add a `postgres_changes` binding and get its changes. Bindings must be added before
    /// [`subscribe`](Self::subscribe) (they are part of the join); adding one later fails
    /// with [`ErrorKind::InvalidInput`].
    pub async fn postgres_changes(
        &self,
        filter: PostgresChangesFilter,
    ) -> Result<EventStream<PostgresChange>> {
        let (sub, rx) = queue::queue(&self.inner.shared.flow, self.queue_spec());
        let id = self.inner.id;
        self.command(|reply| Command::AddBinding {
            id,
            filter,
            sub,
            reply,
        })
        .await??;
        Ok(EventStream::new(rx, |e| match e {
            ChannelEvent::PostgresChanges(c) => Some(Arc::unwrap_or_clone(c)),
            _ => None,
        }))
    }

    /// Call `f` for each broadcast of `event` (`*` for all), on a task of its own.
    pub async fn on_broadcast(
        &self,
        event: &str,
        f: impl Fn(BroadcastMessage) + Send + 'static,
    ) -> Result<()> {
        let s = self.broadcasts(event).await?;
        queue::spawn_callback(&self.inner.shared.runtime, s, f);
        Ok(())
    }

    /// Call `f` for each presence event.
    pub async fn on_presence(&self, f: impl Fn(PresenceEvent) + Send + 'static) -> Result<()> {
        let s = self.presence_events().await?;
        queue::spawn_callback(&self.inner.shared.runtime, s, f);
        Ok(())
    }

    /// Call `f` for each change of a new `postgres_changes` binding (before subscribe).
    pub async fn on_postgres_changes(
        &self,
        filter: PostgresChangesFilter,
        f: impl Fn(PostgresChange) + Send + 'static,
    ) -> Result<()> {
        let s = self.postgres_changes(filter).await?;
        queue::spawn_callback(&self.inner.shared.runtime, s, f);
        Ok(())
    }

    /// Call `f` for each `system` message.
    pub async fn on_system(&self, f: impl Fn(SystemMessage) + Send + 'static) -> Result<()> {
        let s = self.system_messages().await?;
        queue::spawn_callback(&self.inner.shared.runtime, s, f);
        Ok(())
    }

    /// Call `f` on each status change.
    pub async fn on_status(&self, f: impl Fn(ChannelStatus) + Send + 'static) -> Result<()> {
        let s = self.status_changes().await?;
        queue::spawn_callback(&self.inner.shared.runtime, s, f);
        Ok(())
    }

    /// Errors of the channel: entering `CHANNEL_ERROR` or `TIMED_OUT` (the error's
    /// [`kind`](Error::kind) and the server's reason), and reports of events dropped for
    /// consumers that opted into a drop policy ([`ErrorKind::Overflow`], naming how many).
    pub async fn errors(&self) -> Result<EventStream<Error>> {
        let topic: fn(ChannelEvent) -> Option<Error> = |e| match e {
            ChannelEvent::Status(s) => s.to_error(),
            ChannelEvent::Dropped { count, total } => Some(Error::overflow(count, total)),
            _ => None,
        };
        self.listen(EventFilter::Errors, topic).await
    }

    /// Call `f` for each of [`errors`](Self::errors).
    pub async fn on_error(&self, f: impl Fn(Error) + Send + 'static) -> Result<()> {
        let s = self.errors().await?;
        queue::spawn_callback(&self.inner.shared.runtime, s, f);
        Ok(())
    }

    /// Call `f` whenever the channel is closed (by `unsubscribe` or by the server, with its
    /// reason).
    pub async fn on_close(&self, f: impl Fn(Option<String>) + Send + 'static) -> Result<()> {
        self.on_status(move |s| {
            if let ChannelStatus::Closed { reason } = s {
                f(reason)
            }
        })
        .await
    }
}
