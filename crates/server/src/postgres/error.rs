//! Why the change feed's session with the database ended (it then backs off and reconnects).

use crate::replication::pgoutput::DecodeError;
use crate::replication::ReplError;

use super::setup::SetupError;

/// A failure of the feed: the reason the session ended, shown in `/api/health` and logs.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The database URL cannot be parsed.
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// A query connection failed or a query on it did.
    #[error("{0}")]
    Query(#[from] tokio_postgres::Error),
    /// The replication connection failed.
    #[error("replication: {0}")]
    Replication(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A replication message could not be decoded.
    #[error("{0}")]
    Decode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Setting up the publication or the slot failed.
    #[error("setup: {0}")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Cluster mode: this node no longer holds the slot's lease (another node reads it).
    #[error("the replication slot's cluster lease was lost")]
    SlotLeaseLost,
}

impl From<ReplError> for FeedError {
    fn from(e: ReplError) -> Self {
        FeedError::Replication(Box::new(e))
    }
}

impl From<std::io::Error> for FeedError {
    fn from(e: std::io::Error) -> Self {
        FeedError::Replication(Box::new(e))
    }
}

impl From<DecodeError> for FeedError {
    fn from(e: DecodeError) -> Self {
        FeedError::Decode(Box::new(e))
    }
}

impl From<SetupError> for FeedError {
    fn from(e: SetupError) -> Self {
        FeedError::Setup(Box::new(e))
    }
}
