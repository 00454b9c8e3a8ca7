//! `config.broadcast.replication_ready`: tell a channel when database broadcasts stream.
//!
//! Upstream checks its replication connection right after the join and then every 500 ms; once
//! it is up the channel gets one `system` message saying so, and a channel still waiting after
//! the timeout (one minute) is shut down. Here the replication connection is the database
//! broadcast stream, whose state [`crate::database::Database::streaming`] holds. A small task
//! per opted-in channel polls it and reports to the connection's read loop through
//! [`Control`], so the message queues after the join reply and never for a channel that has
//! gone. Without a database the connection can never be established, so the channel gets
//! upstream's timeout error at once instead of after a minute of waiting for nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use supa_realtime_protocol::{event, Message};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Connection, Control};
use crate::database::Database;
use crate::fanout::SubId;

/// How often upstream re-checks the replication connection.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The `system` message once the replication connection is up.
pub(crate) const REPLICATION_ESTABLISHED: &str = "Replication connection established";

/// Why a channel still waiting after the timeout is shut down.
pub(crate) const REPLICATION_NOT_IN_TIME: &str =
    "Replication connection was not established in time";

/// Watch the replication connection for channel `sub` until it is up or the timeout passes.
pub(super) fn watch(
    database: Option<Arc<Database>>,
    sub: SubId,
    timeout: Duration,
    control: mpsc::Sender<Control>,
) {
    tokio::spawn(async move {
        let Some(db) = database else {
            let _ = control
                .send(Control::CloseChannel {
                    sub,
                    message: REPLICATION_NOT_IN_TIME.to_owned(),
                })
                .await;
            return;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if db.streaming.load(Ordering::SeqCst) {
                let _ = control.send(Control::ReplicationReady { sub }).await;
                return;
            }
            if Instant::now() >= deadline {
                let _ = control
                    .send(Control::CloseChannel {
                        sub,
                        message: REPLICATION_NOT_IN_TIME.to_owned(),
                    })
                    .await;
                return;
            }
            // The connection (or the channel's whole socket) went away: stop watching.
            if control.is_closed() {
                return;
            }
            tokio::time::sleep(CHECK_INTERVAL.min(deadline - Instant::now())).await;
        }
    });
}

impl Connection {
    /// Push upstream's "established" message to channel `sub`, if it is still joined.
    pub(super) fn replication_ready(&self, sub: SubId) {
        let Some(topic) = self.topic_of(sub) else {
            return;
        };
        let Some(channel) = self.channels.get(&topic) else {
            return;
        };
        self.push(&Message::channel_push(
            channel.join_ref.clone(),
            &topic,
            event::SYSTEM,
            json!({"extension": "system", "status": "ok", "message": REPLICATION_ESTABLISHED, "channel": channel.name()}),
        ));
    }
}
