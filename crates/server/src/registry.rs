//! Topics and their subscribers.
//!
//! A topic is a (name, private) pair: upstream keeps public and private channels of the same
//! name in different rooms. Joining and leaving are O(1) map operations; fan-out walks the
//! subscriber map under a read lock and only `try_send`s, so no lock is held across an await
//! and no socket can slow another down.
//!
//! In cluster mode a [`TopicHooks`] implementation (the cluster module) is told when a topic
//! opens and closes on this node and receives its broadcasts and presence changes; it delivers
//! them back through [`Topic::broadcast_local`] and [`Topic::apply_remote_presence`]. Without
//! hooks every call below runs the single-node path unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use supa_realtime_protocol::presence::PresenceDiff;
use supa_realtime_protocol::{event, Message, Serializer};
use tokio::sync::mpsc;

use crate::fanout::{Body, Encoded, SubId};
use crate::limits::{ClientRate, RateCounter};
use crate::metrics::Metrics;
use crate::outbox::{Control, Outbox};
use crate::presence::PresenceTracker;

/// Which room: public and private channels with one name are different rooms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopicKey {
    /// The sub-topic, `room1` for `realtime:room1`.
    pub(crate) name: String,
    pub(crate) private: bool,
}

/// What a cluster needs to see of a topic's life on this node. Implemented by the cluster
/// module; the registry never depends on it.
pub(crate) trait TopicHooks: Send + Sync + std::fmt::Debug {
    /// The topic has its first local channel (the node should start receiving it).
    fn opened(&self, topic: &Arc<Topic>);
    /// The topic has no local channel any more.
    fn closed(&self, key: &TopicKey);
    /// A broadcast made on this node, for every node (this one included) to deliver.
    /// `tenant`: its deliveries count against the tenant's events counter (not a client's
    /// push, whose receivers' budgets pay instead).
    fn publish(&self, topic: &Topic, body: Body, exclude: Option<SubId>, tenant: bool);
    /// A presence change made on this node, for the other nodes.
    fn presence(&self, topic: &Topic, diff: &PresenceDiff);
}

/// A joined channel as the topic sees it.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The `ref` of its join, which a `phx_error` must carry to reach it.
    pub(crate) join_ref: Option<String>,
    pub(crate) outbox: Outbox,
    pub(crate) control: mpsc::Sender<Control>,
    pub(crate) serializer: Serializer,
    /// Whether it may receive broadcasts (always on public channels; by RLS on private ones).
    pub(crate) reads_broadcast: bool,
    /// Whether it may receive presence.
    pub(crate) reads_presence: bool,
    /// Ids of stored messages already replayed to it, not to be delivered again live.
    pub(crate) replayed: Option<Arc<HashSet<String>>>,
    /// Its socket's events budget: every delivery counts against it (see `limits`).
    pub(crate) rate: Arc<ClientRate>,
    /// Set once a fan-out found the budget spent and asked the channel to close.
    pub(crate) closing: Arc<AtomicBool>,
}

/// One room.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) key: TopicKey,
    subs: RwLock<HashMap<SubId, Subscriber>>,
    presence: Mutex<PresenceTracker>,
    hooks: Option<Arc<dyn TopicHooks>>,
    metrics: Arc<Metrics>,
}

/// Why a receiving channel is being closed by a fan-out.
pub(crate) const TOO_MANY_MESSAGES: &str = "Too many messages per second";
pub(crate) const TOO_MANY_PRESENCE: &str = "Too many presence messages per second";

impl Topic {
    fn new(key: TopicKey, hooks: Option<Arc<dyn TopicHooks>>, metrics: Arc<Metrics>) -> Self {
        Topic {
            key,
            subs: RwLock::new(HashMap::new()),
            presence: Mutex::new(PresenceTracker::default()),
            hooks,
            metrics,
        }
    }

    /// The wire topic, `realtime:<name>`.
    pub(crate) fn wire_topic(&self) -> String {
        format!("{}{}", supa_realtime_protocol::TOPIC_PREFIX, self.key.name)
    }

    /// Add a subscriber. `before_visible` runs while the subscriber is registered but before
    /// any fan-out can reach it, so the join reply and presence state queue first.
    pub(crate) fn add(
        &self,
        id: SubId,
        sub: Subscriber,
        before_visible: impl FnOnce(&PresenceTracker),
    ) {
        // Lock order everywhere: presence, then subscribers.
        let presence = self.presence.lock();
        let mut subs = self.subs.write();
        before_visible(&presence);
        subs.insert(id, sub);
    }

