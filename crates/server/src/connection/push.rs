//! Client pushes on a joined channel: broadcast, presence, access_token.

use serde_json::{json, Map, Value};
use supa_realtime_protocol::binary::BinaryPush;
use supa_realtime_protocol::{event, Message, Status, UserBroadcast, UserPayload};

use super::join::may_use_private_channel;
use super::Connection;
use crate::auth::Claims;
use crate::database::authorization::{Extension, ReadAccess};
use crate::fanout::Body;
use crate::registry::TOO_MANY_MESSAGES;

/// The broadcast ack error; upstream sends it as a bare JSON string.
const PAYLOAD_SIZE_EXCEEDED: &str = "payload_size_exceeded";

impl Connection {
    /// Whether a payload is over the limit. `frame_len` bounds it from above, so the payload
    /// is measured only when the frame itself is large.
    fn oversized(&self, frame_len: usize, payload: &Value) -> bool {
        oversized(self.state.config.max_payload_bytes(), frame_len, payload)
    }

    /// Takes the message by value: its payload moves into the fan-out instead of being copied.
    pub(super) async fn broadcast(&mut self, m: Message, frame_len: usize) {
        // Without write permission a private channel's broadcasts are dropped with no reply,
        // even with ack, as upstream does.
        if !self.may_write(&m.topic, Extension::Broadcast).await {
            return;
        }
        if !self.channels.contains_key(&m.topic) || !self.spend(&m.topic) {
            return;
        }
        let Some(channel) = self.channels.get(&m.topic) else {
            return;
        };
        let ack = channel.config.broadcast_ack;
        if self.oversized(frame_len, &m.payload) {
            if ack {
                self.reply(&m, Status::Error, Value::from(PAYLOAD_SIZE_EXCEEDED));
            }
            return;
        }
        let exclude = (!channel.config.broadcast_self).then_some(channel.sub);
        let topic = channel.topic.clone();
        let ack_reply = ack.then(|| Message::reply_to(&m, Status::Ok, json!({})));
        // The client's map is forwarded as it came (extra keys survive), as upstream does.
        topic.broadcast_from_client(
            Body::Json(Message::fanout(m.topic, event::BROADCAST, m.payload)),
            exclude,
        );
        if let Some(reply) = ack_reply {
            self.push(&reply);
        }
    }

    /// A kind-3 binary push: a broadcast with the user's event and payload.
    pub(super) async fn on_user_broadcast(&mut self, b: UserBroadcast, frame_len: usize) {
        if self.channels.contains_key(&b.topic)
            && !self.may_write(&b.topic, Extension::Broadcast).await
        {
            return;
        }
        let Some(channel) = self.channels.get(&b.topic) else {
            self.unmatched_topic(&Message::new(
                b.join_ref,
                b.msg_ref,
                b.topic,
                event::BROADCAST,
                Value::Null,
            ));
            return;
        };
        if let (Some(sent), Some(current)) = (&b.join_ref, &channel.join_ref) {
            if sent != current {
                return;
            }
        }
        if !self.spend(&b.topic) {
            return;
        }
        let Some(channel) = self.channels.get(&b.topic) else {
            return;
        };
        let ack = channel.config.broadcast_ack;
        let as_reply_target = Message::new(
            b.join_ref.clone(),
            b.msg_ref.clone(),
            b.topic.clone(),
            event::BROADCAST,
            Value::Null,
        );
        if frame_len > self.state.config.max_payload_bytes() {
            if ack {
                self.reply(
                    &as_reply_target,
                    Status::Error,
                    Value::from(PAYLOAD_SIZE_EXCEEDED),
                );
            }
            return;
        }
        if let UserPayload::Json(raw) = &b.payload {
            if serde_json::from_slice::<serde::de::IgnoredAny>(raw).is_err() {
                tracing::warn!(conn = self.id, topic = %b.topic, "MalformedWebSocketMessage: broadcast payload is not JSON");
                return;
            }
        }
        let exclude = (!channel.config.broadcast_self).then_some(channel.sub);
        let topic = channel.topic.clone();
        // The pushed metadata is ignored, as upstream does; deliveries carry none.
        let delivery = UserBroadcast {
            join_ref: None,
            msg_ref: None,
            topic: b.topic,
            event: b.event,
            metadata: None,
            payload: b.payload,
        };
        topic.broadcast_from_client(Body::User(delivery), exclude);
        if ack {
            self.reply(&as_reply_target, Status::Ok, json!({}));
        }
    }

