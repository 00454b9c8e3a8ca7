//! The socket's lifecycle as an enum with consuming, exhaustive transitions.

use std::time::Duration;

use super::backoff::reconnect_delay;

/// Where the socket is. Observable through
/// [`RealtimeClient::connection_state`](crate::RealtimeClient::connection_state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// A connection attempt is under way; `attempt` failed attempts precede it.
    Connecting {
        /// Failed attempts in a row before this one.
        attempt: u32,
    },
    /// The socket is open.
    Open,
    /// Waiting `delay` before the next attempt.
    Reconnecting {
        /// Failed attempts in a row so far.
        attempt: u32,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// Not connected and not trying.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why the socket is [`ConnectionState::Closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// [`RealtimeClient::disconnect`](crate::RealtimeClient::disconnect) or every handle dropped.
    User,
    /// The connection dropped and `auto_reconnect` is off.
    NoReconnect,
    /// `max_retries` attempts in a row failed.
    GaveUp,
}

/// What happened to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// The handshake succeeded.
    Opened,
    /// The handshake failed.
    ConnectFailed,
    /// An open socket closed, errored or stopped answering heartbeats.
    Dropped,
    /// The reconnect delay is over.
    BackoffElapsed,
    /// The user asked to disconnect.
    Disconnect,
    /// The user asked to connect.
    Connect,
}

/// The reconnect settings the transitions need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReconnectPolicy {
    pub(crate) auto_reconnect: bool,
    pub(crate) max_retries: Option<u32>,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl ReconnectPolicy {
    fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        reconnect_delay(attempt, self.initial_backoff, self.max_backoff, jitter)
    }
}

impl ConnectionState {
    /// The state after `input`. `jitter` ∈ [0, 1] picks the reconnect delay within its range.
    /// Inputs that do not apply to a state leave it unchanged.
    pub(crate) fn next(
        self,
        input: Input,
        policy: &ReconnectPolicy,
        jitter: f64,
    ) -> ConnectionState {
        use ConnectionState as S;
        match (self, input) {
            (_, Input::Disconnect) => S::Closed {
                reason: CloseReason::User,
            },
            (S::Closed { .. }, Input::Connect) => S::Connecting { attempt: 0 },
            (S::Connecting { .. }, Input::Opened) => S::Open,
            (S::Connecting { attempt }, Input::ConnectFailed) => {
                let failed = attempt.saturating_add(1);
                if !policy.auto_reconnect {
                    S::Closed {
                        reason: CloseReason::NoReconnect,
                    }
                } else if policy.max_retries.is_some_and(|m| failed > m) {
                    S::Closed {
                        reason: CloseReason::GaveUp,
                    }
                } else {
                    S::Reconnecting {
                        attempt: failed,
                        delay: policy.delay(attempt, jitter),
                    }
                }
            }
            (S::Open, Input::Dropped) => {
                if policy.auto_reconnect {
                    // The first retry after a drop waits one jittered initial backoff, so that a
                    // restarting server is not hit by every client at the same instant.
                    S::Reconnecting {
                        attempt: 0,
                        delay: policy.delay(0, jitter),
                    }
                } else {
                    S::Closed {
                        reason: CloseReason::NoReconnect,
                    }
                }
            }
            (S::Reconnecting { attempt, .. }, Input::BackoffElapsed) => S::Connecting { attempt },
            (state, _) => state,
        }
    }

    /// Whether the socket is open.
    pub fn is_open(&self) -> bool {
        matches!(self, ConnectionState::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionState as S;

    const MS: Duration = Duration::from_millis(1);

    fn policy(max_retries: Option<u32>) -> ReconnectPolicy {
        ReconnectPolicy {
            auto_reconnect: true,
            max_retries,
            initial_backoff: 100 * MS,
            max_backoff: 1000 * MS,
        }
    }

    #[test]
    fn reconnects_forever_by_default() {
        let p = policy(None);
        let mut s = S::Connecting { attempt: 0 }.next(Input::Opened, &p, 1.0);
        assert_eq!(s, S::Open);
        s = s.next(Input::Dropped, &p, 1.0);
        assert_eq!(
            s,
            S::Reconnecting {
                attempt: 0,
                delay: 100 * MS
            }
        );
        for i in 0..100u32 {
            s = s.next(Input::BackoffElapsed, &p, 1.0);
            assert_eq!(s, S::Connecting { attempt: i });
            s = s.next(Input::ConnectFailed, &p, 1.0);
            let S::Reconnecting { attempt, delay } = s.clone() else {
                panic!("{s:?}")
            };
            assert_eq!(attempt, i + 1);
            assert!(delay <= 1000 * MS);
        }
        s = s
            .next(Input::BackoffElapsed, &p, 1.0)
            .next(Input::Opened, &p, 1.0);
        assert_eq!(s, S::Open);
    }

    #[test]
    fn gives_up_after_max_retries() {
        let p = policy(Some(2));
        let mut s = S::Connecting { attempt: 0 };
        s = s
            .next(Input::ConnectFailed, &p, 0.0)
            .next(Input::BackoffElapsed, &p, 0.0);
        s = s
            .next(Input::ConnectFailed, &p, 0.0)
            .next(Input::BackoffElapsed, &p, 0.0);
        assert_eq!(s, S::Connecting { attempt: 2 });
        assert_eq!(
            s.next(Input::ConnectFailed, &p, 0.0),
            S::Closed {
                reason: CloseReason::GaveUp
            }
        );
    }

    #[test]
    fn no_auto_reconnect_and_user_disconnect() {
        let mut p = policy(None);
        p.auto_reconnect = false;
        assert_eq!(
            S::Open.next(Input::Dropped, &p, 0.5),
            S::Closed {
                reason: CloseReason::NoReconnect
            }
        );
        let p = policy(None);
        for s in [
            S::Open,
            S::Connecting { attempt: 3 },
            S::Reconnecting {
                attempt: 1,
                delay: MS,
            },
        ] {
            assert_eq!(
                s.next(Input::Disconnect, &p, 0.5),
                S::Closed {
                    reason: CloseReason::User
                }
            );
        }
        let closed = S::Closed {
            reason: CloseReason::User,
        };
        assert_eq!(closed.clone().next(Input::Dropped, &p, 0.5), closed);
        assert_eq!(
            closed.next(Input::Connect, &p, 0.5),
            S::Connecting { attempt: 0 }
        );
        // Irrelevant inputs change nothing.
        assert_eq!(S::Open.next(Input::BackoffElapsed, &p, 0.5), S::Open);
        assert_eq!(S::Open.next(Input::Connect, &p, 0.5), S::Open);
    }
}
