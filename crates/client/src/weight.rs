//! What each event weighs in the queues' byte bounds, and which events are control events
//! that drop policies never drop (see [`queue`](crate::queue)).

use serde_json::Value;

use crate::broadcast::BroadcastPayload;
use crate::events::{ChannelEvent, ClientEvent};
use crate::queue::Weigh;

/// What a queued event weighs beyond its payload (the event itself, its `Arc`, routing).
const EVENT_OVERHEAD: usize = 64;

impl Weigh for ChannelEvent {
    fn weight(&self) -> usize {
        EVENT_OVERHEAD
            + match self {
                ChannelEvent::Broadcast(m) => {
                    m.event.len()
                        + match &m.payload {
                            BroadcastPayload::Json(v) => json_weight(v),
                            BroadcastPayload::Binary(b) => b.len(),
                        }
                        + m.meta.as_ref().map_or(0, json_weight)
                }
                ChannelEvent::PostgresChanges(c) => {
                    c.new
                        .values()
                        .chain(c.old.values())
                        .map(json_weight)
                        .sum::<usize>()
                        + c.columns
                            .iter()
                            .map(|(n, t)| n.len() + t.len())
                            .sum::<usize>()
                }
                ChannelEvent::Presence(_)
                | ChannelEvent::System(_)
                | ChannelEvent::Status(_)
                | ChannelEvent::Dropped { .. } => 0,
            }
    }

    fn is_control(&self) -> bool {
        matches!(self, ChannelEvent::Status(_) | ChannelEvent::Dropped { .. })
    }
}

/// About what a JSON value takes in memory: its text plus a word per node.
fn json_weight(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => 8 + s.len(),
        Value::Array(a) => 8 + a.iter().map(json_weight).sum::<usize>(),
        Value::Object(o) => {
            8 + o
                .iter()
                .map(|(k, v)| 8 + k.len() + json_weight(v))
                .sum::<usize>()
        }
    }
}

impl Weigh for ClientEvent {
    fn weight(&self) -> usize {
        EVENT_OVERHEAD
    }

    fn is_control(&self) -> bool {
        !matches!(self, ClientEvent::Heartbeat { .. })
    }
}
