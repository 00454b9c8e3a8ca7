//! Server configuration: the `serve` flags, each also readable from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// The Supabase CLI's local JWT secret, so the CLI's demo anon and service_role keys work.
pub const DEFAULT_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What to do with a subscriber whose outgoing queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SlowConsumerPolicy {
    /// Close its socket (with a logged reason); it reconnects and rejoins. Nothing is silently lost.
    #[default]
    Disconnect,
    /// Drop the message for that subscriber and log it, keeping the socket.
    Drop,
}

/// Flags of `supa-realtime-server serve`. Defaults are upstream's, so code written against
/// Supabase behaves the same here.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (the Supabase CLI's API port by default).
    #[arg(long, env = "REALTIME_ADDR", default_value = "127.0.0.1:54321")]
    pub addr: SocketAddr,

    /// Secret that HS256/384/512 JWTs are verified with.
    #[arg(long, env = "JWT_SECRET", default_value = DEFAULT_JWT_SECRET, hide_env_values = true)]
    pub jwt_secret: String,

    /// PostgreSQL URL; enables postgres_changes. Without it broadcast and presence run in memory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Replication slot used for postgres_changes.
    #[arg(
        long,
        env = "SLOT_NAME",
        default_value = "supabase_realtime_replication_slot"
    )]
    pub slot_name: String,

    /// Publication whose tables postgres_changes streams.
    #[arg(long, env = "PUBLICATION", default_value = "supabase_realtime")]
    pub publication: String,

    /// After a restart, postgres_changes streaming waits this long so that channels rejoining
    /// in time also get what was committed while the server was down.
    #[arg(long, env = "REALTIME_PG_RESUME_GRACE_MS", default_value_t = 3000)]
    pub pg_resume_grace_ms: u64,

    /// A change larger than this is delivered with `errors: ["Error 413: Payload Too Large"]`.
    #[arg(long, env = "MAX_RECORD_BYTES", default_value_t = 1_048_576)]
    pub max_record_bytes: usize,

    /// WebSocket connections that have joined a channel, at most.
    #[arg(long, env = "MAX_CONCURRENT_USERS", default_value_t = 200)]
    pub max_concurrent_users: usize,

    /// Broadcast events per second (pushes plus deliveries), averaged over 60 s: each socket's
    /// own budget (the channel that goes over it is shut down, as upstream shuts channels
    /// down), and the budget of REST and database broadcasts together.
    #[arg(long, env = "MAX_EVENTS_PER_SECOND", default_value_t = 100)]
    pub max_events_per_second: u64,

    /// postgres_changes deliveries per second (one per binding id a change is delivered
    /// with), averaged over 60 s, server-wide: upstream's database-events limiter, whose limit
    /// is the tenant's events limit. Unset: `max_events_per_second`; 0: no limit. Over it
    /// changes are not delivered: each channel is told with a `system` error, every drop is
    /// counted in `/metrics` and logged.
    #[arg(long, env = "MAX_DB_EVENTS_PER_SECOND")]
    pub max_db_events_per_second: Option<u64>,

    /// Channel joins per second, averaged over 60 s.
    #[arg(long, env = "MAX_JOINS_PER_SECOND", default_value_t = 100)]
    pub max_joins_per_second: u64,

    /// Channels one WebSocket may join.
    #[arg(long, env = "MAX_CHANNELS_PER_CLIENT", default_value_t = 100)]
    pub max_channels_per_client: usize,

    /// Largest broadcast or presence payload, in kB (limit = kB·1000 + 500 bytes, as upstream).
    #[arg(long, env = "MAX_PAYLOAD_SIZE_KB", default_value_t = 3000)]
    pub max_payload_size_kb: usize,

    /// Presence events (tracks, state pushes, diff deliveries) per second.
    #[arg(long, env = "MAX_PRESENCE_EVENTS_PER_SECOND", default_value_t = 1000)]
    pub max_presence_events_per_second: u64,

    /// Track/untrack calls allowed per channel within the presence window.
    #[arg(long, env = "CLIENT_PRESENCE_MAX_CALLS", default_value_t = 5)]
    pub client_presence_max_calls: usize,

    /// The presence window, in milliseconds.
    #[arg(long, env = "CLIENT_PRESENCE_WINDOW_MS", default_value_t = 30_000)]
    pub client_presence_window_ms: u64,

    /// Delay before a join error reply, as upstream does to slow down retry storms.
    #[arg(long, env = "CHANNEL_ERROR_BACKOFF_MS", default_value_t = 5_000)]
    pub channel_error_backoff_ms: u64,

    /// Delay before a refused WebSocket handshake.
    #[arg(long, env = "CONNECT_ERROR_BACKOFF_MS", default_value_t = 2_000)]
    pub connect_error_backoff_ms: u64,

    /// Only private channels may be joined (upstream's tenant setting `private_only`); a
    /// public join is refused with `PrivateOnly: This project only allows private channels`.
    #[arg(long, env = "PRIVATE_ONLY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub private_only: bool,

    /// How long a channel joined with `broadcast.replication_ready` waits for the database
    /// broadcast stream before it is shut down, as upstream's one minute.
    #[arg(long, env = "REPLICATION_READY_TIMEOUT_MS", default_value_t = 60_000)]
    pub replication_ready_timeout_ms: u64,

    /// A connection must finish its HTTP request headers (the WebSocket handshake included)
    /// within this long, or it is closed: half-open sockets cost nothing for long.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// A socket that sends nothing for this long is closed.
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Largest WebSocket frame or message accepted, in bytes.
    #[arg(long, env = "MAX_FRAME_SIZE", default_value_t = 5_000_000)]
    pub max_frame_size: usize,

    /// Deliveries queued for one socket before the slow-consumer policy applies; also how many
    /// replies to its own requests may queue before the server stops reading it.
    #[arg(long, env = "OUTBOX_CAPACITY", default_value_t = 4096)]
    pub outbox_capacity: usize,

    /// What happens to a socket whose queue is full.
    #[arg(long, env = "SLOW_CONSUMER_POLICY", value_enum, default_value_t = SlowConsumerPolicy::Disconnect)]
    pub slow_consumer_policy: SlowConsumerPolicy,

    /// How long shutdown waits for sockets to close.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,

    /// Log level (error, warn, info, debug, trace) or a tracing filter directive.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Cluster mode (`--redis-url` and its tuning).
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterConfig,
}

impl Config {
    /// The configuration with every default (environment variables of the CLI still apply),
    /// listening on `addr`, with no database and the default JWT secret.
    pub fn new(addr: SocketAddr) -> Config {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        // Parsing an empty command line only applies defaults, which are all valid.
        let mut config = Wrapper::try_parse_from(["serve"])
            .map(|w| w.config)
            .unwrap_or_else(|e| panic!("default configuration must parse: {e}"));
        config.addr = addr;
        config.jwt_secret = DEFAULT_JWT_SECRET.to_owned();
        config.database_url = None;
        config.cluster.redis_url = None;
        config
    }

    /// Largest payload in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_size_kb * 1000 + 500
    }

    pub(crate) fn channel_error_backoff(&self) -> Duration {
        Duration::from_millis(self.channel_error_backoff_ms)
    }

    pub(crate) fn connect_error_backoff(&self) -> Duration {
        Duration::from_millis(self.connect_error_backoff_ms)
    }
}
