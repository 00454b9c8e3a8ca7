//! The logical replication driver both streams use: start a slot from a position, read decoded
//! pgoutput messages, and keep the server informed of what is handled.
//!
//! Position bookkeeping, the part that is easy to get wrong:
//! * `handled`: everything before it has been fully dealt with by the user (delivered to every
//!   sink). Only the user moves it: [`LogicalStream::confirm`] after a commit was delivered,
//!   [`LogicalStream::idle`] for a keepalive's WAL end when nothing is open or queued.
//! * `sent`: what the server was last told in a standby status update. It is never more than
//!   `handled`, so the slot never skips something undelivered; it is updated at every
//!   confirmation, when the server asks (keepalive with `reply`), and every 10 s so the server
//!   does not time the connection out.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::connection::{ReplError, ReplMessage, ReplicationConnection};
use super::pgoutput::{self, DecodeError, Message};

/// How often a status update is sent while nothing else sends one.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What the stream yields.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A decoded pgoutput message.
    Message(Message),
    /// A message that could not be decoded (the caller decides whether that is fatal).
    Undecodable(DecodeError),
    /// The server's WAL end: everything before it has been streamed.
    Keepalive {
        wal_end: u64,
        /// The server asks for a status update now.
        reply: bool,
    },
}

/// A started logical replication stream.
pub(crate) struct LogicalStream {
    conn: ReplicationConnection,
    handled: u64,
    sent: u64,
    last_status: Instant,
}

impl LogicalStream {
    /// `START_REPLICATION` on `slot` from `from` (0: from the slot's confirmed position) with
    /// pgoutput for `publication`.
    pub(crate) async fn start(
        mut conn: ReplicationConnection,
        slot: &str,
        from: u64,
        publication: &str,
    ) -> Result<LogicalStream, (ReplicationConnection, ReplError)> {
        match conn.start_logical(slot, from, publication).await {
            Ok(()) => Ok(LogicalStream {
                conn,
                handled: from,
                sent: from,
                last_status: Instant::now(),
            }),
            Err(e) => Err((conn, e)),
        }
    }

    /// The next frame. Cancel-safe: a frame partly read stays buffered.
    pub(crate) async fn next(&mut self) -> Result<Frame, ReplError> {
        match self.conn.next().await? {
            ReplMessage::XLogData { data } => Ok(decode(data)),
            ReplMessage::Keepalive { wal_end, reply } => Ok(Frame::Keepalive { wal_end, reply }),
        }
    }

    /// Everything up to `lsn` is handled: tell the server now (so a crash right after does not
    /// replay it).
    pub(crate) async fn confirm(&mut self, lsn: u64) -> Result<(), ReplError> {
        self.handled = self.handled.max(lsn);
        self.send().await
    }

    /// A keepalive arrived: its WAL end is handled when `nothing_pending`; answer it if asked.
    pub(crate) async fn idle(
        &mut self,
        wal_end: u64,
        reply: bool,
        nothing_pending: bool,
    ) -> Result<(), ReplError> {
        if nothing_pending {
            self.handled = self.handled.max(wal_end);
        }
        if reply {
            self.send().await?;
        }
        Ok(())
    }

    /// Periodic: send a status update if something is unreported or one is due.
    pub(crate) async fn tick(&mut self) -> Result<(), ReplError> {
        if self.handled > self.sent || self.last_status.elapsed() > STATUS_EVERY {
            self.send().await?;
        }
        Ok(())
    }

    /// What the server was last told is handled.
    pub(crate) fn confirmed(&self) -> u64 {
        self.sent
    }

    /// What is handled (told to the server or about to be).
    pub(crate) fn handled(&self) -> u64 {
        self.handled
    }

    async fn send(&mut self) -> Result<(), ReplError> {
        self.conn.send_status(self.handled, false).await?;
        self.sent = self.handled;
        self.last_status = Instant::now();
        Ok(())
    }
}

fn decode(data: Bytes) -> Frame {
    match pgoutput::decode(data) {
        Ok(m) => Frame::Message(m),
        Err(e) => Frame::Undecodable(e),
    }
}
