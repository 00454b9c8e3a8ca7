//! Database broadcast in cluster mode: one node of the cluster streams `realtime.messages`
//! from a permanent slot and publishes each message through Redis (design and bounds:
//! `cluster/messages.rs`).
//!
//! The other nodes stand by: no slot, no walsender, waiting for the lease. The reader
//! confirms a transaction's end to PostgreSQL only once Redis has accepted every publish up to
//! it, so a reader killed at any moment leaves the next one a position from which nothing
//! committed is missing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::broadcast_stream::{self, StreamError, PUBLICATION};
use super::Database;
use crate::cluster::{ClusterError, DbBroadcast, MAX_IN_FLIGHT, STATUS_BATCH, STATUS_EVERY};
use crate::metrics::Stream;
use crate::postgres::SlotGate;
use crate::replication::pgoutput::{Message, Relation};
use crate::replication::stream::{Frame, LogicalStream};
use crate::replication::{quote_ident, ConnParams, ReplError, ReplicationConnection};
use crate::state::AppState;

/// SQLSTATE of `START_REPLICATION` on a slot another walsender holds.
const SLOT_IN_USE: &str = "55006";
/// SQLSTATE of creating a slot that exists.
const DUPLICATE_OBJECT: &str = "42710";

type Ack = oneshot::Receiver<Result<(), ClusterError>>;

