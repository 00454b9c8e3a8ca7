//! Broadcast from the database: inserts into `realtime.messages` (by `realtime.send`,
//! `realtime.broadcast_changes` triggers, or any insert) streamed by logical replication and
//! fanned out to the topic's subscribers, as upstream's ReplicationConnection does (§10.6).
//!
//! Streaming, not polling: a commit reaches subscribers in about a millisecond. The slot is
//! temporary, as upstream's: messages committed while the server is down are not streamed
//! later, but stay readable through `broadcast.replay` for three days.
//!
//! In cluster mode one node reads a permanent slot for the cluster and publishes through
//! Redis instead ([`super::broadcast_cluster`]); this module then only decodes the rows.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use supa_realtime_protocol::{UserBroadcast, UserPayload, TOPIC_PREFIX};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::fanout::Body;
use crate::metrics::Stream;
use crate::registry::TopicKey;
use crate::replication::pgoutput::{Datum, Message, Relation};
use crate::replication::stream::{Frame, LogicalStream};
use crate::replication::{quote_ident, ConnParams, ReplicationConnection};
use crate::state::AppState;

/// Why a streaming session ended (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("{0}")]
    Database(#[from] super::DbError),
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("replication: {0}")]
    Replication(#[from] crate::replication::ReplError),
    #[error("replication: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// The publication upstream streams `realtime.messages` from.
pub(crate) const PUBLICATION: &str = "supabase_realtime_messages_publication";

/// Keep the stream up until shutdown, reconnecting with backoff.
pub(crate) async fn run(state: Arc<AppState>, db: Arc<Database>, shutdown: CancellationToken) {
    if state.cluster.is_some() {
        return super::broadcast_cluster::run(state, db, shutdown).await;
    }
    let mut delay = Duration::from_millis(200);
    loop {
        if db.is_ready() {
            let result = session(&state, &db, &shutdown).await;
            db.streaming.store(false, Ordering::SeqCst);
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database broadcast stream down");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        if db.is_ready() {
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

pub(crate) const ENSURE_PUBLICATION: &str = "
DO $p$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('supabase_realtime_messages_publication'));
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime_messages_publication') THEN
    CREATE PUBLICATION supabase_realtime_messages_publication FOR TABLE realtime.messages
      WITH (publish = 'insert', publish_via_partition_root = true);
  ELSIF NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'supabase_realtime_messages_publication'
                    AND schemaname = 'realtime' AND tablename = 'messages') THEN
    -- the table was dropped and made again (its publication membership went with it)
    ALTER PUBLICATION supabase_realtime_messages_publication ADD TABLE realtime.messages;
  END IF;
END
$p$;";

async fn session(
    state: &Arc<AppState>,
    db: &Database,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let client = db.client().await?;
    client.batch_execute(ENSURE_PUBLICATION).await?;
    drop(client);
    let cfg: tokio_postgres::Config = db.url.parse().map_err(StreamError::Url)?;
    let params = ConnParams::from_config(&cfg)?;
    let mut repl = ReplicationConnection::connect(&params, Duration::from_secs(10)).await?;
    let slot = format!(
        "supabase_realtime_messages_replication_slot_{:08x}",
        rand::random::<u32>()
    );
    repl.simple_query(&format!(
        "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        quote_ident(&slot)
    ))
    .await?;
    let mut stream = LogicalStream::start(repl, &slot, 0, PUBLICATION)
        .await
        .map_err(|(_, e)| e)?;
    tracing::info!(slot, "streaming database broadcasts from realtime.messages");
    db.streaming.store(true, Ordering::SeqCst);

    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut commit_ts = 0i64;
    let mut status = tokio::time::interval(Duration::from_secs(1));
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = status.tick() => {
                stream.tick().await?;
                state.metrics.replication_confirmed(Stream::DatabaseBroadcast, stream.confirmed(), 0);
                continue;
            }
            f = stream.next() => f?,
        };
        match frame {
            Frame::Message(Message::Relation(r)) => {
                relations.insert(r.id, r);
            }
            Frame::Message(Message::Insert { rel, new }) => {
                if let Some(r) = relations.get(&rel) {
                    if is_messages(r) {
                        deliver(state, r, &new);
                        state.metrics.database_broadcast(commit_ts);
                    }
                }
            }
            Frame::Message(Message::Begin { commit_ts: ts, .. }) => commit_ts = ts,
            // handed to the subscribers' queues in order: confirmed at the next tick
            Frame::Message(Message::Commit { end_lsn, .. }) => {
                stream.idle(end_lsn, false, true).await?
            }
            Frame::Message(_) => {}
            Frame::Undecodable(e) => {
                tracing::warn!(error = %e, "undecodable replication message skipped")
            }
            // Everything before the server's WAL end has been received and handled in order.
            Frame::Keepalive { wal_end, reply } => stream.idle(wal_end, reply, true).await?,
        }
    }
}

fn column<'a>(r: &Relation, row: &'a [Datum], name: &str) -> Option<&'a str> {
    let i = r.columns.iter().position(|c| c.name == name)?;
    match row.get(i)? {
        Datum::Text(t) => Some(t.as_str()),
        _ => None,
    }
}

fn hex_bytea(text: &str) -> Option<Bytes> {
    let hex = text.strip_prefix("\\x")?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.map(Bytes::from)
}

/// A row of `realtime.messages` to broadcast, decoded.
pub(crate) struct Stored {
    pub(crate) key: TopicKey,
    pub(crate) id: String,
    pub(crate) body: Body,
}

/// Whether a relation is `realtime.messages` (or one of its partitions).
pub(crate) fn is_messages(r: &Relation) -> bool {
    r.schema == "realtime" && r.table.starts_with("messages")
}

/// The broadcast an inserted row makes, if any: counted once against the tenant's events
/// limit (dropped, logged, when over it or over the payload limit).
pub(crate) fn stored(state: &AppState, r: &Relation, row: &[Datum]) -> Option<Stored> {
    if column(r, row, "extension") != Some("broadcast") {
        return None;
    }
    let (Some(topic), Some(id)) = (column(r, row, "topic"), column(r, row, "id")) else {
        return None;
    };
    let event = column(r, row, "event").unwrap_or("").to_owned();
    let private = column(r, row, "private") == Some("t");
    let payload = match (column(r, row, "payload"), column(r, row, "binary_payload")) {
        (Some(json), _) => UserPayload::Json(Bytes::from(json.to_owned())),
        (None, Some(bin)) => UserPayload::Binary(hex_bytea(bin)?),
        (None, None) => UserPayload::Json(Bytes::from_static(b"{}")),
    };
    if payload.bytes().len() > state.config.max_payload_bytes() {
        tracing::warn!(
            topic,
            id,
            "database broadcast over the payload limit: dropped"
        );
        return None;
    }
    // The message itself counts once (each delivery counts too, where it is made).
    if state.events.add_and_check(1) {
        tracing::warn!(
            topic,
            id,
            "database broadcast dropped: too many messages per second"
        );
        return None;
    }
    let metadata = Bytes::from(json!({"id": id}).to_string());
    Some(Stored {
        key: TopicKey {
            name: topic.to_owned(),
            private,
        },
        id: id.to_owned(),
        body: Body::User(UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: format!("{TOPIC_PREFIX}{topic}"),
            event,
            metadata: Some(metadata),
            payload,
        }),
    })
}

fn deliver(state: &AppState, r: &Relation, row: &[Datum]) {
    let Some(s) = stored(state, r, row) else {
        return;
    };
    if let Some(t) = state.registry.get(&s.key) {
        t.broadcast_stored(s.body, &s.id, &state.events);
    }
}
