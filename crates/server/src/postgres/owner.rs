//! The feed's owner task state: the registry of subscriptions, the phase of the database
//! session, and the status counters, changed only by this task.
//!
//! Everything else talks to it with [`Command`]s over one channel, handled in arrival order:
//! channels subscribe, unsubscribe and swap claims ([`super::ChangeFeed`] and
//! [`super::Subscription`] send these and never wait); the activator reports compilations
//! (activate.rs); retry timers report that a retry is due; health asks for the status and
//! gets it back by oneshot. The streaming session (feed.rs) runs in the same task and handles
//! commands between stream frames (before completed batches), so a change is matched and
//! delivered against the registry exactly as the commands before it left it: a channel sees
//! changes only after its `Subscribed` was handed to its sink, and none once its
//! `Unsubscribe` was handled. A new session streams only once every compilation it asked for
//! ([`Core::up`]) is answered, so no subscription misses what follows the resume position.
//!
//! Replies that arrive late are told apart by tickets: every compilation request (and retry
//! timer) gets a fresh ticket, the subscription records the one it waits for, and a reply
//! with any other ticket answers a request that no longer matters (claims swapped since,
//! the session that asked ended, the channel left).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::command::{Command, Job};
use super::event::{Binding, FeedEvent, Sink, DB_UNAVAILABLE};
use super::registry::{Claims, Registry, SubEntry, SubState};
use super::subscribe::{CompileError, CompiledBinding};
use crate::metrics::Metrics;
use crate::replication::format_lsn;

/// Where the database session stands.
enum Phase {
    /// First connection attempt in progress: subscriptions wait silently.
    Starting,
    /// Connected; subscriptions compile through this session's activator.
    Up(mpsc::UnboundedSender<Job>),
    /// Database unreachable: subscriptions are told and wait.
    Down,
}

/// The owner task's state.
pub(crate) struct Core {
    pub(crate) registry: Registry,
    phase: Phase,
    pub(crate) metrics: Arc<Metrics>,
    /// For retry timers, which report back as commands.
    commands: mpsc::UnboundedSender<Command>,
    next_ticket: u64,
    /// The compilations a new session asked for and not yet answered: the session streams
    /// only once they are all answered, so no subscription misses what follows the position
    /// the stream resumes from.
    startup: HashSet<u64>,
    slot: String,
    publication: String,
    /// Cluster mode: a connected node that does not hold the slot's lease is a standby.
    gated: bool,
    /// End of the last transaction handed to every sink (0: none yet in this process).
    pub(crate) delivered_lsn: u64,
    pub(crate) streaming: bool,
    pub(crate) confirmed_lsn: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) reconnects: u64,
    pub(crate) changes: u64,
    pub(crate) deliveries: u64,
}

