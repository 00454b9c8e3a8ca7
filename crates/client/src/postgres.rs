//! `postgres_changes`: bindings, matching them to the server's ids (PROTOCOL.md §4.5), and
//! the change records users get (§5.1, §5.2).

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

/// Which row operations a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostgresEvent {
    /// `*`: every operation.
    All,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl PostgresEvent {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            PostgresEvent::All => "*",
            PostgresEvent::Insert => "INSERT",
            PostgresEvent::Update => "UPDATE",
            PostgresEvent::Delete => "DELETE",
        }
    }

    /// Parse a wire string, case-insensitively. Anything unknown is `*`, as on the server.
    pub fn parse(s: &str) -> PostgresEvent {
        match s.to_ascii_uppercase().as_str() {
            "INSERT" => PostgresEvent::Insert,
            "UPDATE" => PostgresEvent::Update,
            "DELETE" => PostgresEvent::Delete,
            _ => PostgresEvent::All,
        }
    }

    /// Whether a binding for `self` wants a change of type `change`.
    pub fn matches(self, change: PostgresEvent) -> bool {
        self == PostgresEvent::All || self == change
    }
}

/// A `postgres_changes` binding: `event` on `schema.table`, optionally filtered
/// (`id=eq.1`, PROTOCOL.md §5.5).
///
/// ```
/// use supa_realtime::{PostgresChangesFilter, PostgresEvent};
///
/// let f = PostgresChangesFilter::new(PostgresEvent::Insert).schema("public").table("todos").filter("id=gt.10");
/// assert_eq!(f.to_json()["filter"], "id=gt.10");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PostgresChangesFilter {
    /// Operations.
    pub event: PostgresEvent,
    /// Schema (`public` when only a table is given, on the server).
    pub schema: Option<String>,
    /// Table.
    pub table: Option<String>,
    /// Filter expression.
    pub filter: Option<String>,
}

impl PostgresChangesFilter {
    /// A binding for `event` on the `public` schema.
    pub fn new(event: PostgresEvent) -> Self {
        PostgresChangesFilter {
            event,
            schema: Some("public".into()),
            table: None,
            filter: None,
        }
    }
    /// Set the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
    /// Set the table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }
    /// Set the filter.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// The item sent in `config.postgres_changes` (keys only when set).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("event".into(), Value::from(self.event.as_str()));
        for (k, v) in [
            ("schema", &self.schema),
            ("table", &self.table),
            ("filter", &self.filter),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(v.as_str()));
            }
        }
        Value::Object(m)
    }

    /// Whether a server item (from the join reply) describes this binding: same event
    /// (case-insensitive) and the same schema, table and filter, with a missing key equal to
    /// `null`.
    pub fn matches_server_item(&self, item: &Value) -> bool {
        let text = |k: &str| item.get(k).and_then(Value::as_str);
        let event_ok = text("event").is_some_and(|e| e.eq_ignore_ascii_case(self.event.as_str()));
        event_ok
            && text("schema") == self.schema.as_deref()
            && text("table") == self.table.as_deref()
            && text("filter") == self.filter.as_deref()
    }
}

/// Match bindings to the join reply's `postgres_changes` list **by position**, as realtime-js
/// does: item `i` must exist and describe binding `i`; its `id` becomes the binding's id.
/// Any mismatch is an error (the channel is then left and reported as `CHANNEL_ERROR`).
pub fn match_bindings(bindings: &[PostgresChangesFilter], reply: &Value) -> Result<Vec<u64>> {
    let mismatch = || {
        Error::new(
            ErrorKind::ChannelError,
            "mismatch between server and client bindings for postgres changes",
        )
    };
    let items = match reply.get("postgres_changes") {
        Some(Value::Array(items)) => items.as_slice(),
        // Legacy servers answer without the key; only fine when we asked for nothing.
        None | Some(Value::Null) if bindings.is_empty() => &[],
        _ => return Err(mismatch()),
    };
    if items.len() < bindings.len() {
        return Err(mismatch());
    }
    bindings
        .iter()
        .zip(items)
        .map(|(b, item)| {
            if !b.matches_server_item(item) {
                return Err(mismatch());
            }
            item.get("id").and_then(Value::as_u64).ok_or_else(mismatch)
        })
        .collect()
}

