//! The feed's task: connect, set up, stream, dispatch, confirm, and on any failure tell the
//! channels, back off and start over from what was delivered. It is the owner task of
//! owner.rs: the registry and the phase live in its [`Core`], and it handles commands
//! whenever it awaits something (connecting, waiting for the slot's lease, between stream
//! frames), so subscribing never waits on the database.
//!
//! Connections: one replication connection (streaming, through `replication::stream`), one
//! query connection for the activator (compiling subscriptions, activate.rs), one for this
//! task (relation reloads, visible columns), and [`CHECKERS`] connections that answer RLS
//! checks.
//!
//! A change from the slot to the sinks: the stream yields a decoded message; `dispatch::prepare`
//! matches it against the registry and queues its RLS checks in the batch being built; a
//! free checker takes the whole batch (one change when idle, everything that arrived
//! meanwhile when busy: large batches exactly when they pay); batches complete in stream
//! order (`FuturesOrdered`), and each one's changes are handed to the sinks by
//! `Prepared::deliver`, in order.
//!
//! Position: the slot is permanent. Its confirmed position is advanced only to the end of a
//! transaction whose batch has been delivered, or to a keepalive position while nothing is
//! open or queued. After a reconnect the stream starts from the last delivered position, and
//! transactions that end before it are skipped, so nothing is delivered twice even when the
//! slot's position on disk went backwards (a database restart). After a server restart the
//! stream starts `resume_grace_ms` after the process start, so channels that rejoin in that
//! window receive what was committed while the server was down. In cluster mode a delivered
//! batch is confirmed only once the gate has flushed it to the other nodes, and never after
//! the slot's lease was lost.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::activate;
use super::catalog::{self, TableInfo};
use super::command::{Command, Job};
use super::config::PostgresConfig;
use super::dispatch::{self, Change, DispatchCache, Prepared};
use super::error::FeedError;
use super::owner::Core;
use super::registry::Registry;
use super::rls;
use super::setup;
use super::subscribe::Action;
use super::types::Kind;
use crate::metrics::{Metrics, Stream};
use crate::replication::pgoutput::{self, Message, Relation};
use crate::replication::stream::{Frame, LogicalStream};
use crate::replication::{format_lsn, ConnParams, ReplError, ReplicationConnection};

/// Who may stream the slot (cluster mode: one node of the cluster at a time). Without a gate
/// the feed streams whenever it is connected.
pub(crate) trait SlotGate: Send + Sync {
    /// Wait until this node may read the slot. The token is cancelled when it may no longer
    /// (the session then ends and waits here again).
    fn acquire(&self) -> BoxFuture<'static, CancellationToken>;
    /// Wait until everything handed to the sinks so far is safe on its way to the other nodes:
    /// called before a position is confirmed, so a reader that dies never confirms what the
    /// other nodes did not get.
    fn flushed(&self) -> BoxFuture<'static, ()>;
    /// The session failed (the database is unreachable from here): let another node read.
    fn release(&self);
}

/// What the feed's task is started with.
pub(crate) struct Feed {
    pub(crate) cfg: PostgresConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) gate: Option<Arc<dyn SlotGate>>,
    /// A sender of the task's own command channel (for the activator and retry timers).
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) inbox: mpsc::UnboundedReceiver<Command>,
}

/// Await `work` while handling the commands that arrive meanwhile.
async fn serving<T>(
    core: &mut Core,
    inbox: &mut mpsc::UnboundedReceiver<Command>,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            Some(command) = inbox.recv() => core.handle(command),
        }
    }
}

/// Session settings that shape the text values are typed from (see types.rs).
const CONN_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=1 -c bytea_output=hex -c standard_conforming_strings=on";