impl Core {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        commands: mpsc::UnboundedSender<Command>,
        slot: String,
        publication: String,
        gated: bool,
    ) -> Core {
        Core {
            registry: Registry::default(),
            phase: Phase::Starting,
            metrics,
            commands,
            next_ticket: 1,
            startup: HashSet::new(),
            slot,
            publication,
            gated,
            delivered_lsn: 0,
            streaming: false,
            confirmed_lsn: 0,
            last_error: None,
            reconnects: 0,
            changes: 0,
            deliveries: 0,
        }
    }

    pub(crate) fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe {
                id,
                topic,
                claims,
                bindings,
                sink,
            } => self.subscribe(id, topic, &claims, bindings, sink),
            Command::Unsubscribe { id } => {
                if self.registry.remove(id) {
                    self.metrics.postgres_subscribed(-1);
                }
            }
            Command::Claims { id, claims } => self.update_claims(id, &claims),
            Command::Compiled { id, ticket, result } => self.compiled(id, ticket, result),
            Command::RetryDue { id, ticket } => {
                let due = self.registry.get(id).is_some_and(|e| {
                    e.awaiting == Some(ticket) && matches!(e.state, SubState::Pending)
                });
                if due {
                    self.activate(id);
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn subscribe(
        &mut self,
        id: u64,
        topic: String,
        claims: &Value,
        bindings: Vec<Binding>,
        sink: Sink,
    ) {
        self.metrics.postgres_subscribed(1);
        let entry = SubEntry {
            topic,
            bindings: Arc::new(bindings),
            sink,
            claims: Arc::new(Claims::from_value(claims)),
            state: SubState::Pending,
            awaiting: None,
        };
        if matches!(self.phase, Phase::Down) {
            entry.send(FeedEvent::Error(DB_UNAVAILABLE.to_string()));
        }
        self.registry.insert(id, entry);
        self.activate(id);
    }

    fn update_claims(&mut self, id: u64, claims: &Value) {
        let Some(entry) = self.registry.get_mut(id) else {
            return;
        };
        let new = Arc::new(Claims::from_value(claims));
        if *entry.claims == *new {
            return;
        }
        entry.claims = new;
        // a compilation under way was for the old claims
        entry.awaiting = None;
        if matches!(entry.state, SubState::Failed) {
            self.registry.set_state(id, SubState::Pending);
        }
        self.activate(id);
    }

    /// Ask this session's activator to compile subscription `id` for its current claims (a
    /// no-op while there is no session: the next one compiles every subscription).
    fn activate(&mut self, id: u64) {
        let Phase::Up(activator) = &self.phase else {
            return;
        };
        let Some(entry) = self.registry.get_mut(id) else {
            return;
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        entry.awaiting = Some(ticket);
        let _ = activator.send(Job::Compile {
            id,
            ticket,
            role: entry.claims.role.clone(),
            bindings: entry.bindings.clone(),
        });
    }

    fn compiled(
        &mut self,
        id: u64,
        ticket: u64,
        result: Result<Vec<CompiledBinding>, CompileError>,
    ) {
        self.startup.remove(&ticket);
        let Some(entry) = self.registry.get_mut(id) else {
            return;
        };
        if entry.awaiting != Some(ticket) {
            return;
        }
        entry.awaiting = None;
        match result {
            Ok(bindings) => {
                // Handled between stream frames: the dispatcher matches this channel only
                // against changes read after its `Subscribed` was handed to the sink.
                self.registry
                    .set_state(id, SubState::Active(Arc::new(bindings)));
                if let Some(entry) = self.registry.get(id) {
                    entry.send(FeedEvent::Subscribed);
                    tracing::debug!(topic = %entry.topic, "postgres_changes subscribed");
                }
            }
            Err(e) if e.fatal => {
                tracing::info!(topic = %entry.topic, error = %e.message, "postgres_changes subscription refused");
                entry.send(FeedEvent::Error(e.message));
                self.registry.set_state(id, SubState::Failed);
            }
            Err(e) => {
                tracing::warn!(topic = %entry.topic, error = %e.message, "postgres_changes subscription failed; retrying");
                entry.send(FeedEvent::Error(e.message));
                if !matches!(entry.state, SubState::Pending) {
                    return;
                }
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                entry.awaiting = Some(ticket);
                // upstream retries after a random 5-10 s
                let delay = Duration::from_millis(5000 + rand::random::<u64>() % 5000);
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = commands.send(Command::RetryDue { id, ticket });
                });
            }
        }
    }

    /// A session is connected: compile every subscription that is not failed through its
    /// activator. The session waits for [`Core::starting`] to turn false before it streams.
    pub(crate) fn up(&mut self, activator: mpsc::UnboundedSender<Job>) {
        self.phase = Phase::Up(activator);
        self.startup.clear();
        for id in self.registry.retryable() {
            self.activate(id);
            if let Some(ticket) = self.registry.get(id).and_then(|e| e.awaiting) {
                self.startup.insert(ticket);
            }
        }
    }

    /// Whether compilations asked for by [`Core::up`] are still unanswered.
    pub(crate) fn starting(&self) -> bool {
        !self.startup.is_empty()
    }

    /// The session failed with `error`. The first failure of an outage tells every live or
    /// waiting subscription; they wait for the next session.
    pub(crate) fn down(&mut self, error: String) {
        let was_down = matches!(self.phase, Phase::Down);
        self.phase = Phase::Down;
        self.streaming = false;
        self.reconnects += 1;
        if !was_down {
            tracing::warn!(error = %error, "postgres_changes: database connection lost; reconnecting");
            for id in self.registry.retryable() {
                self.registry.set_state(id, SubState::Pending);
                if let Some(e) = self.registry.get(id) {
                    e.send(FeedEvent::Error(DB_UNAVAILABLE.to_string()));
                }
            }
        } else {
            tracing::debug!(error = %error, "postgres_changes: still unreachable");
        }
        for e in self.registry.entries_mut() {
            e.awaiting = None;
        }
        self.startup.clear();
        self.last_error = Some(error);
    }

    fn status(&self) -> Value {
        let phase = match &self.phase {
            Phase::Starting => "starting",
            Phase::Up(_) if self.streaming => "streaming",
            // cluster mode: another node holds the slot's lease
            Phase::Up(_) if self.gated => "standby",
            Phase::Up(_) => "connected",
            Phase::Down => "down",
        };
        json!({
            "enabled": true,
            "state": phase,
            "slot": self.slot,
            "publication": self.publication,
            "confirmed_lsn": format_lsn(self.confirmed_lsn),
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "changes": self.changes,
            "deliveries": self.deliveries,
            "subscriptions": self.registry.len(),
            "active_subscriptions": self.registry.active_count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A core, the commands it sends itself, and a sink recording what one channel is told.
    fn core() -> (Core, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let core = Core::new(Arc::new(Metrics::new()), tx, "s".into(), "p".into(), false);
        (core, rx)
    }

    fn recorder() -> (Sink, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let sink: Sink = Arc::new(move |ev: FeedEvent| {
            log.lock().push(match ev {
                FeedEvent::Subscribed => "subscribed".to_string(),
                FeedEvent::Error(m) => format!("error: {m}"),
                FeedEvent::Change(_) => "change".to_string(),
            })
        });
        (sink, seen)
    }

    fn subscribe(core: &mut Core, id: u64, role: &str, sink: Sink) {
        core.handle(Command::Subscribe {
            id,
            topic: format!("t{id}"),
            claims: json!({"role": role}),
            bindings: vec![],
            sink,
        });
    }

    /// The next compile job: (id, ticket, role).
    fn job(jobs: &mut mpsc::UnboundedReceiver<Job>) -> Option<(u64, u64, String)> {
        match jobs.try_recv().ok()? {
            Job::Compile {
                id, ticket, role, ..
            } => Some((id, ticket, role)),
            Job::Forget { .. } => None,
        }
    }

    fn compiled(core: &mut Core, id: u64, ticket: u64, fatal: Option<bool>) {
        let result = match fatal {
            None => Ok(vec![]),
            Some(fatal) => Err(CompileError {
                message: "nope".into(),
                fatal,
            }),
        };
        core.handle(Command::Compiled { id, ticket, result });
    }

    #[test]
    fn waits_for_a_session_then_subscribes_once() {
        let (mut core, _rx) = core();
        let (sink, seen) = recorder();
        subscribe(&mut core, 1, "anon", sink);
        assert!(
            seen.lock().is_empty(),
            "starting: the channel waits silently"
        );
        let (tx, mut jobs) = mpsc::unbounded_channel();
        core.up(tx);
        let (id, ticket, role) = job(&mut jobs).unwrap();
        assert_eq!((id, role.as_str()), (1, "anon"));
        assert!(
            core.starting(),
            "the session waits for the answer before it streams"
        );
        compiled(&mut core, id, ticket, None);
        assert!(!core.starting());
        // the same answer again (a duplicate) changes nothing
        compiled(&mut core, id, ticket, None);
        assert_eq!(*seen.lock(), ["subscribed"]);
        assert_eq!(core.registry.active_count(), 1);
    }

    #[test]
    fn an_answer_for_old_claims_is_ignored() {
        let (mut core, _rx) = core();
        let (tx, mut jobs) = mpsc::unbounded_channel();
        core.up(tx);
        let (sink, seen) = recorder();
        subscribe(&mut core, 1, "anon", sink);
        let (_, old, _) = job(&mut jobs).unwrap();
        core.handle(Command::Claims {
            id: 1,
            claims: json!({"role": "authenticated"}),
        });
        let (_, new, role) = job(&mut jobs).unwrap();
        assert_eq!(role, "authenticated");
        compiled(&mut core, 1, old, None);
        assert!(seen.lock().is_empty(), "compiled for the old claims");
        compiled(&mut core, 1, new, None);
        assert_eq!(*seen.lock(), ["subscribed"]);
        // the same claims again: nothing to do
        core.handle(Command::Claims {
            id: 1,
            claims: json!({"role": "authenticated"}),
        });
        assert!(job(&mut jobs).is_none());
    }

    #[test]
    fn nothing_reaches_a_channel_that_left() {
        let (mut core, _rx) = core();
        let (tx, mut jobs) = mpsc::unbounded_channel();
        core.up(tx);
        let (sink, seen) = recorder();
        subscribe(&mut core, 1, "anon", sink);
        let (_, ticket, _) = job(&mut jobs).unwrap();
        core.handle(Command::Unsubscribe { id: 1 });
        compiled(&mut core, 1, ticket, None);
        assert!(seen.lock().is_empty());
        assert_eq!(core.registry.len(), 0);
        assert!(core
            .metrics
            .render()
            .contains("realtime_postgres_changes_subscriptions 0"));
    }

    #[test]
    fn an_outage_is_told_once_and_answers_of_the_old_session_are_ignored() {
        let (mut core, _rx) = core();
        let (tx, mut jobs) = mpsc::unbounded_channel();
        core.up(tx);
        let (sink, seen) = recorder();
        subscribe(&mut core, 1, "anon", sink);
        let (_, ticket, _) = job(&mut jobs).unwrap();
        core.down("gone".into());
        core.down("still gone".into());
        compiled(&mut core, 1, ticket, None);
        assert_eq!(*seen.lock(), [format!("error: {DB_UNAVAILABLE}")]);
        // subscribing while down is told at once
        let (sink2, seen2) = recorder();
        subscribe(&mut core, 2, "anon", sink2);
        assert_eq!(*seen2.lock(), [format!("error: {DB_UNAVAILABLE}")]);
        // the next session compiles both
        let (tx, mut jobs) = mpsc::unbounded_channel();
        core.up(tx);
        let mut ids = vec![job(&mut jobs).unwrap().0, job(&mut jobs).unwrap().0];
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    // a runtime for the retry timer it arms (it fires in 5-10 s; the test sends its command)
    #[tokio::test]
    async fn refused_for_good_or_retried_when_due() {
        let (mut core, _rx) = core();
        let (tx, mut jobs) = mpsc::unbounded_channel();
        core.up(tx.clone());
        let (sink, seen) = recorder();
        subscribe(&mut core, 1, "anon", sink);
        let (_, ticket, _) = job(&mut jobs).unwrap();
        compiled(&mut core, 1, ticket, Some(true));
        assert_eq!(*seen.lock(), ["error: nope"]);
        // failed for good: a new session does not try again
        core.up(tx.clone());
        assert!(job(&mut jobs).is_none());

        let (sink, seen) = recorder();
        subscribe(&mut core, 2, "anon", sink);
        let (_, ticket, _) = job(&mut jobs).unwrap();
        compiled(&mut core, 2, ticket, Some(false));
        assert_eq!(*seen.lock(), ["error: nope"]);
        let retry = core.registry.get(2).and_then(|e| e.awaiting).unwrap();
        // a retry timer of another ticket is not this one
        core.handle(Command::RetryDue {
            id: 2,
            ticket: retry + 100,
        });
        assert!(job(&mut jobs).is_none());
        core.handle(Command::RetryDue {
            id: 2,
            ticket: retry,
        });
        let (id, ticket, _) = job(&mut jobs).unwrap();
        compiled(&mut core, id, ticket, None);
        assert_eq!(*seen.lock(), ["error: nope", "subscribed"]);
    }
}
