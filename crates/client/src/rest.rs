//! Broadcast through the REST endpoint (PROTOCOL.md §7.4), for channels that are not joined.

use crate::broadcast::BroadcastPayload;
use crate::error::{Error, ErrorKind, Result};
use crate::shared::Shared;

/// `POST <rest>/broadcast/<sub-topic>/events/<event>[?private=true]`, answered 202.
pub(crate) async fn send(
    shared: &Shared,
    sub_topic: &str,
    event: &str,
    payload: &BroadcastPayload,
    private: bool,
) -> Result<()> {
    let mut url = shared.endpoint.rest.clone();
    url.path_segments_mut()
        .map_err(|()| Error::invalid("the REST URL cannot have a path"))?
        .extend(["broadcast", sub_topic, "events", event]);
    if private {
        url.query_pairs_mut().append_pair("private", "true");
    }
    let token = shared
        .token
        .borrow()
        .clone()
        .unwrap_or_else(|| shared.apikey.clone());
    let req = shared
        .http
        .post(url)
        .header("apikey", &shared.apikey)
        .header("authorization", format!("Bearer {token}"))
        .timeout(shared.options.timeout);
    let req = match payload {
        BroadcastPayload::Json(v) => req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(v).unwrap_or_default()),
        BroadcastPayload::Binary(b) => req
            .header("content-type", "application/octet-stream")
            .body(b.clone()),
    };
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            Error::timeout("REST broadcast timed out").with_source(e)
        } else {
            Error::not_connected("REST broadcast failed").with_source(e)
        }
    })?;
    let status = resp.status();
    if status.as_u16() == 202 || status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or(body);
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::Authorization,
        _ => ErrorKind::Http,
    };
    Err(Error::new(
        kind,
        format!("REST broadcast answered HTTP {}", status.as_u16()),
    )
    .with_reason(reason))
}
