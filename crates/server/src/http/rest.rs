//! REST broadcast (PROTOCOL.md §7.3, §7.4): a batch endpoint delivering text broadcasts, and a
//! single-message endpoint delivering user broadcasts (binary kind 4 on 2.0.0 sockets).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use supa_realtime_protocol::{event, Message, UserBroadcast, UserPayload, TOPIC_PREFIX};

use crate::auth::Claims;
use crate::connection::may_use_private_channel;
use crate::database::authorization::Extension;
use crate::fanout::Body;
use crate::registry::TopicKey;
use crate::state::AppState;

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({"message": text}))).into_response()
}

/// The caller's token: `Authorization: Bearer` if present, else the `apikey` header.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Option<Claims> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let token = bearer
        .or_else(|| headers.get("apikey").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    state
        .jwt
        .verify(token)
        .map_err(|e| tracing::info!(error = %e, "REST broadcast refused"))
        .ok()
}

/// The caller's write permission on a private topic: RLS with a database, else only roles
/// that bypass RLS.
async fn may_write(state: &AppState, topic: &str, claims: &Claims) -> bool {
    match &state.database {
        None => may_use_private_channel(claims),
        Some(db) => db
            .can_write(topic, claims, Extension::Broadcast)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, topic, "REST write authorization failed");
                false
            }),
    }
}

fn rate_limited(state: &AppState) -> Option<Response> {
    state.events.exceeded().then(|| {
        message(
            StatusCode::TOO_MANY_REQUESTS,
            "You have exceeded your rate limit",
        )
    })
}

/// `POST /api/broadcast` with `{"messages": [{topic, event, payload, private?, id?}]}`.
pub(super) async fn broadcast_batch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(claims) = authenticate(&state, &headers) else {
        return message(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return unprocessable(json!({"messages": ["is invalid"]})),
    };
    let Some(messages) = parsed.get("messages").and_then(Value::as_array) else {
        return unprocessable(json!({"messages": ["can't be blank"]}));
    };
    let limit = state.config.max_payload_bytes();
    let mut errors = Vec::with_capacity(messages.len());
    let mut valid = Vec::with_capacity(messages.len());
    for m in messages {
        let mut e = Map::new();
        let topic = m.get("topic").and_then(Value::as_str);
        let event_name = m.get("event").and_then(Value::as_str);
        let payload = m.get("payload").filter(|p| p.is_object());
        if topic.is_none_or(str::is_empty) {
            e.insert("topic".into(), json!(["can't be blank"]));
        }
        if event_name.is_none_or(str::is_empty) {
            e.insert("event".into(), json!(["can't be blank"]));
        }
        match payload {
            None => {
                e.insert("payload".into(), json!(["can't be blank"]));
            }
            Some(p) if serde_json::to_vec(p).map_or(0, |v| v.len()) > limit => {
                e.insert(
                    "payload".into(),
                    json!(["Payload size exceeds tenant limit"]),
                );
            }
            Some(_) => {}
        }
        let private = m
            .get("private")
            .and_then(supa_realtime_protocol::join::flexible_bool)
            .unwrap_or(false);
        if let (true, Some(t), Some(ev), Some(p)) = (e.is_empty(), topic, event_name, payload) {
            valid.push((
                t.to_owned(),
                ev.to_owned(),
                p.clone(),
                private,
                m.get("id").cloned(),
            ));
        }
        errors.push(Value::Object(e));
    }
    if errors
        .iter()
        .any(|e| e.as_object().is_some_and(|m| !m.is_empty()))
    {
        return unprocessable(json!({"messages": errors}));
    }
    if state.events.add_and_check(valid.len() as u64) {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many messages to broadcast, please reduce the batch size",
        );
    }
    for (topic, event_name, payload, private, id) in valid {
        // Private messages need write permission; without it they are skipped, still 202.
        if private && !may_write(&state, &topic, &claims).await {
            continue;
        }
        let key = TopicKey {
            name: topic,
            private,
        };
        let mut body = Map::new();
        body.insert("type".into(), Value::from("broadcast"));
        body.insert("event".into(), Value::from(event_name));
        body.insert("payload".into(), payload);
        if let Some(id) = id.filter(|v| !v.is_null()) {
            body.insert("meta".into(), json!({"id": id}));
        }
        let body = Body::Json(Message::fanout(
            format!("{TOPIC_PREFIX}{}", key.name),
            event::BROADCAST,
            Value::Object(body),
        ));
        if let Some(r) = deliver(&state, &key, body).await {
            return r;
        }
    }
    StatusCode::ACCEPTED.into_response()
}

/// Deliver a REST broadcast: on this node, or in cluster mode to every node through Redis
/// (an error response when Redis cannot take it, never a 202 that hides the loss).
async fn deliver(state: &AppState, key: &TopicKey, body: Body) -> Option<Response> {
    match &state.cluster {
        Some(cluster) => match cluster.publish_confirmed(key, &body).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, topic = %key.name, "REST broadcast not accepted");
                Some(message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Realtime cluster unreachable, the broadcast was not sent",
                ))
            }
        },
        None => {
            if let Some(t) = state.registry.get(key) {
                t.broadcast(body, None, &state.events);
            }
            None
        }
    }
}

fn unprocessable(errors: Value) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"errors": errors})),
    )
        .into_response()
}

/// `POST /api/broadcast/<topic>/events/<event>[?private=true]` with any JSON or raw bytes.
pub(super) async fn broadcast_single(
    State(state): State<Arc<AppState>>,
    Path((topic, event_name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(claims) = authenticate(&state, &headers) else {
        return message(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let payload = match content_type.as_deref() {
        None | Some("application/json") => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                return message(StatusCode::UNPROCESSABLE_ENTITY, "Invalid JSON payload");
            }
            UserPayload::Json(body)
        }
        Some("application/octet-stream") => UserPayload::Binary(body),
        Some(_) => {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({"error": "Unsupported Media Type. Use application/json or application/octet-stream"})),
            )
                .into_response()
        }
    };
    if payload.bytes().len() > state.config.max_payload_bytes() {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Payload size exceeds tenant limit",
        );
    }
    let private = query
        .get("private")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if private && !may_write(&state, &topic, &claims).await {
        return message(StatusCode::FORBIDDEN, "Unauthorized");
    }
    if let Some(r) = rate_limited(&state) {
        return r;
    }
    state.events.add(1);
    let key = TopicKey {
        name: topic.clone(),
        private,
    };
    let body = Body::User(UserBroadcast {
        join_ref: None,
        msg_ref: None,
        topic: format!("{TOPIC_PREFIX}{topic}"),
        event: event_name,
        metadata: None,
        payload,
    });
    if let Some(r) = deliver(&state, &key, body).await {
        return r;
    }
    StatusCode::ACCEPTED.into_response()
}
