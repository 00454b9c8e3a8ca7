//! Joins without `config`: the API of older clients (PROTOCOL.md §4.6).
//!
//! Upstream reads such a join's sub-topic as `schema[:table[:filter]]`
//! (`realtime:public:todos:id=eq.1`) and subscribes to those changes, which it then pushes with
//! the change's own type as the event (`INSERT`, `UPDATE`, `DELETE`) and the bare change record
//! as the payload, without the `ids` wrapper of `postgres_changes`. The join reply has no
//! `postgres_changes` key. Like upstream, a legacy join to a topic that names no schema
//! (`realtime:room1`) gets the subscription's `system` error; broadcast and presence work as
//! usual. Without a database there is nothing to subscribe to, and nothing is said.

use std::sync::Arc;

use serde_json::{Map, Value};
use supa_realtime_protocol::join::postgres_changes_id;

use super::join::feed_message;
use super::Connection;
use crate::auth::Claims;
use crate::fanout::to_ws;
use crate::postgres::{Binding, FeedEvent, SubscribeRequest, Subscription};

/// The subscription a legacy join of sub-topic `name` asks for.
pub(super) fn params(name: &str) -> Value {
    let mut parts = name.splitn(3, ':');
    let mut params = Map::new();
    for key in ["schema", "table", "filter"] {
        if let Some(part) = parts.next() {
            params.insert(key.into(), Value::from(part));
        }
    }
    Value::Object(params)
}

impl Connection {
    /// Subscribe a legacy channel to the changes its topic names, if there is a database.
    pub(super) fn subscribe_legacy_postgres(
        &self,
        wire_topic: &str,
        name: &str,
        join_ref: &Option<String>,
        claims: &Claims,
    ) -> Option<Subscription> {
        self.state.database.as_ref()?;
        let params = params(name);
        let lost = self.phx_error_notice(wire_topic, join_ref);
        let outbox = self.outbox.clone();
        let serializer = self.serializer;
        let (wire, channel, join_ref) = (wire_topic.to_owned(), name.to_owned(), join_ref.clone());
        let sink = Arc::new(move |ev: FeedEvent| {
            let frame = match ev {
                // The shared frame is the `postgres_changes` one; a legacy channel re-reads
                // its data (older clients are few, so this copy per delivery is acceptable).
                FeedEvent::Change(change) => {
                    let payload = change.payload();
                    let data = &payload["data"];
                    let event = data["type"].as_str().unwrap_or("").to_owned();
                    serializer.encode_server_raw(None, None, &wire, &event, &data.to_string())
                }
                ev => {
                    serializer.encode_server_message(&feed_message(&wire, &channel, &join_ref, ev))
                }
            };
            outbox.send(to_ws(frame));
        });
        let sink = self.limit_db_events(sink, name);
        let request = SubscribeRequest {
            topic: name.to_owned(),
            claims: Value::Object(claims.raw.clone()),
            bindings: vec![Binding {
                id: postgres_changes_id(&params),
                params,
            }],
            sink,
        };
        // Cluster mode: shared like any postgres_changes channel, so the slot's reader (maybe
        // another node) delivers to it.
        let request = match &self.state.cluster {
            Some(cluster) => cluster.share_postgres(request, self.id, lost),
            None => request,
        };
        Some(self.state.feed.subscribe(request))
    }
}

#[cfg(test)]
mod tests {
    use super::params;
    use serde_json::json;

    #[test]
    fn topic_parts_become_the_subscription() {
        assert_eq!(params("room1"), json!({"schema": "room1"}));
        assert_eq!(
            params("public:todos"),
            json!({"schema": "public", "table": "todos"})
        );
        assert_eq!(
            params("public:todos:id=eq.1:x"),
            json!({"schema": "public", "table": "todos", "filter": "id=eq.1:x"})
        );
    }
}