fn pg_config(url: &str, app: &str) -> Result<tokio_postgres::Config, FeedError> {
    let mut cfg = tokio_postgres::Config::from_str(url).map_err(FeedError::Url)?;
    cfg.application_name(app);
    cfg.options(CONN_OPTIONS);
    cfg.connect_timeout(Duration::from_secs(10));
    Ok(cfg)
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<Arc<Client>, FeedError> {
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(Arc::new(client))
}

/// The background task.
pub(crate) async fn run(feed: Feed, shutdown: CancellationToken) {
    let Feed {
        cfg,
        metrics,
        gate,
        commands,
        mut inbox,
    } = feed;
    let mut core = Core::new(
        metrics,
        commands.clone(),
        cfg.slot_name.clone(),
        cfg.publication.clone(),
        gate.is_some(),
    );
    let started = Instant::now();
    let mut attempt: u32 = 0;
    let mut first = true;
    loop {
        let mut reached_stream = false;
        let mut session = Session {
            cfg: &cfg,
            gate: gate.as_ref(),
            commands: &commands,
            shutdown: &shutdown,
            started,
            first: &mut first,
            reached_stream: &mut reached_stream,
        };
        let result = tokio::select! {
            r = session.run(&mut core, &mut inbox) => r,
            () = shutdown.cancelled() => Ok(()),
        };
        if shutdown.is_cancelled() {
            tracing::info!("postgres_changes feed stopped");
            return;
        }
        if let Err(FeedError::SlotLeaseLost) = result {
            // Not a database fault: the channels are not told; the session waits for the
            // lease again with its subscriptions as they are.
            core.streaming = false;
            continue;
        }
        if let Some(gate) = &gate {
            gate.release();
        }
        let err = match result {
            Ok(()) => "replication stream ended".to_string(),
            Err(e) => e.to_string(),
        };
        if reached_stream {
            attempt = 0;
        }
        attempt = attempt.saturating_add(1);
        core.down(err);
        let base = 250u64.saturating_mul(1 << attempt.min(5)).min(5000);
        let delay = Duration::from_millis(base + rand::random::<u64>() % 250);
        tokio::select! {
            () = serving(&mut core, &mut inbox, tokio::time::sleep(delay)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The connections of one session, before streaming.
struct Opened {
    params: ConnParams,
    sub_client: Arc<Client>,
    client: Arc<Client>,
    checkers: Vec<rls::Checker>,
    repl: ReplicationConnection,
    created: bool,
}

async fn open(cfg: &PostgresConfig) -> Result<Opened, FeedError> {
    let sub_cfg = pg_config(&cfg.database_url, "supa_realtime_subscribe")?;
    let feed_cfg = pg_config(&cfg.database_url, "supa_realtime_rls")?;
    let params = ConnParams::from_config(&sub_cfg)?;
    let sub_client = connect(&sub_cfg).await?;
    let client = connect(&feed_cfg).await?;
    // RLS checks are pipelined over their own connections, so a batch in flight never waits
    // behind the feed's catalog queries or another batch.
    let mut check_cfg = pg_config(&cfg.database_url, "supa_realtime_rls_check")?;
    // one generic plan per table, reused for every claims set (see rls.rs)
    check_cfg.options(format!(
        "{CONN_OPTIONS} -c plan_cache_mode=force_generic_plan"
    ));
    let mut checkers = Vec::with_capacity(CHECKERS);
    for _ in 0..CHECKERS {
        checkers.push(rls::Checker::new(connect(&check_cfg).await?));
    }
    setup::prepare(&client, &cfg.publication).await?;
    let mut repl = ReplicationConnection::connect(&params, Duration::from_secs(10)).await?;
    let created = setup::ensure_slot(&client, &mut repl, &cfg.slot_name).await?;
    Ok(Opened {
        params,
        sub_client,
        client,
        checkers,
        repl,
        created,
    })
}

/// START_REPLICATION from `resume_from`; a slot still held by a dead predecessor's
/// walsender is released.
async fn start_stream(
    cfg: &PostgresConfig,
    client: &Client,
    params: &ConnParams,
    mut repl: ReplicationConnection,
    resume_from: u64,
) -> Result<LogicalStream, FeedError> {
    let mut tries = 0;
    loop {
        match LogicalStream::start(repl, &cfg.slot_name, resume_from, &cfg.publication).await {
            Ok(stream) => return Ok(stream),
            Err((_, ReplError::Server { code, message })) if code == "55006" && tries < 3 => {
                tries += 1;
                tracing::warn!(%message, "replication slot in use; terminating the holder");
                setup::release_slot(client, &cfg.slot_name).await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                repl = ReplicationConnection::connect(params, Duration::from_secs(10)).await?;
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// One database session: what it needs from the task, borrowed.
struct Session<'a> {
    cfg: &'a PostgresConfig,
    gate: Option<&'a Arc<dyn SlotGate>>,
    commands: &'a mpsc::UnboundedSender<Command>,
    shutdown: &'a CancellationToken,
    started: Instant,
    first: &'a mut bool,
    reached_stream: &'a mut bool,
}

impl Session<'_> {
    async fn run(
        &mut self,
        core: &mut Core,
        inbox: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), FeedError> {
        let cfg = self.cfg;
        let Opened {
            params,
            sub_client,
            client,
            checkers: mut free,
            repl,
            created,
        } = serving(core, inbox, open(cfg)).await?;
        tracing::info!(slot = %cfg.slot_name, publication = %cfg.publication, "postgres_changes: connected to the database");
        let activator = activate::spawn(sub_client, cfg.publication.clone(), self.commands.clone());
        core.up(activator.clone());
        // Every subscription is compiled before the stream starts (here or on a standby), so
        // none misses a change after the position it resumes from.
        while core.starting() {
            match inbox.recv().await {
                Some(command) => core.handle(command),
                None => return Ok(()),
            }
        }
        if *self.first && !created {
            let until = self.started + Duration::from_millis(cfg.resume_grace_ms);
            let now = Instant::now();
            if until > now {
                tracing::info!(
                    ms = (until - now).as_millis() as u64,
                    "postgres_changes: waiting for channels to rejoin before resuming the slot"
                );
                serving(core, inbox, tokio::time::sleep(until - now)).await;
            }
        }
        *self.first = false;
        // Cluster mode: only the lease holder streams; the others keep their subscriptions
        // compiled and wait here, ready to take over from the slot's confirmed position.
        let lease = match self.gate {
            Some(gate) => Some(serving(core, inbox, gate.acquire()).await),
            None => None,
        };
        let lease_lost = lease.clone().unwrap_or_default();

        // START_REPLICATION from what was delivered, not from the slot's position: the slot's
        // confirmed position is only written to disk at checkpoints, so after a database
        // restart it can be behind what the database was told (PostgreSQL then re-sends
        // seconds of transactions). Asking for a later position makes it skip the
        // transactions that committed before it; those it re-sends anyway are skipped below
        // (Begin).
        let resume_from = core.delivered_lsn;
        let mut stream = serving(
            core,
            inbox,
            start_stream(cfg, &client, &params, repl, resume_from),
        )
        .await?;
        *self.reached_stream = true;
        core.streaming = true;
        tracing::info!(slot = %cfg.slot_name, "postgres_changes: streaming");

        let mut relations: HashMap<u32, (Relation, Option<Arc<TableInfo>>)> = HashMap::new();
        let mut cache = DispatchCache::default();
        let mut kinds: HashMap<u32, Kind> = HashMap::new();
        let mut in_txn = false;
        let mut skipping = false;
        let mut commit_ts: i64 = 0;
        let mut xid: u32 = 0;
        // the change's position: its transaction's commit LSN and its ordinal in it
        let mut position: (u64, u32) = (0, 0);
        let mut building = Batch::default();
        let mut inflight: FuturesOrdered<BoxFuture<'static, Checked>> = FuturesOrdered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_cache_clear = Instant::now();
        let max_record_bytes = cfg.max_record_bytes;
        loop {
            // A free checker takes what has accumulated: one change when idle (no added
            // latency), everything that arrived meanwhile when busy (bigger batches under load).
            if !building.is_empty() {
                if let Some(checker) = free.pop() {
                    let batch = std::mem::take(&mut building);
                    inflight.push_back(Box::pin(check(checker, batch)));
                }
            }
            let can_read = building.items.len() < MAX_BATCH;
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    let _ = stream.tick().await;
                    return Ok(());
                }
                () = lease_lost.cancelled(), if lease.is_some() => return Err(FeedError::SlotLeaseLost),
                // Commands first: a channel that left before a batch's checks came back gets
                // nothing of it.
                Some(command) = inbox.recv() => core.handle(command),
                Some((checker, batch, answers, took)) = inflight.next(), if !inflight.is_empty() => {
                    free.push(checker);
                    let answers = answers?;
                    if !batch.checks.is_empty() {
                        core.metrics.rls_check(took, batch.checks.checks());
                    }
                    let mut n = 0;
                    core.changes += batch.items.len() as u64;
                    for item in batch.items {
                        n += item.deliver(&answers, &core.registry);
                    }
                    core.deliveries += n as u64;
                    if let Some(end_lsn) = batch.commit_end {
                        if let Some(gate) = self.gate {
                            // may take seconds (Redis unreachable): channels keep subscribing
                            // and leaving meanwhile
                            serving(core, inbox, gate.flushed()).await;
                            // The lease went meanwhile: what was sent after it carries no
                            // valid fencing token and may be dropped by the receivers, so
                            // nothing more is confirmed; the next reader starts from the last
                            // confirmed position.
                            if lease_lost.is_cancelled() {
                                return Err(FeedError::SlotLeaseLost);
                            }
                        }
                        core.delivered_lsn = core.delivered_lsn.max(end_lsn);
                        // every change up to this commit is in the sinks: confirm now, so a
                        // crash right after does not replay it
                        stream.confirm(end_lsn).await?;
                        core.confirmed_lsn = stream.confirmed();
                        core.metrics.replication_confirmed(Stream::PostgresChanges, stream.confirmed(), batch.commit_ts);
                    }
                }
                _ = tick.tick() => {
                    stream.tick().await?;
                    core.confirmed_lsn = stream.confirmed();
                    if last_cache_clear.elapsed() > Duration::from_secs(10) {
                        // column grants can change without a relation message
                        cache.visible.clear();
                        last_cache_clear = Instant::now();
                    }
                }
                frame = stream.next(), if can_read => {
                    match frame? {
                        Frame::Keepalive { wal_end, reply } => {
                            // nothing open or queued: everything before the WAL end is handled
                            let idle = !in_txn && building.is_empty() && inflight.is_empty();
                            stream.idle(wal_end, reply, idle).await?;
                            if idle {
                                core.delivered_lsn = core.delivered_lsn.max(stream.handled());
                            }
                        }
                        Frame::Undecodable(e) => return Err(e.into()),
                        Frame::Message(message) => {
                            match message {
                                Message::Begin { commit_ts: ts, xid: x, final_lsn } => {
                                    in_txn = true;
                                    commit_ts = ts;
                                    xid = x;
                                    position = (final_lsn, 0);
                                    // Already delivered before a reconnect (the slot's position
                                    // on disk can lag behind what was confirmed, e.g. across a
                                    // database restart): not again.
                                    skipping = final_lsn < resume_from;
                                    if skipping {
                                        tracing::debug!(lsn = %format_lsn(final_lsn), "skipping a transaction delivered before the reconnect");
                                    }
                                }
                                Message::Commit { end_lsn, .. } => {
                                    in_txn = false;
                                    if skipping {
                                        skipping = false;
                                        continue;
                                    }
                                    building.commit_end = Some(end_lsn);
                                    building.commit_ts = commit_ts;
                                }
                                Message::Relation(rel) => {
                                    let info = catalog::load_table(&client, &rel.schema, &rel.table, &mut kinds).await?;
                                    if let Some(t) = &info {
                                        cache.visible.retain(|(_, oid), _| *oid != t.oid);
                                    }
                                    let _ = activator.send(Job::Forget { schema: rel.schema.clone(), table: rel.table.clone() });
                                    relations.insert(rel.id, (rel, info));
                                }
                                _ if skipping => {}
                                Message::Insert { rel, new } => {
                                    position.1 += 1;
                                    let ctx = Ctx { registry: &core.registry, client: &client, relations: &relations, max_record_bytes, commit_ts, xid, position };
                                    ctx.prepare(&mut cache, &mut building, rel, Action::Insert, Some(&new), None, true).await?;
                                }
                                Message::Update { rel, old, new } => {
                                    position.1 += 1;
                                    let key_only = !matches!(relations.get(&rel), Some((r, _)) if r.replica_identity == b'f');
                                    let ctx = Ctx { registry: &core.registry, client: &client, relations: &relations, max_record_bytes, commit_ts, xid, position };
                                    ctx.prepare(&mut cache, &mut building, rel, Action::Update, Some(&new), old.as_deref(), key_only).await?;
                                }
                                Message::Delete { rel, old } => {
                                    position.1 += 1;
                                    let key_only = !matches!(relations.get(&rel), Some((r, _)) if r.replica_identity == b'f');
                                    let ctx = Ctx { registry: &core.registry, client: &client, relations: &relations, max_record_bytes, commit_ts, xid, position };
                                    ctx.prepare(&mut cache, &mut building, rel, Action::Delete, None, Some(&old), key_only).await?;
                                }
                                Message::Other => {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Connections the RLS checks are pipelined over.
const CHECKERS: usize = 3;
/// At most this many changes wait in the batch being built; then the stream is not read
/// (the database keeps the WAL) until a checker is free.
const MAX_BATCH: usize = 4000;

/// A run of consecutive changes whose RLS checks go to the database together.
#[derive(Default)]
struct Batch {
    items: Vec<Prepared>,
    checks: rls::Batch,
    /// End of the last transaction that committed within this batch: confirmed once the
    /// batch is delivered.
    commit_end: Option<u64>,
    commit_ts: i64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.commit_end.is_none()
    }
}

type Checked = (
    rls::Checker,
    Batch,
    Result<rls::Answers, tokio_postgres::Error>,
    Duration,
);

async fn check(mut checker: rls::Checker, batch: Batch) -> Checked {
    let started = Instant::now();
    let answers = checker.run(&batch.checks).await;
    (checker, batch, answers, started.elapsed())
}

/// What preparing a change needs from the session.
struct Ctx<'a> {
    registry: &'a Registry,
    client: &'a Client,
    relations: &'a HashMap<u32, (Relation, Option<Arc<TableInfo>>)>,
    max_record_bytes: usize,
    commit_ts: i64,
    xid: u32,
    position: (u64, u32),
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &self,
        cache: &mut DispatchCache,
        batch: &mut Batch,
        rel: u32,
        action: Action,
        new: Option<&[pgoutput::Datum]>,
        old: Option<&[pgoutput::Datum]>,
        old_is_key_only: bool,
    ) -> Result<(), FeedError> {
        let Some((relation, Some(table))) = self.relations.get(&rel) else {
            return Ok(());
        };
        let change = Change {
            action,
            rel: relation,
            table,
            commit_ts: self.commit_ts,
            new,
            old,
            old_is_key_only,
        };
        let prepared = dispatch::prepare(
            &change,
            self.registry,
            self.client,
            cache,
            self.max_record_bytes,
            &mut batch.checks,
            self.xid,
        )
        .await?;
        if let Some(mut p) = prepared {
            p.position = self.position;
            batch.items.push(p);
        }
        Ok(())
    }
}

/// Drop the slot and the publication (the `cleanup` request).
pub(crate) async fn cleanup(cfg: &PostgresConfig) -> Result<(), FeedError> {
    let client = connect(&pg_config(&cfg.database_url, "supa_realtime_cleanup")?).await?;
    Ok(setup::cleanup(&client, &cfg.slot_name, &cfg.publication).await?)
}
