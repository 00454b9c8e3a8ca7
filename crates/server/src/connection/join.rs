//! The join pipeline, in upstream's order (PROTOCOL.md §4.2), and token expiry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use supa_realtime_protocol::join::{postgres_changes_id, JoinConfig, JoinPayload, Replay};
use supa_realtime_protocol::presence::state_to_wire;
use supa_realtime_protocol::{event, sub_topic, Message, Status, UserBroadcast, UserPayload};

use super::{close_code, Channel, Connection, Control};
use crate::auth::{Claims, JwtError};
use crate::database::authorization::ReadAccess;
use crate::database::replay::StoredMessage;
use crate::database::UNABLE_TO_CONNECT;
use crate::fanout::{next_sub_id, to_ws};
use crate::limits::SlidingWindow;
use crate::postgres::{Binding, FeedEvent, SubscribeRequest, Subscription};
use crate::registry::{Subscriber, TopicKey};

/// Token checks happen at least this often, as upstream re-verifies channel tokens.
const MAX_TOKEN_CHECK: Duration = Duration::from_secs(300);

/// What a refused private join says when no policy lets the user read the topic.
pub(crate) fn unauthorized_read(name: &str) -> String {
    format!("Unauthorized: You do not have permissions to read from this Channel topic: {name}")
}

/// The refusal of a public join when the server allows only private channels.
pub(crate) const PRIVATE_ONLY: &str = "PrivateOnly: This project only allows private channels";

enum Refusal {
    /// Reply with this reason after the error backoff.
    Reply(String),
    /// Reply, then close the whole socket (upstream: join rate limit).
    ReplyAndClose(String),
}

impl Connection {
    pub(super) async fn join(&mut self, m: Message) {
        let Some(name) = sub_topic(&m.topic).map(str::to_owned) else {
            self.unmatched_topic(&m);
            return;
        };
        // A second join of a joined topic replaces the first: close the old instance first.
        if let Some(old) = self.remove_channel(&m.topic) {
            self.phx_close(&m.topic, &old.join_ref);
        }
        match self.try_join(&m, &name).await {
            Ok(()) => {}
            Err(Refusal::Reply(reason)) => self.refuse(&m, reason, false),
            Err(Refusal::ReplyAndClose(reason)) => self.refuse(&m, reason, true),
        }
    }

