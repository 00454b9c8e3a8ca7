//! One joined channel as its connection keeps it.

use std::sync::Arc;

use supa_realtime_protocol::join::JoinConfig;

use crate::auth::Claims;
use crate::database::authorization::ReadAccess;
use crate::fanout::SubId;
use crate::limits::SlidingWindow;
use crate::postgres::Subscription;
use crate::registry::Topic;

/// A channel instance: created by a successful `phx_join`, gone after leave or close.
pub(crate) struct Channel {
    pub(crate) sub: SubId,
    pub(crate) topic: Arc<Topic>,
    /// The `ref` of the join that created it; `phx_close` carries it.
    pub(crate) join_ref: Option<String>,
    pub(crate) config: JoinConfig,
    pub(crate) presence_key: String,
    /// The token this channel is authorized by, and its claims.
    pub(crate) token: String,
    pub(crate) claims: Claims,
    /// Bumped on every token change so that stale expiry timers are ignored.
    pub(crate) token_generation: u64,
    pub(crate) presence_calls: SlidingWindow,
    /// Held for its Drop: dropping it unsubscribes from postgres_changes.
    pub(crate) postgres: Option<Subscription>,
    /// What RLS lets this channel read (everything on public channels).
    pub(crate) access: ReadAccess,
    /// Write permission, checked on the first broadcast / track of a private channel and kept
    /// until the token changes.
    pub(crate) may_broadcast: Option<bool>,
    pub(crate) may_track: Option<bool>,
}

impl Channel {
    /// The sub-topic, as system messages name the channel.
    pub(crate) fn name(&self) -> &str {
        &self.topic.key.name
    }
}
