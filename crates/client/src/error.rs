//! Typed errors: every failure says what kind it is, and carries the server's reason when
//! there is one.

use std::fmt;
use std::sync::Arc;

/// What kind of failure an [`Error`] is. Use it to tell retryable failures from fatal ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The socket is not open and the operation could not wait for it (offline policy
    /// [`OfflinePolicy::Fail`](crate::OfflinePolicy::Fail), or reconnecting gave up).
    NotConnected,
    /// The server refused the token (handshake 401/403, or a join refused for JWT/RLS reasons).
    Authorization,
    /// No answer in time: a join, a push, a broadcast ack or a leave.
    Timeout,
    /// The server refused or closed a channel (join error reply, `phx_error`, `phx_close`,
    /// binding mismatch, a broadcast/presence push answered with an error).
    ChannelError,
    /// The server sent something this client could not understand, or the transport failed.
    Protocol,
    /// The offline buffer of a channel is full (see
    /// [`OfflinePolicy::Buffer`](crate::OfflinePolicy::Buffer)).
    BufferFull,
    /// The client was shut down (all handles dropped or [`disconnect`](crate::RealtimeClient::disconnect)).
    Closed,
    /// The caller asked for something invalid (bad URL, a binding added after subscribe,
    /// binary payload on vsn 1.0.0...).
    InvalidInput,
    /// The REST broadcast endpoint answered with an error status.
    Http,
    /// Events were dropped for a consumer that opted into a drop policy
    /// ([`Overflow`](crate::Overflow)) and fell behind.
    Overflow,
}

/// A failure, with its [`kind`](Error::kind) and a message that includes the server's reason
/// when the server gave one.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    reason: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            reason: None,
            source: None,
        }
    }

    /// Attach the reason the server gave (for example `Unauthorized: You do not have ...`).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// `count` events dropped for slow consumers (`total` so far on the channel).
    pub(crate) fn overflow(count: u64, total: u64) -> Self {
        Error::new(
            ErrorKind::Overflow,
            format!(
                "{count} event(s) dropped because a consumer was too slow ({total} on this channel so far; the channel's overflow policy drops)"
            ),
        )
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server's reason, verbatim, when the server gave one.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The message without the reason.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying later may succeed (timeouts, lost connections, full buffers).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::NotConnected
                | ErrorKind::Timeout
                | ErrorKind::BufferFull
                | ErrorKind::Protocol
        )
    }

    pub(crate) fn not_connected(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotConnected, message)
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, message)
    }

    pub(crate) fn closed() -> Self {
        Error::new(ErrorKind::Closed, "the realtime client was shut down")
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// A channel error whose kind is [`ErrorKind::Authorization`] when the server's reason
    /// says the token or the permissions were the problem.
    pub(crate) fn from_server_reason(
        message: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        let reason = reason.into();
        let kind = if is_auth_reason(&reason) {
            ErrorKind::Authorization
        } else {
            ErrorKind::ChannelError
        };
        Error::new(kind, message).with_reason(reason)
    }
}

/// Join error codes and system messages that mean "your token or your rights" (PROTOCOL.md §9.4).
pub(crate) fn is_auth_reason(reason: &str) -> bool {
    const MARKERS: [&str; 10] = [
        "InvalidJWTToken",
        "MalformedJWT",
        "JwtSignatureError",
        "JwtSignerError",
        "Unauthorized",
        "Token has expired",
        "not a valid JWT",
        "permission",
        "are required in JWT",
        // The project allows only private channels: a refusal by policy, like a denied read.
        "PrivateOnly",
    ];
    MARKERS.iter().any(|m| reason.contains(m))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        if let Some(r) = &self.reason {
            write!(f, " (server: {r})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(r) = &self.reason {
            d.field("reason", r);
        }
        if let Some(s) = &self.source {
            d.field("source", &s.to_string());
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_reasons_are_classified() {
        let e = Error::from_server_reason(
            "join refused",
            "Unauthorized: You do not have permissions to read from this Channel topic: x",
        );
        assert_eq!(e.kind(), ErrorKind::Authorization);
        let e = Error::from_server_reason(
            "join refused",
            "PrivateOnly: This project only allows private channels",
        );
        assert_eq!(e.kind(), ErrorKind::Authorization);
        let e =
            Error::from_server_reason("join refused", "ChannelRateLimitReached: Too many channels");
        assert_eq!(e.kind(), ErrorKind::ChannelError);
        assert!(e.to_string().contains("Too many channels"));
        assert_eq!(
            e.reason(),
            Some("ChannelRateLimitReached: Too many channels")
        );
    }
}