    async fn try_join(&mut self, m: &Message, name: &str) -> Result<(), Refusal> {
        let state = self.state.clone();
        if state.shutdown.is_cancelled() {
            return Err(Refusal::Reply(
                "RealtimeRestarting: Realtime is restarting, please standby".into(),
            ));
        }
        if name.is_empty() {
            return Err(Refusal::Reply(
                "TopicNameRequired: You must provide a topic name".into(),
            ));
        }
        let (payload, problems) = JoinPayload::parse(&m.payload);
        if !problems.is_empty() {
            tracing::warn!(conn = self.id, topic = %m.topic, ?problems, "InvalidJoinPayload: continuing with what could be read");
        }
        let legacy = payload.config.is_none();
        let config = payload.config.unwrap_or_default();
        if state.config.private_only && !config.private {
            return Err(Refusal::Reply(PRIVATE_ONLY.into()));
        }

        let admitted = match &state.cluster {
            Some(cluster) if self.channels.is_empty() => {
                cluster.admit_user(state.config.max_concurrent_users).await
            }
            _ => true,
        };
        if !admitted
            || (self.channels.is_empty()
                && state.users.load(Ordering::SeqCst) >= state.config.max_concurrent_users)
        {
            return Err(Refusal::Reply(
                "ConnectionRateLimitReached: Too many connected users".into(),
            ));
        }
        if state.joins.add_and_check(1) {
            return Err(Refusal::ReplyAndClose(
                "ClientJoinRateLimitReached: Too many joins per second".into(),
            ));
        }
        if self.channels.len() >= state.config.max_channels_per_client {
            return Err(Refusal::Reply(
                "ChannelRateLimitReached: Too many channels".into(),
            ));
        }
        let token = match payload.access_token {
            Some(t) if !t.starts_with("sb_") => t,
            _ => self.token.clone(),
        };
        // Verified again even when it is the socket's own token: it may have expired since.
        let claims = state
            .jwt
            .verify(&token)
            .map_err(|e: JwtError| Refusal::Reply(e.join_reason()))?;

        // Upstream evaluates presence read at join only when presence is enabled; otherwise
        // on demand, when the channel first tracks (see `authorize_presence_on_demand`).
        let access = if config.private {
            self.authorize_read(name, &claims, config.presence_enabled)
                .await?
        } else {
            ReadAccess {
                broadcast: true,
                presence: true,
            }
        };
        let replayed = match &config.replay {
            None => Vec::new(),
            Some(_) if !config.private => {
                return Err(Refusal::Reply(
                    "UnableToReplayMessages: Replay is not allowed for public channels".into(),
                ))
            }
            Some(Replay { since: None, .. }) => {
                return Err(Refusal::Reply(
                    "UnableToReplayMessages: Replay params are not valid".into(),
                ))
            }
            Some(_) if !access.broadcast => return Err(Refusal::Reply(unauthorized_read(name))),
            Some(Replay {
                since: Some(since),
                limit,
            }) => match &state.database {
                // In memory nothing is stored, so there is nothing to replay.
                None => Vec::new(),
                Some(db) => db.replay(name, *since, *limit).await.map_err(|e| {
                    tracing::warn!(error = %e, topic = name, "replay failed");
                    Refusal::Reply(
                        "UnableToReplayMessages: Realtime was unable to replay messages".into(),
                    )
                })?,
            },
        };

        let response = if legacy {
            json!({})
        } else {
            json!({"postgres_changes": with_ids(&config.postgres_changes)})
        };
        let sub = next_sub_id();
        let key = TopicKey {
            name: name.to_owned(),
            private: config.private,
        };
        let presence_key = config
            .presence_key
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v1(&rand::random()).to_string());
        let replay_frames: Vec<_> = replayed
            .iter()
            .filter_map(|stored| replay_frame(self.serializer, &m.topic, stored))
            .collect();
        let subscriber = Subscriber {
            join_ref: m.join_ref.clone(),
            outbox: self.outbox.clone(),
            control: self.control.clone(),
            serializer: self.serializer,
            reads_broadcast: access.broadcast,
            reads_presence: access.presence,
            rate: self.rate.clone(),
            closing: Arc::new(AtomicBool::new(false)),
            replayed: (!replayed.is_empty()).then(|| {
                Arc::new(
                    replayed
                        .iter()
                        .map(|r| r.id.clone())
                        .collect::<HashSet<_>>(),
                )
            }),
        };
        let reply = Message::reply_to(m, Status::Ok, response);
        let serializer = self.serializer;
        let outbox = self.outbox.clone();
        let join_ref = m.join_ref.clone();
        let presence_enabled = config.presence_enabled && access.presence;
        let presence_read_checked = !config.private || config.presence_enabled;
        if let Some(cluster) = &state.cluster {
            cluster.prepare_topic(&state.registry, &key).await;
        }
        let topic = state.registry.with_topic(&key, |topic| {
            topic.add(sub, subscriber, |presence| {
                outbox.reply(to_ws(serializer.encode_server_message(&reply)));
                for frame in replay_frames {
                    outbox.reply(frame);
                }
                if presence_enabled {
                    state.presence_events.add(1);
                    outbox.reply(to_ws(serializer.encode_server_message(
                        &Message::channel_push(
                            join_ref.clone(),
                            m.topic.clone(),
                            event::PRESENCE_STATE,
                            state_to_wire(&presence.state()),
                        ),
                    )));
                }
            });
            topic.clone()
        });
        if self.channels.is_empty() {
            state.users.fetch_add(1, Ordering::SeqCst);
        }
        state.metrics.channel_opened(key.private);
        let postgres = if legacy {
            self.subscribe_legacy_postgres(&m.topic, name, &join_ref, &claims)
        } else {
            (!config.postgres_changes.is_empty())
                .then(|| self.subscribe_postgres(&m.topic, name, &join_ref, &config, &claims))
        };
        self.channels.insert(
            m.topic.clone(),
            Channel {
                sub,
                topic,
                join_ref,
                presence_key,
                token,
                claims,
                token_generation: 0,
                presence_calls: SlidingWindow::new(
                    state.config.client_presence_max_calls,
                    Duration::from_millis(state.config.client_presence_window_ms),
                ),
                postgres,
                config,
                access,
                may_broadcast: None,
                may_track: None,
                presence_read_checked,
            },
        );
        self.arm_token_check(&m.topic);
        if let Some(channel) = self.channels.get(&m.topic) {
            if channel.config.replication_ready {
                super::readiness::watch(
                    state.database.clone(),
                    sub,
                    Duration::from_millis(state.config.replication_ready_timeout_ms),
                    self.control.clone(),
                );
            }
        }
        tracing::debug!(conn = self.id, topic = %m.topic, sub, "joined");
        Ok(())
    }

    /// The read check of a private channel: RLS on `realtime.messages` with a database; without
    /// one there are no policies, so only roles that bypass RLS may read.
    async fn authorize_read(
        &self,
        name: &str,
        claims: &Claims,
        presence: bool,
    ) -> Result<ReadAccess, Refusal> {
        match &self.state.database {
            None if may_use_private_channel(claims) => Ok(ReadAccess {
                broadcast: true,
                presence: true,
            }),
            None => Err(Refusal::Reply(unauthorized_read(name))),
            Some(db) => match db.read_access(name, claims, presence).await {
                Ok(access) if access.broadcast || access.presence => Ok(access),
                Ok(_) => Err(Refusal::Reply(unauthorized_read(name))),
                Err(e) => {
                    tracing::warn!(error = %e, topic = name, "private channel authorization failed");
                    Err(Refusal::Reply(UNABLE_TO_CONNECT.into()))
                }
            },
        }
    }

    /// Answer a refused join after upstream's backoff, without holding up this socket.
    fn refuse(&self, m: &Message, reason: String, close: bool) {
        tracing::info!(conn = self.id, topic = %m.topic, %reason, "join refused");
        self.state.metrics.join_refused(&reason);
        let reply = Message::reply_to(m, Status::Error, json!({"reason": reason}));
        let frame = to_ws(self.serializer.encode_server_message(&reply));
        let outbox = self.outbox.clone();
        // Counted as queued from now: a client pipelining refused joins is pushed back instead
        // of piling up sleeping replies.
        let room = self.outbox.reserve_reply();
        let delay = self.state.config.channel_error_backoff();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            room.send(frame);
            if close {
                outbox.close(close_code::GOING_AWAY, "too many joins per second");
            }
        });
    }

    fn subscribe_postgres(
        &self,
        wire_topic: &str,
        name: &str,
        join_ref: &Option<String>,
        config: &JoinConfig,
        claims: &Claims,
    ) -> Subscription {
        let bindings = config
            .postgres_changes
            .iter()
            .map(|item| Binding {
                id: postgres_changes_id(item),
                params: item.clone(),
            })
            .collect();
        let outbox = self.outbox.clone();
        let serializer = self.serializer;
        let lost = self.phx_error_notice(wire_topic, join_ref);
        let wire_topic = wire_topic.to_owned();
        let channel_name = name.to_owned();
        let join_ref = join_ref.clone();
        let metrics = self.state.metrics.clone();
        // Changes go straight to the socket's queue: the feed never waits on this connection,
        // and the slow-consumer policy applies as for any other fan-out.
        let sink = Arc::new(move |ev: FeedEvent| {
            let kind = match ev {
                FeedEvent::Change { .. } => "postgres_changes",
                _ => "system",
            };
            let frame = match ev {
                // Encoded once per serializer for every channel of this topic that gets the
                // same change with the same ids (the fan-out's `Encoded`).
                FeedEvent::Change(change) => match change.frame(serializer) {
                    Some(frame) => frame,
                    None => return,
                },
                ev => to_ws(serializer.encode_server_message(&feed_message(
                    &wire_topic,
                    &channel_name,
                    &join_ref,
                    ev,
                ))),
            };
            if outbox.send(frame) {
                metrics.messages_out(kind, 1);
            }
        });
        let sink = self.limit_db_events(sink, name);
        let request = SubscribeRequest {
            topic: name.to_owned(),
            claims: Value::Object(claims.raw.clone()),
            bindings,
            sink,
        };
        // cluster mode: shared so the slot's reader (maybe another node) checks it too
        let request = match &self.state.cluster {
            Some(cluster) => cluster.share_postgres(request, self.id, lost),
            None => request,
        };
        self.state.feed.subscribe(request)
    }

    /// Schedule the next token check of `topic` at `min(5 min, exp − now)`.
    pub(super) fn arm_token_check(&self, topic: &str) {
        let Some(channel) = self.channels.get(topic) else {
            return;
        };
        let left = channel.claims.seconds_left().max(0) as u64;
        let delay = Duration::from_secs(left).min(MAX_TOKEN_CHECK);
        let control = self.control.clone();
        let (sub, generation) = (channel.sub, channel.token_generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = control.send(Control::TokenCheck { sub, generation }).await;
        });
    }

    pub(super) fn token_check(&mut self, sub: u64, generation: u64) {
        let Some(topic) = self.topic_of(sub) else {
            return;
        };
        let Some(channel) = self.channels.get(&topic) else {
            return;
        };
        if channel.token_generation != generation {
            return;
        }
        match self.state.jwt.verify(&channel.token) {
            Ok(_) => self.arm_token_check(&topic),
            Err(e) => self.close_channel(&topic, &e.to_string()),
        }
    }
}

