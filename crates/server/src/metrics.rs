//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! One [`Metrics`] per server instance (never a process global: tests and embedders run
//! several servers in one process). Every handle is an atomic behind an `Arc`, so counting is a
//! lock-free add wherever the event happens; labelled families take a read lock only to find
//! the series. Label values come from fixed sets (message kinds, the code before `:` of a
//! refusal), never from user input, so the number of series stays bounded.
//!
//! The README lists every metric with its meaning.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = [(&'static str, &'static str); 1];
type FloatGauge = Gauge<f64, AtomicU64>;

/// The replication streams.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// postgres_changes (the permanent slot).
    PostgresChanges,
    /// database broadcast (`realtime.messages`).
    DatabaseBroadcast,
}

impl Stream {
    fn label(self) -> Labels {
        [(
            "stream",
            match self {
                Stream::PostgresChanges => "postgres_changes",
                Stream::DatabaseBroadcast => "database_broadcast",
            },
        )]
    }
}

/// Every metric of a server.
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    channels: Family<Labels, Gauge>,
    postgres_subscriptions: Gauge,
    joins: Counter,
    refusals: Family<Labels, Counter>,
    messages_in: Family<Labels, Counter>,
    messages_out: Family<Labels, Counter>,
    slow_drops: Counter,
    slow_disconnects: Counter,
    changes_rate_limited: Counter,
    replication_lag: Family<Labels, FloatGauge>,
    confirmed_lsn: Family<Labels, Gauge>,
    rls_seconds: Histogram,
    rls_checks: Counter,
    broadcast_lag: FloatGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Kinds of messages counted in and out (anything else is `other`).
const KINDS: &[&str] = &[
    "heartbeat",
    "phx_join",
    "phx_leave",
    "broadcast",
    "presence",
    "access_token",
    "postgres_changes",
    "presence_diff",
    "system",
    "reply",
];

fn kind_label(kind: &str) -> &'static str {
    KINDS
        .iter()
        .find(|k| **k == kind)
        .copied()
        .unwrap_or("other")
}

