//! The feed's vocabulary, shared by every file of the feed and by its callers: what a channel
//! asks for ([`SubscribeRequest`], [`Binding`]), what it is told ([`FeedEvent`]), and the
//! change message itself ([`ChangeFrame`]), made once and shared by every channel that gets
//! it. A leaf: it imports nothing of the feed.

use std::sync::Arc;

use serde_json::Value;

use crate::fanout::{Body, Encoded};

/// One `postgres_changes` item of a join, with the id the join reply gave it.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The id echoed in the join reply.
    pub id: u32,
    /// The item exactly as the client sent it (`event`, `schema`, `table`, `filter`, ...).
    pub params: Value,
}

/// What the feed tells a subscribed channel.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// The subscription is live: changes committed from now on will be delivered.
    Subscribed,
    /// The subscription failed or the database went away; the text is the system message.
    Error(String),
    /// A change visible to some bindings of this channel.
    Change(ChangeFrame),
}

/// One `postgres_changes` message (`{"data": .., "ids": ..}` for a topic), shared by every
/// channel of that topic that gets the same change with the same ids: it goes through the
/// fan-out's encode-once cell, so it is serialized once per serializer, not once per channel.
#[derive(Debug, Clone)]
pub struct ChangeFrame(Arc<Encoded>, ChangePosition, u32);

/// Where a change stands in the slot's stream: the commit LSN of its transaction and its
/// ordinal among the transaction's changes. The same on every reader of the WAL, and
/// increasing along the stream, so a receiver can drop what a new reader sends again.
/// `(0, 0)`: unknown.
pub(crate) type ChangePosition = (u64, u32);

impl ChangeFrame {
    /// A message made elsewhere (another cluster node's reader): `payload` is its JSON text.
    pub(crate) fn from_raw(wire_topic: String, payload: String, at: ChangePosition) -> Self {
        let ids = ids_in(&payload);
        ChangeFrame(
            Arc::new(Encoded::new(Body::Raw {
                topic: wire_topic,
                event: supa_realtime_protocol::event::POSTGRES_CHANGES,
                payload,
            })),
            at,
            ids,
        )
    }

    /// How many binding ids the message carries: what upstream counts against the
    /// database-events limit (one per subscription id a change goes to).
    pub(crate) fn ids(&self) -> u32 {
        self.2
    }

    /// The wire topic and JSON text of the payload.
    pub(crate) fn raw(&self) -> Option<(&str, &str)> {
        match self.0.body() {
            Body::Raw { topic, payload, .. } => Some((topic, payload)),
            _ => None,
        }
    }

    /// Where the change stands in the stream.
    pub(crate) fn position(&self) -> ChangePosition {
        self.1
    }

    /// The message for `topic` (the sub-topic), ids and data.
    pub(crate) fn new(
        topic: &str,
        ids: &[u32],
        data: &ChangeData,
        at: ChangePosition,
    ) -> ChangeFrame {
        // Keys in upstream's (sorted) order: data, ids.
        let payload = format!(
            "{{\"data\":{},\"ids\":{}}}",
            data.json(),
            Value::from(ids.to_vec())
        );
        ChangeFrame(
            Arc::new(Encoded::new(Body::Raw {
                topic: format!("{}{topic}", supa_realtime_protocol::TOPIC_PREFIX),
                event: supa_realtime_protocol::event::POSTGRES_CHANGES,
                payload,
            })),
            at,
            ids.len() as u32,
        )
    }

    /// The frame for a socket using `serializer`.
    pub(crate) fn frame(
        &self,
        serializer: supa_realtime_protocol::Serializer,
    ) -> Option<axum::extract::ws::Message> {
        self.0.frame(serializer)
    }

    /// The payload as JSON.
    pub(crate) fn payload(&self) -> Value {
        match self.0.body() {
            Body::Raw { payload, .. } => serde_json::from_str(payload).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// The length of the `ids` array that ends a message made by [`ChangeFrame::new`] (at least 1:
/// a message always goes to some binding).
fn ids_in(payload: &str) -> u32 {
    let Some(start) = payload.rfind("\"ids\":[") else {
        return 1;
    };
    let list = payload[start + 7..].split(']').next().unwrap_or("");
    (list.split(',').filter(|id| !id.trim().is_empty()).count() as u32).max(1)
}

/// A change's `data` object, shared by every channel it goes to, with its JSON text made on
/// first use: a change fanned out to many channels is serialized once, not once per channel.
#[derive(Debug)]
pub struct ChangeData {
    value: Value,
    json: std::sync::OnceLock<String>,
}

impl ChangeData {
    /// Wrap a `data` object.
    pub fn new(value: Value) -> Self {
        ChangeData {
            value,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The object.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Its JSON text, made once.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| self.value.to_string())
    }
}

/// A non-blocking callback; it must never wait (it runs on the feed's task).
pub type Sink = Arc<dyn Fn(FeedEvent) + Send + Sync>;

/// A channel's request to receive changes.
pub struct SubscribeRequest {
    /// The channel's sub-topic (`room1` for `realtime:room1`).
    pub topic: String,
    /// The channel's JWT claims (`role`, `sub`, ...), used for row-level security.
    pub claims: Value,
    /// The items of the join, in order.
    pub bindings: Vec<Binding>,
    /// Where events go.
    pub sink: Sink,
}

/// What channels are told when the database cannot be reached (upstream's text for a tenant
/// database it cannot connect to).
pub(crate) const DB_UNAVAILABLE: &str = "Realtime was unable to connect to the project database";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_counted_in_raw_messages() {
        let data = ChangeData::new(serde_json::json!({"record": {"ids": [9, 9, 9]}}));
        let made = ChangeFrame::new("t", &[4, 7], &data, (1, 1));
        let (topic, payload) = made
            .raw()
            .map(|(t, p)| (t.to_owned(), p.to_owned()))
            .unwrap_or_default();
        let again = ChangeFrame::from_raw(topic, payload, (1, 1));
        assert_eq!((made.ids(), again.ids()), (2, 2));
        assert_eq!(
            ChangeFrame::from_raw("realtime:t".into(), "{}".into(), (0, 0)).ids(),
            1
        );
    }
}
