//! Event names used on the wire (PROTOCOL.md §3.3).

/// Client asks to join a channel; the server replies with `phx_reply`.
pub const PHX_JOIN: &str = "phx_join";
/// Client leaves a channel.
pub const PHX_LEAVE: &str = "phx_leave";
/// Reply to a push that carried a `ref`.
pub const PHX_REPLY: &str = "phx_reply";
/// The server closed the channel (normally: leave, token expiry, limits).
pub const PHX_CLOSE: &str = "phx_close";
/// The channel crashed.
pub const PHX_ERROR: &str = "phx_error";
/// Heartbeat, on the `phoenix` topic.
pub const HEARTBEAT: &str = "heartbeat";
/// Swap the channel's JWT. Never answered.
pub const ACCESS_TOKEN: &str = "access_token";
/// Broadcast message, both directions.
pub const BROADCAST: &str = "broadcast";
/// Presence track/untrack (client to server).
pub const PRESENCE: &str = "presence";
/// Full presence state, sent once after join.
pub const PRESENCE_STATE: &str = "presence_state";
/// Presence joins and leaves.
pub const PRESENCE_DIFF: &str = "presence_diff";
/// A database change.
pub const POSTGRES_CHANGES: &str = "postgres_changes";
/// Status messages from the server about a channel's extensions.
pub const SYSTEM: &str = "system";