    /// A kind-0 binary push. Only `broadcast` means anything: it is fanned out as kind 2.
    pub(super) fn on_binary_push(&mut self, p: BinaryPush, frame_len: usize) {
        if !self.channels.contains_key(&p.topic) {
            return;
        }
        if p.event != event::BROADCAST || frame_len > self.state.config.max_payload_bytes() {
            tracing::info!(conn = self.id, topic = %p.topic, event = %p.event, "binary push ignored");
            return;
        }
        if !self.spend(&p.topic) {
            return;
        }
        let Some(channel) = self.channels.get(&p.topic) else {
            return;
        };
        let exclude = (!channel.config.broadcast_self).then_some(channel.sub);
        let topic = channel.topic.clone();
        topic.broadcast_from_client(
            Body::Opaque {
                topic: p.topic,
                event: p.event,
                data: p.data,
            },
            exclude,
        );
    }

    /// Count one push against the socket's events budget. Over it, the channel gets
    /// upstream's shutdown ("Too many messages per second") and the push goes nowhere, so the
    /// client that exceeds the limit is the one that pays for it.
    pub(super) fn spend(&mut self, topic: &str) -> bool {
        if self.rate.add_and_check(1) {
            self.close_channel(topic, TOO_MANY_MESSAGES);
            return false;
        }
        true
    }

