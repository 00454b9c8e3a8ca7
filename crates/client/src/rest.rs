//! Broadcast through the REST endpoint (PROTOCOL.md §7.4), for channels that are not joined,
//! and for programs that only send ([`broadcast`]: no socket at all).

use std::time::Duration;

use url::Url;

use crate::broadcast::BroadcastPayload;
use crate::endpoint::Endpoint;
use crate::error::{Error, ErrorKind, Result};
use crate::options::ClientOptions;
use crate::shared::Shared;

/// `POST <rest>/broadcast/<sub-topic>/events/<event>[?private=true]`, answered 202.
pub(crate) async fn send(
    shared: &Shared,
    sub_topic: &str,
    event: &str,
    payload: &BroadcastPayload,
    private: bool,
) -> Result<()> {
    let token = shared
        .token
        .borrow()
        .clone()
        .unwrap_or_else(|| shared.apikey.clone());
    let request = Request {
        http: &shared.http,
        rest: &shared.endpoint.rest,
        apikey: &shared.apikey,
        token: &token,
        timeout: shared.options.timeout,
    };
    request.post(sub_topic, event, payload, private).await
}

/// Broadcast `payload` as `event` to the channel `name` (`realtime:` optional) through the
/// REST endpoint of `url`, without a client or socket: what a program that only sends needs
/// (a lazy client's never-subscribed channel uses it, so sending opens no socket). `token`
/// authorizes the call (private channels check it by RLS); `None` uses the key.
///
/// ```no_run
/// # async fn demo() -> supa_realtime::Result<()> {
/// use supa_realtime::{rest, ClientOptions};
/// rest::broadcast("http://127.0.0.1:54321", "anon-key", None, "room1", "hello",
///                 serde_json::json!({"n": 1}), false, &ClientOptions::default()).await?;
/// # Ok(()) }
/// ```
#[allow(clippy::too_many_arguments)]
pub async fn broadcast(
    url: &str,
    apikey: &str,
    token: Option<&str>,
    name: &str,
    event: &str,
    payload: impl Into<BroadcastPayload>,
    private: bool,
    options: &ClientOptions,
) -> Result<()> {
    let endpoint = Endpoint::parse(url, apikey, options.vsn, &options.params)?;
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| Error::invalid("could not build the HTTP client").with_source(e))?;
    let sub_topic = name
        .strip_prefix(supa_realtime_protocol::TOPIC_PREFIX)
        .unwrap_or(name);
    let request = Request {
        http: &http,
        rest: &endpoint.rest,
        apikey,
        token: token.unwrap_or(apikey),
        timeout: options.timeout,
    };
    request
        .post(sub_topic, event, &payload.into(), private)
        .await
}

/// One REST call's parts.
struct Request<'a> {
    http: &'a reqwest::Client,
    rest: &'a Url,
    apikey: &'a str,
    token: &'a str,
    timeout: Duration,
}

impl Request<'_> {
    async fn post(
        &self,
        sub_topic: &str,
        event: &str,
        payload: &BroadcastPayload,
        private: bool,
    ) -> Result<()> {
        let mut url = self.rest.clone();
        url.path_segments_mut()
            .map_err(|()| Error::invalid("the REST URL cannot have a path"))?
            .extend(["broadcast", sub_topic, "events", event]);
        if private {
            url.query_pairs_mut().append_pair("private", "true");
        }
        let req = self
            .http
            .post(url)
            .header("apikey", self.apikey)
            .header("authorization", format!("Bearer {}", self.token))
            .timeout(self.timeout);
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
}