/// One database change, normalised as realtime-js hands it to users (PROTOCOL.md §5.2):
/// `eventType`, `new` and `old` with values typed by their column types.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresChange {
    /// Schema of the table.
    pub schema: String,
    /// Table.
    pub table: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub event_type: PostgresEvent,
    /// Commit time, `YYYY-MM-DDTHH:MM:SS.mmmZ`, when the server computed one.
    pub commit_timestamp: Option<String>,
    /// The new row (INSERT, UPDATE); empty otherwise.
    pub new: Map<String, Value>,
    /// The old row's identity columns (UPDATE, DELETE); empty otherwise.
    pub old: Map<String, Value>,
    /// `Error 413: Payload Too Large` and the like; `None` when there were none.
    pub errors: Option<Vec<String>>,
    /// `(name, type)` of the columns, in attribute order.
    pub columns: Vec<(String, String)>,
    /// The ids of the bindings this change was delivered for.
    pub ids: Vec<u64>,
}

impl PostgresChange {
    /// Read a `postgres_changes` payload `{"ids": [...], "data": {...}}`.
    pub fn from_payload(payload: &Value) -> Result<PostgresChange> {
        let data = payload
            .get("data")
            .ok_or_else(|| Error::protocol("postgres_changes payload without `data`"))?;
        let ids = payload
            .get("ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut change = PostgresChange::from_record(data)?;
        change.ids = ids;
        Ok(change)
    }

    /// Read the `data` part (also what legacy-mode events carry, §4.6).
    pub fn from_record(data: &Value) -> Result<PostgresChange> {
        let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_owned);
        let event_type = match text("type").as_deref().map(PostgresEvent::parse) {
            Some(e @ (PostgresEvent::Insert | PostgresEvent::Update | PostgresEvent::Delete)) => e,
            _ => return Err(Error::protocol("postgres change without a valid `type`")),
        };
        let columns: Vec<(String, String)> = data
            .get("columns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some((
                            c.get("name")?.as_str()?.to_owned(),
                            c.get("type")?.as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let convert = |key: &str| -> Map<String, Value> {
            match data.get(key) {
                Some(Value::Object(rec)) => convert_change_data(&columns, rec),
                _ => Map::new(),
            }
        };
        let new = match event_type {
            PostgresEvent::Insert | PostgresEvent::Update => convert("record"),
            _ => Map::new(),
        };
        let old = match event_type {
            PostgresEvent::Update | PostgresEvent::Delete => convert("old_record"),
            _ => Map::new(),
        };
        let errors = match data.get("errors") {
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|e| {
                        e.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| e.to_string())
                    })
                    .collect(),
            ),
            Some(Value::String(s)) => Some(vec![s.clone()]),
            _ => None,
        };
        Ok(PostgresChange {
            schema: text("schema").unwrap_or_default(),
            table: text("table").unwrap_or_default(),
            event_type,
            commit_timestamp: text("commit_timestamp"),
            new,
            old,
            errors,
            columns,
            ids: Vec::new(),
        })
    }

    /// The realtime-js shape: `{schema, table, commit_timestamp, eventType, new, old, errors}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "schema": self.schema,
            "table": self.table,
            "commit_timestamp": self.commit_timestamp,
            "eventType": self.event_type.as_str(),
            "new": self.new,
            "old": self.old,
            "errors": self.errors,
        })
    }
}

/// Type a record's values by their column types, as realtime-js's `convertChangeData`:
/// string values of boolean, numeric, json and array columns are parsed; `timestamp`
/// strings get a `T` instead of the first space. Values that are already typed (the normal
/// case with current servers) and columns without a known type pass through.
pub fn convert_change_data(
    columns: &[(String, String)],
    record: &Map<String, Value>,
) -> Map<String, Value> {
    record
        .iter()
        .map(|(name, value)| {
            let ty = columns
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.as_str());
            let v = match (ty, value) {
                (Some(ty), Value::String(s)) => convert_cell(ty, s),
                _ => value.clone(),
            };
            (name.clone(), v)
        })
        .collect()
}