    /// Remove a subscriber and its presence; the leave is fanned out.
    pub(crate) fn remove(&self, id: SubId, presence_limit: &RateCounter) {
        let mut presence = self.presence.lock();
        let diff = presence.untrack(id);
        self.subs.write().remove(&id);
        if let Some(diff) = diff {
            self.fan_out_presence(&diff, presence_limit);
            if let Some(hooks) = &self.hooks {
                hooks.presence(self, &diff);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        // The lock order everywhere is presence, then subscribers: taking them the other way
        // round here (a guard lives to the end of its expression) could deadlock with `remove`.
        let presence = self.presence.lock();
        let subs = self.subs.read();
        subs.is_empty() && presence.is_empty()
    }

    /// Fan a message out to every subscriber but `exclude`, counting deliveries against the
    /// events limit `events` (REST: the tenant's). In cluster mode it goes to every node, this
    /// one included, through the cluster (which calls [`Topic::broadcast_local`]).
    pub(crate) fn broadcast(&self, body: Body, exclude: Option<SubId>, events: &RateCounter) {
        match &self.hooks {
            Some(hooks) => hooks.publish(self, body, exclude, true),
            None => {
                self.broadcast_local(body, exclude, Some(events));
            }
        }
    }

    /// Fan out to this node's subscribers only, counting the deliveries against `events` if
    /// given (the tenant's counter: REST and database broadcasts). Returns how many got it.
    pub(crate) fn broadcast_local(
        &self,
        body: Body,
        exclude: Option<SubId>,
        events: Option<&RateCounter>,
    ) -> usize {
        self.deliver(body, events, |id, _| Some(id) != exclude)
    }

    /// Fan out what a socket pushed: its own budget paid for the push, each receiver's pays
    /// for its delivery.
    /// In cluster mode it goes to every node through the cluster, whose deliveries count
    /// against each receiver's budget only, as here; returns 0 then.
    pub(crate) fn broadcast_from_client(&self, body: Body, exclude: Option<SubId>) -> usize {
        match &self.hooks {
            Some(hooks) => {
                hooks.publish(self, body, exclude, false);
                0
            }
            None => self.deliver(body, None, |id, _| Some(id) != exclude),
        }
    }

    /// Send `phx_error` to every local channel: the cluster lost messages of this topic that
    /// cannot be recovered, so the clients rejoin rather than live with a silent gap.
    pub(crate) fn error_all(&self) -> usize {
        let subs = self.subs.read();
        let topic = self.wire_topic();
        for sub in subs.values() {
            let m = Message::new(
                sub.join_ref.clone(),
                sub.join_ref.clone(),
                topic.clone(),
                event::PHX_ERROR,
                serde_json::json!({}),
            );
            sub.outbox.send(crate::fanout::to_ws(
                sub.serializer.encode_server_message(&m),
            ));
        }
        subs.len()
    }

    /// Apply presence reported by other nodes and fan out the resulting diff.
    pub(crate) fn apply_remote_presence(
        &self,
        presence_limit: &RateCounter,
        joins: Vec<(String, String, supa_realtime_protocol::presence::Meta)>,
        leaves: &[String],
        replace: bool,
    ) {
        let mut presence = self.presence.lock();
        if let Some(diff) = presence.apply_remote(joins, leaves, replace) {
            self.fan_out_presence(&diff, presence_limit);
        }
    }

    /// Fan out a message stored in the database (`id`), skipping subscribers that already got
    /// it by replay.
    pub(crate) fn broadcast_stored(&self, body: Body, id: &str, events: &RateCounter) -> usize {
        self.deliver(body, Some(events), |_, sub| {
            sub.replayed.as_ref().is_none_or(|r| !r.contains(id))
        })
    }

    fn deliver(
        &self,
        body: Body,
        events: Option<&RateCounter>,
        wanted: impl Fn(SubId, &Subscriber) -> bool,
    ) -> usize {
        let encoded = Encoded::new(body);
        let subs = self.subs.read();
        let receivers: Vec<(SubId, &Subscriber)> = subs
            .iter()
            .filter(|(id, sub)| sub.reads_broadcast && wanted(**id, sub))
            .map(|(id, sub)| (*id, sub))
            .collect();
        if receivers.is_empty() {
            return 0;
        }
        if let Some(events) = events {
            events.add(receivers.len() as u64);
        }
        let now = std::time::Instant::now();
        let mut delivered = 0;
        for (id, sub) in receivers {
            // A receiver over its socket's budget gets upstream's shutdown instead, once; the
            // others are not affected.
            if sub.rate.add_and_check_at(1, now) {
                if !sub.closing.swap(true, Ordering::AcqRel)
                    && !close_channel(id, sub, TOO_MANY_MESSAGES)
                {
                    // The close could not be queued: the next delivery asks again.
                    sub.closing.store(false, Ordering::Release);
                }
                continue;
            }
            if let Some(frame) = encoded.frame(sub.serializer) {
                if sub.outbox.send(frame) {
                    delivered += 1;
                }
            }
        }
        self.metrics.messages_out("broadcast", delivered as u64);
        delivered
    }

    /// Change what a subscriber may read (after a token refresh re-ran authorization).
    pub(crate) fn set_access(&self, id: SubId, reads_broadcast: bool, reads_presence: bool) {
        if let Some(sub) = self.subs.write().get_mut(&id) {
            sub.reads_broadcast = reads_broadcast;
            sub.reads_presence = reads_presence;
        }
    }

    /// Apply a presence change under the presence lock and fan out its diff, so diffs reach
    /// every subscriber in the order they happened.
    pub(crate) fn update_presence(
        &self,
        presence_limit: &RateCounter,
        change: impl FnOnce(&mut PresenceTracker) -> Option<PresenceDiff>,
    ) {
        let mut presence = self.presence.lock();
        if let Some(diff) = change(&mut presence) {
            self.fan_out_presence(&diff, presence_limit);
            if let Some(hooks) = &self.hooks {
                hooks.presence(self, &diff);
            }
        }
    }

    fn fan_out_presence(&self, diff: &PresenceDiff, presence_limit: &RateCounter) {
        let subs = self.subs.read();
        let readers = subs.values().filter(|s| s.reads_presence).count();
        if readers == 0 {
            return;
        }
        if presence_limit.add_and_check(readers as u64) {
            for (id, sub) in subs.iter().filter(|(_, s)| s.reads_presence) {
                let _ = close_channel(*id, sub, TOO_MANY_PRESENCE);
            }
            return;
        }
        let encoded = Encoded::new(Body::Json(Message::fanout(
            self.wire_topic(),
            event::PRESENCE_DIFF,
            diff.to_wire(),
        )));
        let mut sent = 0;
        for sub in subs.values().filter(|s| s.reads_presence) {
            if let Some(frame) = encoded.frame(sub.serializer) {
                sent += u64::from(sub.outbox.send(frame));
            }
        }
        self.metrics.messages_out("presence_diff", sent);
    }
}

/// Ask a channel's connection to close it; `false` if the request could not be queued.
fn close_channel(id: SubId, sub: &Subscriber, message: &'static str) -> bool {
    sub.control
        .try_send(Control::CloseChannel {
            sub: id,
            message: message.to_owned(),
        })
        .is_ok()
}

/// All topics of the server.
#[derive(Debug)]
pub(crate) struct Registry {
    topics: RwLock<HashMap<TopicKey, Arc<Topic>>>,
    hooks: Option<Arc<dyn TopicHooks>>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            topics: RwLock::new(HashMap::new()),
            hooks: None,
            metrics,
        }
    }

