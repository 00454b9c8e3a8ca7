//! The database-events limiter: postgres_changes deliveries per second, server-wide.
//!
//! Upstream counts every change once per subscription it goes to and, while the average over
//! 60 s is at or above the tenant's limit, skips changes without telling anyone
//! ("MessagePerSecondRateLimitReached: Too many postgres changes messages per second" in its
//! own log only). Dropping changes loses data, so here the limiter is off unless
//! `MAX_DB_EVENTS_PER_SECOND` is set, and when it drops, the channel is told with a `system`
//! error the first time (and again after deliveries resumed), and every drop is counted in the
//! log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use supa_realtime_protocol::{event, Message, TOPIC_PREFIX};

use super::Connection;
use crate::fanout::to_ws;
use crate::limits::RateCounter;
use crate::postgres::{FeedEvent, Sink};

/// What a channel is told when its changes start being dropped.
pub(crate) const TOO_MANY_DB_EVENTS: &str = "Too many postgres changes messages per second";

impl Connection {
    /// `sink` of channel `name` behind the database-events limiter, if one is configured.
    pub(super) fn limit_db_events(&self, sink: Sink, name: &str) -> Sink {
        let Some(limiter) = self.state.db_events.clone() else {
            return sink;
        };
        let notice = to_ws(self.serializer.encode_server_message(&Message::fanout(
            format!("{TOPIC_PREFIX}{name}"),
            event::SYSTEM,
            json!({"extension": "postgres_changes", "status": "error", "message": TOO_MANY_DB_EVENTS, "channel": name}),
        )));
        let gate = Gate {
            limiter,
            dropping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        };
        let (outbox, conn, topic) = (self.outbox.clone(), self.id, name.to_owned());
        Arc::new(move |ev: FeedEvent| {
            if matches!(ev, FeedEvent::Change { .. }) && !gate.admit() {
                let n = gate.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if !gate.dropping.swap(true, Ordering::AcqRel) {
                    outbox.send(notice.clone());
                }
                if n.is_power_of_two() {
                    tracing::warn!(
                        conn,
                        topic,
                        dropped = n,
                        "MessagePerSecondRateLimitReached: {TOO_MANY_DB_EVENTS}: changes dropped"
                    );
                }
                return;
            }
            sink(ev);
        })
    }
}

struct Gate {
    limiter: Arc<RateCounter>,
    /// Set while changes are being dropped (the channel has been told).
    dropping: AtomicBool,
    dropped: AtomicU64,
}

impl Gate {
    /// As upstream, a dropped change is not counted: deliveries resume once the average of
    /// what was delivered falls back under the limit.
    fn admit(&self) -> bool {
        if self.limiter.exceeded() {
            return false;
        }
        self.limiter.add(1);
        self.dropping.store(false, Ordering::Release);
        true
    }
}
