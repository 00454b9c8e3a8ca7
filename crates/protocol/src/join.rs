//! The `phx_join` payload (PROTOCOL.md §4.1).
//!
//! Upstream never rejects a join for a badly typed payload: it logs `InvalidJoinPayload` and
//! goes on with whatever fields could be read. [`JoinPayload::parse`] does the same and
//! returns the problems it skipped so the server can log them.

use serde_json::{Map, Value};

/// Replay request of a private channel (`config.broadcast.replay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Unix milliseconds; `None` when it was not an integer (upstream: "Replay params are not valid").
    pub since: Option<i64>,
    /// How many messages, clamped to 1..=25 (default 25).
    pub limit: u32,
}

/// The channel configuration a client asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JoinConfig {
    /// `broadcast.self`: the sender receives its own broadcasts.
    pub broadcast_self: bool,
    /// `broadcast.ack`: the server replies to each broadcast push.
    pub broadcast_ack: bool,
    /// `broadcast.replay`.
    pub replay: Option<Replay>,
    /// `broadcast.replication_ready`.
    pub replication_ready: bool,
    /// `presence.key`; `None` when missing or empty (the server then generates one per join).
    pub presence_key: Option<String>,
    /// `presence.enabled`: send `presence_state` after join.
    pub presence_enabled: bool,
    /// `postgres_changes` items exactly as sent (they are echoed back with an `id`).
    pub postgres_changes: Vec<Value>,
    /// `private`: authorize by RLS on `realtime.messages`.
    pub private: bool,
}

/// A parsed join payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JoinPayload {
    /// `None` when the payload had no `config` key (upstream's legacy mode, §4.6).
    pub config: Option<JoinConfig>,
    /// `access_token` (or the legacy `user_token`) when it is a string.
    pub access_token: Option<String>,
}

/// Upstream's "flexible boolean": a JSON boolean or the strings `true`/`false` in any case.
pub fn flexible_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

struct Problems(Vec<String>);

impl Problems {
    fn bool_at(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> bool {
        match map.get(key) {
            None | Some(Value::Null) => false,
            Some(v) => flexible_bool(v).unwrap_or_else(|| {
                self.0.push(format!("{path} must be a boolean"));
                false
            }),
        }
    }

    fn object<'a>(
        &mut self,
        map: &'a Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'a Map<String, Value>> {
        match map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                self.0.push(format!("{path} must be an object"));
                None
            }
        }
    }
}

impl JoinPayload {
    /// Parse a join payload leniently. The second value lists what was ignored and why.
    pub fn parse(payload: &Value) -> (JoinPayload, Vec<String>) {
        let mut problems = Problems(Vec::new());
        let Value::Object(root) = payload else {
            problems.0.push("join payload must be an object".into());
            return (JoinPayload::default(), problems.0);
        };
        let access_token = match root.get("access_token").or_else(|| root.get("user_token")) {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(_) => {
                problems.0.push("access_token must be a string".into());
                None
            }
        };
        let config = if root.contains_key("config") {
            let empty = Map::new();
            let cfg = problems.object(root, "config", "config").unwrap_or(&empty);
            Some(parse_config(cfg, &mut problems))
        } else {
            None
        };
        (
            JoinPayload {
                config,
                access_token,
            },
            problems.0,
        )
    }
}

fn parse_config(cfg: &Map<String, Value>, p: &mut Problems) -> JoinConfig {
    let mut out = JoinConfig::default();
    if let Some(b) = p.object(cfg, "broadcast", "config.broadcast") {
        out.broadcast_self = p.bool_at(b, "self", "config.broadcast.self");
        out.broadcast_ack = p.bool_at(b, "ack", "config.broadcast.ack");
        out.replication_ready =
            p.bool_at(b, "replication_ready", "config.broadcast.replication_ready");
        if let Some(r) = p.object(b, "replay", "config.broadcast.replay") {
            let since = r.get("since").and_then(Value::as_i64);
            let limit = r
                .get("limit")
                .and_then(Value::as_i64)
                .map(|l| l.clamp(1, 25) as u32)
                .unwrap_or(25);
            out.replay = Some(Replay { since, limit });
        }
    }
    if let Some(pr) = p.object(cfg, "presence", "config.presence") {
        out.presence_enabled = p.bool_at(pr, "enabled", "config.presence.enabled");
        out.presence_key = match pr.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            // Any JSON value may serve as a key; it is used in its JSON text form.
            Some(other) => Some(other.to_string()),
        };
    }
    match cfg.get("postgres_changes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            out.postgres_changes = items.iter().filter(|v| !v.is_null()).cloned().collect();
        }
        Some(_) => p.0.push("config.postgres_changes must be a list".into()),
    }
    out.private = p.bool_at(cfg, "private", "config.private");
    out
}

/// The id the server gives a `postgres_changes` item in its join reply.
///
/// Upstream uses a 27-bit hash of the item as sent, so identical items share an id and the
/// id is stable across joins; this is an FNV-1a hash of the item's canonical JSON (keys
/// sorted), folded to 27 bits. Clients treat it as opaque.
pub fn postgres_changes_id(item: &Value) -> u32 {
    let canonical = serde_json::to_string(item).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash ^ (hash >> 27) ^ (hash >> 54)) & ((1 << 27) - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn js_join_payload() {
        let (p, problems) = JoinPayload::parse(&json!({
            "config": {
                "broadcast": {"ack": false, "self": true},
                "presence": {"key": "", "enabled": true},
                "postgres_changes": [{"event": "*", "schema": "public", "table": "todos"}, null],
                "private": false
            },
            "access_token": "tok",
            "version": "realtime-js/2.119.1"
        }));
        assert!(problems.is_empty());
        let c = p.config.unwrap();
        assert!(c.broadcast_self && !c.broadcast_ack && c.presence_enabled && !c.private);
        assert_eq!(c.presence_key, None);
        assert_eq!(c.postgres_changes.len(), 1);
        assert_eq!(p.access_token.as_deref(), Some("tok"));
    }

    #[test]
    fn flexible_booleans_and_bad_types_do_not_reject() {
        let (p, problems) = JoinPayload::parse(&json!({
            "config": {"broadcast": {"self": "TRUE", "ack": 3}, "presence": "x", "private": "false"},
            "access_token": 12
        }));
        let c = p.config.unwrap();
        assert!(c.broadcast_self);
        assert!(!c.broadcast_ack);
        assert!(!c.private);
        assert_eq!(p.access_token, None);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn missing_config_is_legacy_mode() {
        let (p, _) = JoinPayload::parse(&json!({}));
        assert!(p.config.is_none());
        let (p, _) = JoinPayload::parse(&json!({"user_token": "u"}));
        assert_eq!(p.access_token.as_deref(), Some("u"));
    }

    #[test]
    fn ids_are_stable_27_bit_and_distinct() {
        let a = json!({"event": "*", "schema": "public", "table": "todos"});
        let b = json!({"table": "todos", "schema": "public", "event": "*"});
        let c = json!({"event": "INSERT", "schema": "public", "table": "todos"});
        assert_eq!(postgres_changes_id(&a), postgres_changes_id(&b));
        assert_ne!(postgres_changes_id(&a), postgres_changes_id(&c));
        assert!(postgres_changes_id(&a) < (1 << 27));
    }
}
