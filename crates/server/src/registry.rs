//! Topics and their subscribers.
//!
//! A topic is a (name, private) pair: upstream keeps public and private channels of the same
//! name in different rooms. Joining and leaving are O(1) map operations; fan-out walks the
//! subscriber map under a read lock and only `try_send`s, so no lock is held across an await
//! and no socket can slow another down.

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

/// A joined channel as the topic sees it.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
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
    metrics: Arc<Metrics>,
}

/// Why a receiving channel is being closed by a fan-out.
pub(crate) const TOO_MANY_MESSAGES: &str = "Too many messages per second";
pub(crate) const TOO_MANY_PRESENCE: &str = "Too many presence messages per second";

impl Topic {
    fn new(key: TopicKey, metrics: Arc<Metrics>) -> Self {
        Topic {
            key,
            subs: RwLock::new(HashMap::new()),
            presence: Mutex::new(PresenceTracker::default()),
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
    /// events limit `events` (REST: the tenant's). Returns how many subscribers got it.
    pub(crate) fn broadcast(
        &self,
        body: Body,
        exclude: Option<SubId>,
        events: &RateCounter,
    ) -> usize {
        self.deliver(body, Some(events), |id, _| Some(id) != exclude)
    }

    /// Fan out what a socket pushed: its own budget paid for the push, each receiver's pays
    /// for its delivery.
    pub(crate) fn broadcast_from_client(&self, body: Body, exclude: Option<SubId>) -> usize {
        self.deliver(body, None, |id, _| Some(id) != exclude)
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
    metrics: Arc<Metrics>,
}

impl Registry {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            topics: RwLock::new(HashMap::new()),
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
            .or_insert_with(|| Arc::new(Topic::new(key.clone(), self.metrics.clone())))
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
        }
    }
}
