use serde_json::{json, Value};

use crate::event;

/// One logical Phoenix message: the five fields every serializer carries.
///
/// `join_ref` and `msg_ref` are strings on the wire (decimal counters on every official
/// client) or `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The `ref` of the `phx_join` that created the channel instance this message belongs to.
    pub join_ref: Option<String>,
    /// The message's own ref; replies echo it. `None` for server pushes and broadcasts.
    pub msg_ref: Option<String>,
    /// `realtime:<name>` for channels, `phoenix` for heartbeats.
    pub topic: String,
    /// The event name (see [`crate::event`]).
    pub event: String,
    /// The JSON payload.
    pub payload: Value,
}

/// The status of a `phx_reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The push succeeded.
    Ok,
    /// The push failed; the response says why.
    Error,
}

impl Status {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

impl Message {
    /// A message with every field given.
    pub fn new(
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: Value,
    ) -> Self {
        Message {
            join_ref,
            msg_ref,
            topic: topic.into(),
            event: event.into(),
            payload,
        }
    }

    /// The `phx_reply` to `request`: same topic, `join_ref` and `ref`.
    pub fn reply_to(request: &Message, status: Status, response: Value) -> Self {
        Message {
            join_ref: request.join_ref.clone(),
            msg_ref: request.msg_ref.clone(),
            topic: request.topic.clone(),
            event: event::PHX_REPLY.to_owned(),
            payload: json!({"status": status.as_str(), "response": response}),
        }
    }

    /// A push from a channel to its own client (`system`, `presence_state`): join_ref set, ref null.
    pub fn channel_push(
        join_ref: Option<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: Value,
    ) -> Self {
        Message::new(join_ref, None, topic, event, payload)
    }

    /// A fan-out message (`broadcast`, `presence_diff`, `postgres_changes`): both refs null.
    pub fn fanout(topic: impl Into<String>, event: impl Into<String>, payload: Value) -> Self {
        Message::new(None, None, topic, event, payload)
    }

    /// For a `phx_reply`: its status and response.
    pub fn reply_parts(&self) -> Option<(Status, &Value)> {
        if self.event != event::PHX_REPLY {
            return None;
        }
        let status = match self.payload.get("status")?.as_str()? {
            "ok" => Status::Ok,
            _ => Status::Error,
        };
        Some((status, self.payload.get("response").unwrap_or(&Value::Null)))
    }
}