    /// A registry whose topics report to `hooks` (cluster mode).
    pub(crate) fn with_hooks(hooks: Arc<dyn TopicHooks>, metrics: Arc<Metrics>) -> Self {
        Registry {
            topics: RwLock::new(HashMap::new()),
            hooks: Some(hooks),
            metrics,
        }
    }

    /// Run `f` with the topic for `key`, creating it if needed. The registry's read lock is
    /// held meanwhile, so a concurrent [`Registry::release`] cannot drop the topic under us.
    pub(crate) fn with_topic<R>(&self, key: &TopicKey, f: impl FnOnce(&Arc<Topic>) -> R) -> R {
        {
            let topics = self.topics.read();
            if let Some(t) = topics.get(key) {
                return f(t);
            }
        }
        let mut topics = self.topics.write();
        let t = topics
            .entry(key.clone())
            .or_insert_with(|| {
                let t = Arc::new(Topic::new(
                    key.clone(),
                    self.hooks.clone(),
                    self.metrics.clone(),
                ));
                // Under the write lock, so opened/closed reach the hooks in order.
                if let Some(hooks) = &self.hooks {
                    hooks.opened(&t);
                }
                t
            })
            .clone();
        let topics = parking_lot::RwLockWriteGuard::downgrade(topics);
        let r = f(&t);
        drop(topics);
        r
    }

    /// The topic for `key` if anyone is in it.
    pub(crate) fn get(&self, key: &TopicKey) -> Option<Arc<Topic>> {
        self.topics.read().get(key).cloned()
    }

    /// Drop the topic if nobody is left in it.
    pub(crate) fn release(&self, key: &TopicKey) {
        let mut topics = self.topics.write();
        if topics.get(key).is_some_and(|t| t.is_empty()) {
            topics.remove(key);
            if let Some(hooks) = &self.hooks {
                hooks.closed(key);
            }
        }
    }
}
