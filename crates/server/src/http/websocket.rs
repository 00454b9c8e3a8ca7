//! The WebSocket handshake: serializer negotiation, then authentication, then limits, each
//! refused with upstream's status and body (PROTOCOL.md §1.4, §1.6).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use supa_realtime_protocol::Serializer;

use crate::connection::{self, ConnectInfo};
use crate::state::AppState;

/// Bytes read from a socket at a time.
const READ_BUFFER_SIZE: usize = 4 * 1024;

pub(super) async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(serializer) = Serializer::from_vsn(params.get("vsn").map(String::as_str)) else {
        tracing::info!(vsn = ?params.get("vsn"), "handshake refused: unsupported serializer version");
        return StatusCode::FORBIDDEN.into_response();
    };
    let token = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| params.get("apikey").map(String::as_str))
        .unwrap_or("")
        .to_owned();
    let claims = match state.jwt.verify(&token) {
        Ok(c) => c,
        Err(e) => return refuse(&state, StatusCode::UNAUTHORIZED, &e.connect_message()).await,
    };
    if state.users.load(Ordering::SeqCst) >= state.config.max_concurrent_users {
        return refuse(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connected users",
        )
        .await;
    }
    if state.joins.exceeded() {
        return refuse(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many joins per second",
        )
        .await;
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let max = state.config.max_frame_size;
    // tungstenite reads into a 128 KiB buffer per socket by default; with 10,000 idle sockets
    // that is most of the server's memory (155 KB per joined connection measured by the bench).
    // Realtime frames are small, and a larger one still arrives (the buffer grows for it).
    ws.max_frame_size(max)
        .max_message_size(max)
        .read_buffer_size(READ_BUFFER_SIZE)
        .on_failed_upgrade(|e| tracing::info!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            connection::run(
                socket,
                state,
                ConnectInfo {
                    serializer,
                    token,
                    claims,
                },
            )
        })
}

async fn refuse(state: &AppState, status: StatusCode, message: &str) -> Response {
    tracing::info!(%status, message, "handshake refused");
    // Upstream sleeps before refusing, to slow down reconnect storms with a bad key.
    tokio::time::sleep(state.config.connect_error_backoff()).await;
    (status, Json(json!({"error": message}))).into_response()
}