/// The code of a join refusal (`ChannelRateLimitReached` of `ChannelRateLimitReached: Too
/// many channels`), from the fixed set of the server's messages.
fn reason_label(reason: &str) -> &'static str {
    const CODES: &[&str] = &[
        "RealtimeRestarting",
        "TopicNameRequired",
        "ConnectionRateLimitReached",
        "ClientJoinRateLimitReached",
        "ChannelRateLimitReached",
        "Unauthorized",
        "UnableToReplayMessages",
        "UnableToConnectToProject",
        "InvalidJWTToken",
        "ExpiredToken",
        "PrivateOnly",
    ];
    let code = reason.split(':').next().unwrap_or("").trim();
    CODES.iter().find(|c| **c == code).copied().unwrap_or(
        if code.contains("Token") || code.contains("JWT") {
            "InvalidJWTToken"
        } else {
            "other"
        },
    )
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("realtime");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let channels = Family::<Labels, Gauge>::default();
        registry.register(
            "channels",
            "Joined channels, by kind (public, private)",
            channels.clone(),
        );
        let postgres_subscriptions = Gauge::default();
        registry.register(
            "postgres_changes_subscriptions",
            "Channels subscribed to postgres_changes",
            postgres_subscriptions.clone(),
        );
        let joins = Counter::default();
        registry.register("joins", "Successful channel joins", joins.clone());
        let refusals = Family::<Labels, Counter>::default();
        registry.register(
            "join_refusals",
            "Refused channel joins, by the code of the reason",
            refusals.clone(),
        );
        let messages_in = Family::<Labels, Counter>::default();
        registry.register(
            "messages_in",
            "Messages received from clients, by event",
            messages_in.clone(),
        );
        let messages_out = Family::<Labels, Counter>::default();
        registry.register(
            "messages_out",
            "Messages queued to clients, by kind",
            messages_out.clone(),
        );
        let slow_drops = Counter::default();
        registry.register(
            "slow_consumer_drops",
            "Messages dropped because a socket's queue was full (policy drop)",
            slow_drops.clone(),
        );
        let slow_disconnects = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Sockets closed because their queue was full (policy disconnect)",
            slow_disconnects.clone(),
        );
        let changes_rate_limited = Counter::default();
        registry.register(
            "postgres_changes_rate_limited",
            "postgres_changes deliveries not made because the database-events limit was exceeded (the channel is told)",
            changes_rate_limited.clone(),
        );
        let replication_lag = Family::<Labels, FloatGauge>::default();
        registry.register(
            "replication_lag_seconds",
            "Now minus the commit time of the last transaction delivered, by stream",
            replication_lag.clone(),
        );
        let confirmed_lsn = Family::<Labels, Gauge>::default();
        registry.register(
            "replication_confirmed_lsn",
            "Last WAL position confirmed to PostgreSQL (as a number), by stream",
            confirmed_lsn.clone(),
        );
        let rls_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "rls_check_duration_seconds",
            "Time of one batched RLS check round trip",
            rls_seconds.clone(),
        );
        let rls_checks = Counter::default();
        registry.register(
            "rls_checks",
            "(claims set, row) pairs checked against RLS policies",
            rls_checks.clone(),
        );
        let broadcast_lag = FloatGauge::default();
        registry.register(
            "database_broadcast_lag_seconds",
            "Now minus the insert time of the last database broadcast fanned out",
            broadcast_lag.clone(),
        );
        Metrics {
            registry,
            connections,
            channels,
            postgres_subscriptions,
            joins,
            refusals,
            messages_in,
            messages_out,
            slow_drops,
            slow_disconnects,
            changes_rate_limited,
            replication_lag,
            confirmed_lsn,
            rls_seconds,
            rls_checks,
            broadcast_lag,
        }
    }

    /// The text exposition (`text/plain; version=0.0.4` compatible, OpenMetrics syntax).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn set_connections(&self, n: usize) {
        self.connections.set(n as i64);
    }

    pub(crate) fn channel_opened(&self, private: bool) {
        self.joins.inc();
        self.channels.get_or_create(&channel_kind(private)).inc();
    }

    pub(crate) fn channel_closed(&self, private: bool) {
        self.channels.get_or_create(&channel_kind(private)).dec();
    }

    pub(crate) fn postgres_subscribed(&self, delta: i64) {
        self.postgres_subscriptions.inc_by(delta);
    }

    pub(crate) fn join_refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&[("reason", reason_label(reason))])
            .inc();
    }

    pub(crate) fn message_in(&self, event: &str) {
        self.messages_in
            .get_or_create(&[("kind", kind_label(event))])
            .inc();
    }

    pub(crate) fn messages_out(&self, kind: &'static str, n: u64) {
        if n > 0 {
            self.messages_out
                .get_or_create(&[("kind", kind_label(kind))])
                .inc_by(n);
        }
    }

    pub(crate) fn slow_consumer_drop(&self) {
        self.slow_drops.inc();
    }

    /// A postgres_changes delivery was not made: the database-events limit was exceeded.
    pub(crate) fn postgres_change_rate_limited(&self) {
        self.changes_rate_limited.inc();
    }

    pub(crate) fn slow_consumer_disconnect(&self) {
        self.slow_disconnects.inc();
    }

    /// A transaction committed at `commit_ts_pg` (µs since 2000-01-01) was delivered and
    /// `lsn` confirmed.
    pub(crate) fn replication_confirmed(&self, stream: Stream, lsn: u64, commit_ts_pg: i64) {
        self.confirmed_lsn
            .get_or_create(&stream.label())
            .set(lsn.min(i64::MAX as u64) as i64);
        if commit_ts_pg != 0 {
            self.replication_lag
                .get_or_create(&stream.label())
                .set(lag_seconds(commit_ts_pg));
        }
    }

    /// One batched RLS check of `checks` (claims, row) pairs took `took`.
    pub(crate) fn rls_check(&self, took: Duration, checks: usize) {
        self.rls_seconds.observe(took.as_secs_f64());
        self.rls_checks.inc_by(checks as u64);
    }

    /// A database broadcast committed at `commit_ts_pg` (µs since 2000-01-01) was fanned out.
    pub(crate) fn database_broadcast(&self, commit_ts_pg: i64) {
        self.broadcast_lag.set(lag_seconds(commit_ts_pg));
    }
}

fn channel_kind(private: bool) -> Labels {
    [("kind", if private { "private" } else { "public" })]
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Seconds from a PostgreSQL timestamp (µs since 2000-01-01 UTC) to now.
fn lag_seconds(pg_micros: i64) -> f64 {
    let unix = pg_micros + 946_684_800_000_000;
    ((unix_micros() - unix).max(0)) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(
            reason_label("ChannelRateLimitReached: Too many channels"),
            "ChannelRateLimitReached"
        );
        assert_eq!(
            reason_label(
                "Unauthorized: You do not have permissions to read from this Channel topic: x"
            ),
            "Unauthorized"
        );
        assert_eq!(reason_label("something a user typed: {}"), "other");
        assert_eq!(kind_label("phx_join"), "phx_join");
        assert_eq!(kind_label("my-custom-event"), "other");
    }

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.channel_opened(false);
        m.message_in("heartbeat");
        m.join_refused("TopicNameRequired: You must provide a topic name");
        let text = m.render();
        assert!(text.contains("realtime_joins_total 1"), "{text}");
        assert!(
            text.contains("realtime_channels{kind=\"public\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("realtime_messages_in_total{kind=\"heartbeat\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("realtime_join_refusals_total{reason=\"TopicNameRequired\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