/// Convert one string cell of Postgres type `ty` (the typing shared with the server).
pub fn convert_cell(ty: &str, s: &str) -> Value {
    supa_realtime_protocol::pg_types::typname_to_json(ty, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn todos(event: PostgresEvent) -> PostgresChangesFilter {
        PostgresChangesFilter::new(event).table("todos")
    }

    #[test]
    fn bindings_match_by_position() {
        let bindings = vec![
            todos(PostgresEvent::All),
            todos(PostgresEvent::Insert).filter("id=eq.1"),
        ];
        let reply = json!({"postgres_changes": [
            {"event": "*", "schema": "public", "table": "todos", "id": 11},
            {"event": "insert", "schema": "public", "table": "todos", "filter": "id=eq.1", "id": 22},
        ]});
        assert_eq!(match_bindings(&bindings, &reply).unwrap(), vec![11, 22]);
    }

    #[test]
    fn mismatches_are_channel_errors() {
        let bindings = vec![todos(PostgresEvent::All), todos(PostgresEvent::Insert)];
        // Swapped order.
        let reply = json!({"postgres_changes": [
            {"event": "INSERT", "schema": "public", "table": "todos", "id": 22},
            {"event": "*", "schema": "public", "table": "todos", "id": 11},
        ]});
        let e = match_bindings(&bindings, &reply).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChannelError);
        assert!(e.to_string().contains("mismatch"));
        // Too short, missing id, different filter, null vs missing.
        assert!(match_bindings(&bindings, &json!({"postgres_changes": []})).is_err());
        assert!(match_bindings(
            &bindings[..1],
            &json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "todos"}]})
        )
        .is_err());
        assert!(match_bindings(
            &bindings[..1],
            &json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "todos", "filter": "x=eq.1", "id": 1}]})
        )
        .is_err());
        assert_eq!(
            match_bindings(
                &bindings[..1],
                &json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "todos", "filter": null, "id": 5}]})
            )
            .unwrap(),
            vec![5]
        );
        // No bindings: empty list or a legacy reply are fine.
        assert!(match_bindings(&[], &json!({"postgres_changes": []}))
            .unwrap()
            .is_empty());
        assert!(match_bindings(&[], &json!({})).unwrap().is_empty());
        assert!(match_bindings(&bindings, &json!({})).is_err());
    }

    #[test]
    fn change_is_normalised() {
        let payload = json!({"ids": [30636876], "data": {
            "schema": "public", "table": "todos", "type": "UPDATE",
            "commit_timestamp": "2026-08-21T12:00:00.123Z",
            "columns": [{"name": "id", "type": "int8"}, {"name": "title", "type": "text"},
                        {"name": "done", "type": "bool"}, {"name": "meta", "type": "jsonb"},
                        {"name": "tags", "type": "_int4"}, {"name": "at", "type": "timestamp"},
                        {"name": "price", "type": "numeric"}],
            "record": {"id": 1, "title": "new", "done": "t", "meta": "{\"a\":1}", "tags": "{1,2,NULL}",
                       "at": "2026-01-01 10:00:00", "price": "1.5"},
            "old_record": {"id": "1"},
            "errors": null
        }});
        let c = PostgresChange::from_payload(&payload).unwrap();
        assert_eq!(c.event_type, PostgresEvent::Update);
        assert_eq!(c.ids, vec![30636876]);
        assert_eq!(c.errors, None);
        assert_eq!(
            Value::Object(c.new.clone()),
            json!({"id": 1, "title": "new", "done": true, "meta": {"a": 1}, "tags": [1, 2, null],
                   "at": "2026-01-01T10:00:00", "price": 1.5})
        );
        assert_eq!(Value::Object(c.old.clone()), json!({"id": 1}));
        let js = c.to_json();
        assert_eq!(js["eventType"], "UPDATE");
        assert_eq!(js["errors"], Value::Null);
    }

    #[test]
    fn insert_has_no_old_delete_has_no_new_errors_are_a_list() {
        let ins = PostgresChange::from_record(&json!({"schema": "public", "table": "t", "type": "INSERT",
            "columns": [], "record": {"id": 1}, "commit_timestamp": null, "errors": ["Error 413: Payload Too Large"]}))
        .unwrap();
        assert!(ins.old.is_empty());
        assert_eq!(
            ins.errors,
            Some(vec!["Error 413: Payload Too Large".to_owned()])
        );
        let del = PostgresChange::from_record(
            &json!({"schema": "public", "table": "t", "type": "DELETE",
            "old_record": {"id": 1}, "record": {"id": 9}}),
        )
        .unwrap();
        assert!(del.new.is_empty());
        assert_eq!(del.old["id"], 1);
        assert!(PostgresChange::from_record(&json!({"type": "TRUNCATE"})).is_err());
        assert!(PostgresChange::from_payload(&json!({"ids": [1]})).is_err());
    }

    #[test]
    fn quoted_array_items() {
        assert_eq!(
            convert_cell("_text", r#"{"a,b",c,"NULL",NULL}"#),
            json!(["a,b", "c", "NULL", null])
        );
        assert_eq!(convert_cell("_int4", "{}"), json!([]));
        assert_eq!(convert_cell("_int4", "[1,2]"), json!([1, 2]));
        assert_eq!(convert_cell("int4", "x"), json!("x"));
        assert_eq!(convert_cell("bool", "f"), json!(false));
    }
}