/// Without a database there are no RLS policies on `realtime.messages`: as on a Supabase
/// project with none, only roles that bypass RLS (`service_role`) may use private channels.
pub(crate) fn may_use_private_channel(claims: &Claims) -> bool {
    claims.role == "service_role"
}

/// The join reply's `postgres_changes`: each item as sent, plus its `id`.
fn with_ids(items: &[Value]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|item| match item {
                Value::Object(map) => {
                    let mut map = map.clone();
                    map.insert("id".into(), Value::from(postgres_changes_id(item)));
                    Value::Object(map)
                }
                other => other.clone(),
            })
            .collect(),
    )
}

impl Connection {
    /// Cluster mode: what tells a postgres_changes channel that deliveries for it were lost
    /// on the way to this node (`phx_error`, so that its client rejoins).
    pub(super) fn phx_error_notice(
        &self,
        wire_topic: &str,
        join_ref: &Option<String>,
    ) -> crate::cluster::Lost {
        let (outbox, serializer) = (self.outbox.clone(), self.serializer);
        let (topic, join_ref) = (wire_topic.to_owned(), join_ref.clone());
        Arc::new(move || {
            let m = Message::new(
                join_ref.clone(),
                join_ref.clone(),
                topic.clone(),
                event::PHX_ERROR,
                json!({}),
            );
            outbox.send(to_ws(serializer.encode_server_message(&m)));
        })
    }
}

