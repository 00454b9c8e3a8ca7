//! Routes: the WebSocket endpoint and the REST API, under both the server's own paths and
//! the `/realtime/v1` prefix that Supabase's API gateway (and so every client) uses.

mod rest;
mod serve;
mod websocket;

pub(crate) use serve::serve;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

use crate::state::AppState;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for prefix in ["", "/realtime/v1"] {
        router = router
            .route(
                &format!("{prefix}/api/broadcast"),
                post(rest::broadcast_batch),
            )
            .route(
                &format!("{prefix}/api/broadcast/{{topic}}/events/{{event}}"),
                post(rest::broadcast_single),
            )
            .route(&format!("{prefix}/api/ping"), get(ping))
            .route(&format!("{prefix}/api/health"), get(health));
    }
    router
        .route("/metrics", get(metrics))
        .route("/socket/websocket", get(websocket::upgrade))
        .route("/realtime/v1/websocket", get(websocket::upgrade))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any),
        )
        .with_state(state)
}

async fn ping() -> Json<serde_json::Value> {
    Json(json!({"message": "Success"}))
}

/// The Prometheus text exposition of the server's metrics.
async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> impl axum::response::IntoResponse {
    state
        .metrics
        .set_connections(state.connections.load(std::sync::atomic::Ordering::Relaxed));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// What is up: connections, the database (migrated, streaming broadcasts) and the change feed.
async fn health(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering;
    let database = state.database.as_ref().map(|db| {
        json!({
            "ready": db.is_ready(),
            "broadcast_streaming": db.streaming.load(Ordering::SeqCst),
        })
    });
    Json(json!({
        "connections": state.connections.load(Ordering::SeqCst),
        "database": database,
        "postgres_changes": match &state.database { Some(_) => Some(state.feed.status().await), None => None },
        "cluster": state.cluster.as_ref().map(|c| c.status()),
    }))
}