    pub(super) async fn presence(&mut self, m: &Message, frame_len: usize) {
        let event = m
            .payload
            .get("event")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase);
        let Some(event) = event else {
            // No event: upstream answers ok and does nothing.
            self.reply(m, Status::Ok, json!({}));
            return;
        };
        let limit_hit = {
            let Some(channel) = self.channels.get_mut(&m.topic) else {
                return;
            };
            !channel.presence_calls.allow()
        };
        if limit_hit {
            self.close_channel(&m.topic, "Client presence rate limit exceeded");
            return;
        }
        if self.state.presence_events.add_and_check(1) {
            self.close_channel(&m.topic, "Too many presence messages per second");
            return;
        }
        if event == "track" && !self.authorize_presence_on_demand(&m.topic).await {
            self.reply(m, Status::Error, json!({}));
            return;
        }
        if !self.may_write(&m.topic, Extension::Presence).await {
            self.reply(m, Status::Error, json!({}));
            return;
        }
        let Some(channel) = self.channels.get_mut(&m.topic) else {
            return;
        };
        let (sub, topic) = (channel.sub, channel.topic.clone());
        match event.as_str() {
            "track" => {
                let payload = match m.payload.get("payload") {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(map)) => map.clone(),
                    Some(_) => {
                        self.reply(
                            m,
                            Status::Error,
                            json!({"reason": "Presence track payload must be a map"}),
                        );
                        return;
                    }
                };
                if oversized(self.state.config.max_payload_bytes(), frame_len, &m.payload) {
                    self.close_channel(&m.topic, "Track message size exceeded");
                    return;
                }
                // Tracking on a channel joined without presence turns it on, as upstream does.
                channel.config.presence_enabled = true;
                let key = channel.presence_key.clone();
                topic.update_presence(&self.state.presence_events, |t| t.track(sub, &key, payload));
                self.reply(m, Status::Ok, json!({}));
            }
            "untrack" => {
                topic.update_presence(&self.state.presence_events, |t| t.untrack(sub));
                self.reply(m, Status::Ok, json!({}));
            }
            _ => self.reply(m, Status::Error, json!({})),
        }
    }

    /// Swap the channel's token. Never answered, as upstream. A private channel is authorized
    /// again with the new claims; one that may no longer read is closed.
    pub(super) async fn access_token(&mut self, m: &Message) {
        let Some(token) = m.payload.get("access_token").and_then(Value::as_str) else {
            return;
        };
        let Some(channel) = self.channels.get(&m.topic) else {
            return;
        };
        if token.starts_with("sb_") || token == channel.token {
            return;
        }
        let claims = match self.state.jwt.verify(token) {
            Ok(claims) => claims,
            Err(e) => {
                self.close_channel(&m.topic, &e.to_string());
                return;
            }
        };
        let (private, name) = (channel.config.private, channel.name().to_owned());
        let presence_checked = channel.presence_read_checked;
        let access = if private {
            match self.reauthorize(&name, &claims, presence_checked).await {
                Some(access) => Some(access),
                None => {
                    self.close_channel(
                        &m.topic,
                        &format!(
                            "You no longer have permission to read from this Channel topic: {name}"
                        ),
                    );
                    return;
                }
            }
        } else {
            None
        };
        let Some(channel) = self.channels.get_mut(&m.topic) else {
            return;
        };
        if let Some(pg) = &channel.postgres {
            pg.update_claims(Value::Object(claims.raw.clone()));
            if let Some(cluster) = &self.state.cluster {
                cluster.postgres_claims(self.id, &m.topic, Value::Object(claims.raw.clone()));
            }
        }
        if let Some(access) = access {
            channel.access = access;
            channel.may_broadcast = None;
            channel.may_track = None;
            channel
                .topic
                .set_access(channel.sub, access.broadcast, access.presence);
        }
        channel.token = token.to_owned();
        channel.claims = claims;
        channel.token_generation += 1;
        self.arm_token_check(&m.topic);
    }

    /// Read access with new claims; `None` when nothing may be read any more.
    async fn reauthorize(&self, name: &str, claims: &Claims, presence: bool) -> Option<ReadAccess> {
        match &self.state.database {
            None => may_use_private_channel(claims).then_some(ReadAccess {
                broadcast: true,
                presence: true,
            }),
            Some(db) => match db.read_access(name, claims, presence).await {
                Ok(a) if a.broadcast || a.presence => Some(a),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, topic = name, "re-authorization failed");
                    None
                }
            },
        }
    }

    /// A private channel joined without presence evaluates presence read when it first
    /// tracks, as upstream does, and from then on receives presence if allowed. `false` when
    /// the check itself failed (the track is refused; the next one asks again).
    async fn authorize_presence_on_demand(&mut self, topic: &str) -> bool {
        let Some(channel) = self.channels.get(topic) else {
            return false;
        };
        if channel.presence_read_checked {
            return true;
        }
        let presence = match &self.state.database {
            None => may_use_private_channel(&channel.claims),
            Some(db) => match db.read_access(channel.name(), &channel.claims, true).await {
                Ok(access) => access.presence,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "presence read authorization failed");
                    return false;
                }
            },
        };
        let Some(channel) = self.channels.get_mut(topic) else {
            return false;
        };
        channel.presence_read_checked = true;
        channel.access.presence = presence;
        channel
            .topic
            .set_access(channel.sub, channel.access.broadcast, presence);
        true
    }

    /// Whether this channel may write `extension` messages: always on public channels; on
    /// private ones by RLS, checked once and kept until the token changes.
    async fn may_write(&mut self, topic: &str, extension: Extension) -> bool {
        let Some(channel) = self.channels.get(topic) else {
            return false;
        };
        if !channel.config.private {
            return true;
        }
        let cached = match extension {
            Extension::Broadcast => channel.may_broadcast,
            Extension::Presence => channel.may_track,
        };
        if let Some(allowed) = cached {
            return allowed;
        }
        let allowed = match self.state.database.clone() {
            None => may_use_private_channel(&channel.claims),
            Some(db) => {
                let (name, claims) = (channel.name().to_owned(), channel.claims.clone());
                match db.can_write(&name, &claims, extension).await {
                    Ok(allowed) => allowed,
                    Err(e) => {
                        // Not cached: the next push asks the database again.
                        tracing::warn!(error = %e, topic = name, "write authorization failed");
                        return false;
                    }
                }
            }
        };
        if let Some(channel) = self.channels.get_mut(topic) {
            match extension {
                Extension::Broadcast => channel.may_broadcast = Some(allowed),
                Extension::Presence => channel.may_track = Some(allowed),
            }
        }
        allowed
    }
}

fn oversized(limit: usize, frame_len: usize, payload: &Value) -> bool {
    frame_len > limit && serde_json::to_vec(payload).map_or(true, |v| v.len() > limit)
}