pub(super) fn feed_message(
    wire_topic: &str,
    name: &str,
    join_ref: &Option<String>,
    ev: FeedEvent,
) -> Message {
    match ev {
        FeedEvent::Subscribed => Message::channel_push(
            join_ref.clone(),
            wire_topic,
            event::SYSTEM,
            json!({"extension": "postgres_changes", "status": "ok", "message": "Subscribed to PostgreSQL", "channel": name}),
        ),
        FeedEvent::Error(message) => Message::channel_push(
            join_ref.clone(),
            wire_topic,
            event::SYSTEM,
            json!({"extension": "postgres_changes", "status": "error", "message": message, "channel": name}),
        ),
        FeedEvent::Change(change) => {
            Message::fanout(wire_topic, event::POSTGRES_CHANGES, change.payload())
        }
    }
}

/// A replayed message for this socket: JSON rows as text broadcasts, binary rows as kind 4
/// (2.0.0 only), both marked `"replayed": true`.
fn replay_frame(
    serializer: supa_realtime_protocol::Serializer,
    wire_topic: &str,
    stored: &StoredMessage,
) -> Option<axum::extract::ws::Message> {
    let meta = json!({"replayed": true, "id": stored.id});
    match (&stored.json, &stored.binary) {
        (Some(json_text), _) => {
            let payload: Value = serde_json::from_str(json_text).ok()?;
            Some(to_ws(serializer.encode_server_message(&Message::fanout(
                wire_topic,
                event::BROADCAST,
                json!({"type": "broadcast", "event": stored.event, "payload": payload, "meta": meta}),
            ))))
        }
        (None, Some(bytes)) => serializer
            .encode_user_broadcast(&UserBroadcast {
                join_ref: None,
                msg_ref: None,
                topic: wire_topic.to_owned(),
                event: stored.event.clone(),
                metadata: Some(bytes::Bytes::from(meta.to_string())),
                payload: UserPayload::Binary(bytes.clone()),
            })
            .map(to_ws),
        (None, None) => None,
    }
}