/// Stand by until this node holds the lease, then stream until it is lost, the session
/// fails (the lease is then released so another node may try) or the server shuts down.
pub(crate) async fn run(state: Arc<AppState>, db: Arc<Database>, shutdown: CancellationToken) {
    let Some(cluster) = state.cluster.as_ref() else {
        return;
    };
    let reader = match cluster.db_broadcast(&state.config.slot_name) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "database broadcast: cannot use the cluster lease");
            return;
        }
    };
    let gate = reader.lease.clone();
    let mut delay = Duration::from_millis(200);
    loop {
        if db.is_ready() {
            let lost = tokio::select! {
                lost = gate.acquire() => lost,
                () = shutdown.cancelled() => return,
            };
            tracing::info!(slot = %reader.slot, "database broadcast: this node reads the cluster's slot");
            let result = session(&state, &db, &reader, &lost, &shutdown).await;
            db.streaming.store(false, Ordering::SeqCst);
            match result {
                Ok(()) if shutdown.is_cancelled() => return,
                Ok(()) => {
                    tracing::warn!(slot = %reader.slot, "database broadcast: lease lost; standing by");
                    delay = Duration::from_millis(200);
                    continue;
                }
                Err(e) => {
                    if matches!(e, StreamError::Cluster(_)) {
                        reader.stats.redis_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database broadcast stream down; nothing unconfirmed is lost (the next reader re-reads it)");
                    gate.release();
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Create the cluster's slot if it is missing (only the lease holder gets here).
async fn ensure_slot(
    client: &tokio_postgres::Client,
    repl: &mut ReplicationConnection,
    slot: &str,
) -> Result<(), StreamError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let created = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(slot)
        ))
        .await;
    match created {
        Ok(_) => {
            tracing::info!(
                slot,
                "database broadcast: created the cluster's replication slot"
            );
            Ok(())
        }
        Err(ReplError::Server { code, .. }) if code == DUPLICATE_OBJECT => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Start streaming the slot from its confirmed position; a walsender a dead reader left is
/// terminated (its node lost the lease: it may not stream).
async fn start(
    client: &tokio_postgres::Client,
    params: &ConnParams,
    slot: &str,
) -> Result<LogicalStream, StreamError> {
    let mut repl = ReplicationConnection::connect(params, Duration::from_secs(10)).await?;
    ensure_slot(client, &mut repl, slot).await?;
    let mut tries = 0;
    loop {
        match LogicalStream::start(repl, slot, 0, PUBLICATION).await {
            Ok(stream) => return Ok(stream),
            Err((_, ReplError::Server { code, message })) if code == SLOT_IN_USE && tries < 5 => {
                tries += 1;
                tracing::warn!(%message, "database broadcast slot in use; terminating the previous reader's walsender");
                client
                    .execute(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                         WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        &[&slot],
                    )
                    .await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                repl = ReplicationConnection::connect(params, Duration::from_secs(10)).await?;
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

async fn session(
    state: &Arc<AppState>,
    db: &Database,
    reader: &DbBroadcast,
    lost: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), StreamError> {
    let Some(cluster) = state.cluster.as_ref() else {
        return Ok(());
    };
    let client = db.client().await?;
    client
        .batch_execute(broadcast_stream::ENSURE_PUBLICATION)
        .await?;
    let cfg: tokio_postgres::Config = db.url.parse().map_err(StreamError::Url)?;
    let params = ConnParams::from_config(&cfg)?;
    let mut stream = start(&client, &params, &reader.slot).await?;
    drop(client);
    let token = reader.lease.token();
    tracing::info!(slot = %reader.slot, token, "streaming database broadcasts for the cluster");
    db.streaming.store(true, Ordering::SeqCst);

    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut commit_ts = 0i64;
    // Publishes in order, and the transaction ends waiting for them: (publishes before it, end).
    let mut acks: FuturesOrdered<Ack> = FuturesOrdered::new();
    let mut published: u64 = 0;
    let mut acked: u64 = 0;
    let mut commits: VecDeque<(u64, u64)> = VecDeque::new();
    let mut in_txn = false;
    // acknowledged since PostgreSQL was last told: told early past STATUS_BATCH
    let mut unreported = 0usize;
    let mut status = tokio::time::interval(STATUS_EVERY);
    loop {
        let frame = tokio::select! {
            biased;
            // what Redis accepted may always be confirmed: fewer to publish again
            () = shutdown.cancelled() => {
                let _ = stream.tick().await;
                return Ok(());
            }
            () = lost.cancelled() => {
                let _ = stream.tick().await;
                return Ok(());
            }
            ack = acks.next(), if !acks.is_empty() => {
                match ack {
                    Some(Ok(Ok(()))) => {
                        acked += 1;
                        unreported += 1;
                    }
                    Some(Ok(Err(e))) => return Err(e.into()),
                    Some(Err(_)) | None => return Err(ClusterError::Unavailable.into()),
                }
                while commits.front().is_some_and(|(n, _)| *n <= acked) {
                    if let Some((_, end)) = commits.pop_front() {
                        stream.idle(end, false, true).await?;
                    }
                }
                if unreported >= STATUS_BATCH {
                    unreported = 0;
                    stream.tick().await?;
                }
                continue;
            }
            _ = status.tick() => {
                unreported = 0;
                stream.tick().await?;
                reader.stats.confirmed_lsn.store(stream.confirmed(), Ordering::Relaxed);
                state.metrics.replication_confirmed(Stream::DatabaseBroadcast, stream.confirmed(), 0);
                continue;
            }
            f = stream.next(), if acks.len() < MAX_IN_FLIGHT => f?,
        };
        match frame {
            Frame::Message(Message::Relation(r)) => {
                relations.insert(r.id, r);
            }
            Frame::Message(Message::Insert { rel, new }) => {
                let Some(r) = relations.get(&rel) else {
                    continue;
                };
                if !broadcast_stream::is_messages(r) {
                    continue;
                }
                if let Some(s) = broadcast_stream::stored(state, r, &new) {
                    let ack = cluster.publish_stored(s.key, &s.body, &s.id, token).await?;
                    acks.push_back(ack);
                    published += 1;
                    reader.stats.published.fetch_add(1, Ordering::Relaxed);
                    state.metrics.database_broadcast(commit_ts);
                }
            }
            Frame::Message(Message::Begin { commit_ts: ts, .. }) => {
                commit_ts = ts;
                in_txn = true;
            }
            Frame::Message(Message::Commit { end_lsn, .. }) => {
                in_txn = false;
                if published <= acked {
                    stream.idle(end_lsn, false, true).await?;
                } else {
                    commits.push_back((published, end_lsn));
                }
            }
            Frame::Message(_) => {}
            Frame::Undecodable(e) => {
                tracing::warn!(error = %e, "undecodable replication message skipped")
            }
            // The WAL end is handled only when nothing read is still waiting for Redis.
            Frame::Keepalive { wal_end, reply } => {
                let nothing_pending = !in_txn && commits.is_empty() && published <= acked;
                stream.idle(wal_end, reply, nothing_pending).await?
            }
        }
    }
}
