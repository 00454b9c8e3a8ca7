//! Logical replication from PostgreSQL, below both of its users: postgres_changes
//! (`crate::postgres`, a permanent slot streaming the `supabase_realtime` publication) and
//! database broadcast (`crate::database::broadcast_stream`, a temporary slot streaming
//! `realtime.messages`; in cluster mode `crate::database::broadcast_cluster`, one permanent
//! slot read by one node).
//!
//! * [`connection`]: the streaming-replication half of the wire protocol (startup in
//!   replication mode, authentication, `START_REPLICATION`, XLogData / keepalive frames in,
//!   standby status updates out).
//! * [`pgoutput`]: decoding the pgoutput messages carried by XLogData.
//! * [`stream`]: the driver both streams use: start from a position, decoded frames, status
//!   updates that never run ahead of what was handled.
//!
//! Data flows one way: a user opens a [`connection::ReplicationConnection`], starts it from a
//! position, reads frames, decodes them with [`pgoutput::decode`], and confirms positions.

pub(crate) mod connection;
pub(crate) mod pgoutput;
pub(crate) mod stream;

pub(crate) use connection::{
    format_lsn, quote_ident, ConnParams, ReplError, ReplicationConnection,
};
