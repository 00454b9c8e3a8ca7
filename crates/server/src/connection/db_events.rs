//! The database-events limiter: postgres_changes deliveries per second, server-wide.
//!
//! Upstream (`ReplicationPoller`, `Tenants.db_events_per_second_rate`) keeps a tenant-wide
//! counter apart from the broadcast events counter, with the same limit (the tenant's
//! `max_events_per_second`, averaged over 60 s): every change read from the slot adds the
//! number of subscription ids it goes to, and while the average is over the limit the
//! changes read are skipped, reported only in its own log ("MessagePerSecondRateLimitReached:
//! Too many postgres changes messages per second") and telemetry. Broadcasts and presence are
//! not affected, nor is the counter by what was skipped.
//!
//! Here the same counter, limit and accounting (one per binding id of each delivery), on by
//! default with `max_events_per_second` as its limit. What is not delivered is never lost
//! silently: the channel is told with a `system` error the first time (and again after
//! deliveries resumed), every drop is counted in `/metrics`
//! (`realtime_postgres_changes_rate_limited_total`), and drops are logged.

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
        let metrics = self.state.metrics.clone();
        Arc::new(move |ev: FeedEvent| {
            if let FeedEvent::Change(change) = &ev {
                if !gate.admit(change.ids()) {
                    metrics.postgres_change_rate_limited();
                    let n = gate.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if !gate.dropping.swap(true, Ordering::AcqRel) && outbox.send(notice.clone()) {
                        metrics.messages_out("system", 1);
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
    fn admit(&self, ids: u32) -> bool {
        if !self.limiter.try_add(u64::from(ids)) {
            return false;
        }
        self.dropping.store(false, Ordering::Release);
        true
    }
}
