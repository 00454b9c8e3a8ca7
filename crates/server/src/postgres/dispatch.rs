//! One decoded change → the `postgres_changes` deliveries (upstream `apply_rls` semantics),
//! in two steps so that RLS checks can be batched:
//!
//! 1. [`prepare`], as the change is decoded: find the channels that bound the table (registry
//!    index), evaluate their filters on the new row (DELETE: on the old identity values), and
//!    for each distinct claims set that must pass RLS add the row's key to the batch's checks
//!    (rls.rs). The result owns everything it needs.
//! 2. [`Prepared::deliver`], once the batch's answers are in, in stream order: build each
//!    distinct `data` object once per (role, `select`), share it (`Arc`) among the channels
//!    that get it, and hand it to their sinks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use super::catalog::{self, TableInfo};
use super::eval::{self, Row};
use super::event::{ChangeData, ChangeFrame, ChangePosition, FeedEvent};
use super::registry::{Claims, Registry};
use super::rls::{self, Slot};
use super::subscribe::Action;
use super::types::{self, Kind};
use crate::replication::pgoutput::{Datum, Relation};

/// One row change, as decoded.
pub(crate) struct Change<'a> {
    pub(crate) action: Action,
    pub(crate) rel: &'a Relation,
    pub(crate) table: &'a Arc<TableInfo>,
    /// microseconds since 2000-01-01 UTC
    pub(crate) commit_ts: i64,
    pub(crate) new: Option<&'a [Datum]>,
    pub(crate) old: Option<&'a [Datum]>,
    /// true when `old` came from a `K` (key-only) tuple or is absent
    pub(crate) old_is_key_only: bool,
}

/// Column values by name.
struct Values<'a>(HashMap<&'a str, Option<&'a str>>);

impl Row for Values<'_> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        self.0.get(column).copied()
    }
}

/// `2000-01-01` epoch microseconds → `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn format_commit_ts(pg_micros: i64) -> String {
    let unix_ms = pg_micros.div_euclid(1000) + 946_684_800_000;
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// Caches kept by the feed across changes.
#[derive(Default)]
pub(crate) struct DispatchCache {
    /// (role, table oid) → columns the role may SELECT.
    pub(crate) visible: HashMap<(String, u32), Arc<HashSet<String>>>,
}

/// Typed values of one tuple, in relation order: (name, text or NULL, JSON).
struct Typed<'a> {
    cols: Vec<(&'a str, Option<&'a str>, Value)>,
}

/// The same, owned, once filters have been evaluated: (name, JSON).
struct Owned {
    cols: Vec<(String, Value)>,
}

impl Typed<'_> {
    fn owned(self) -> Owned {
        Owned {
            cols: self
                .cols
                .into_iter()
                .map(|(n, _, v)| (n.to_string(), v))
                .collect(),
        }
    }
}

fn typed<'a>(
    rel: &'a Relation,
    table: &TableInfo,
    tuple: &'a [Datum],
    key_only: bool,
    other: Option<&'a [Datum]>,
) -> Typed<'a> {
    let mut cols = Vec::with_capacity(tuple.len());
    for (i, (c, d)) in rel.columns.iter().zip(tuple.iter()).enumerate() {
        if key_only && !c.is_key {
            continue;
        }
        let kind = table
            .column(&c.name)
            .map(|col| col.kind.clone())
            .or_else(|| types::builtin_kind(c.type_oid))
            .unwrap_or(Kind::Text);
        let d = match d {
            // unchanged TOAST: take the old value when the old row has it, else leave it out
            Datum::Unchanged => match other.and_then(|o| o.get(i)) {
                Some(d @ (Datum::Text(_) | Datum::Null)) => d,
                _ => continue,
            },
            d => d,
        };
        match d {
            Datum::Text(s) => {
                cols.push((c.name.as_str(), Some(s.as_str()), types::to_json(&kind, s)))
            }
            Datum::Null => cols.push((c.name.as_str(), None, Value::Null)),
            Datum::Unchanged => {}
        }
    }
    Typed { cols }
}

fn values<'a>(t: &'a Option<Typed<'a>>) -> Values<'a> {
    Values(
        t.as_ref()
            .map(|t| t.cols.iter().map(|(n, v, _)| (*n, *v)).collect())
            .unwrap_or_default(),
    )
}

/// What one (role, select) group receives.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Outcome {
    Data {
        role: String,
        select: Option<Vec<String>>,
    },
    NoPk,
    Unauthorized,
    /// the RLS policy raised for these claims
    RlsFailed,
}

/// A channel whose bindings matched: its subscription id, claims, (binding id, `select`)
/// pairs, and where its RLS answer will be (`None`: no check needed).
struct Matched {
    id: u64,
    claims: Arc<Claims>,
    ids: Vec<(u32, Option<Vec<String>>)>,
    rls: Option<Slot>,
}

/// A change whose matching channels are known, waiting for its batch's RLS answers.
pub(crate) struct Prepared {
    action: Action,
    table: Arc<TableInfo>,
    commit_ts: i64,
    new: Option<Owned>,
    old: Option<Owned>,
    too_large: bool,
    roles: HashMap<String, Arc<HashSet<String>>>,
    matched: Vec<Matched>,
    /// Where the change stands in the stream (set by the feed).
    pub(crate) position: ChangePosition,
}

/// Match one change against the subscriptions. `None` when no channel wants it. RLS checks it
/// needs are added to `checks` for transaction `xid`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    change: &Change<'_>,
    registry: &Registry,
    client: &Client,
    cache: &mut DispatchCache,
    max_record_bytes: usize,
    checks: &mut rls::Batch,
    xid: u32,
) -> Result<Option<Prepared>, tokio_postgres::Error> {
    let table = change.table;
    let candidates = registry.candidates(&table.schema, &table.table);
    if candidates.is_empty() {
        return Ok(None);
    }
    let new = change
        .new
        .map(|t| typed(change.rel, table, t, false, change.old));
    let old_key_only = change.old_is_key_only;
    let old = match (change.old, change.action) {
        (Some(o), _) => Some(typed(change.rel, table, o, old_key_only, None)),
        // UPDATE without an old tuple: the identity is the key columns of the new row
        (None, Action::Update) => change.new.map(|t| typed(change.rel, table, t, true, None)),
        _ => None,
    };
    let new_row = values(&new);
    let old_row = values(&old);

    // which channels (and which of their ids) match, before RLS
    let mut matched: Vec<Matched> = Vec::new();
    for (sub, claims, bindings) in &candidates {
        let mut ids = Vec::new();
        for b in bindings.iter() {
            if b.table.oid != table.oid
                && (b.table.schema != table.schema || b.table.table != table.table)
            {
                continue;
            }
            if b.action.is_some_and(|a| a != change.action) {
                continue;
            }
            let pass = match change.action {
                Action::Delete => eval::check_all(&b.conds, &old_row),
                _ => eval::check_all(&b.conds, &new_row),
            };
            if pass
                && !ids
                    .iter()
                    .any(|(id, sel): &(u32, Option<Vec<String>>)| *id == b.id && *sel == b.select)
            {
                ids.push((b.id, b.select.clone()));
            }
        }
        if !ids.is_empty() {
            matched.push(Matched {
                id: *sub,
                claims: claims.clone(),
                ids,
                rls: None,
            });
        }
    }
    if matched.is_empty() {
        return Ok(None);
    }

    // per role: visible columns
    let mut roles: HashMap<String, Arc<HashSet<String>>> = HashMap::new();
    for m in &matched {
        if !roles.contains_key(&m.claims.role) {
            let key = (m.claims.role.clone(), table.oid);
            let vis = match cache.visible.get(&key) {
                Some(v) => v.clone(),
                None => {
                    let v = Arc::new(
                        catalog::visible_columns(client, &m.claims.role, table.oid).await?,
                    );
                    cache.visible.insert(key, v.clone());
                    v
                }
            };
            roles.insert(m.claims.role.clone(), vis);
        }
    }
    // per distinct claims: one RLS check, answered with the batch
    if table.rls_enabled && change.action != Action::Delete {
        let key: Vec<String> = table
            .columns
            .iter()
            .filter(|c| c.is_pk)
            .map(|c| new_row.get(&c.name).flatten().unwrap_or("").to_string())
            .collect();
        let mut slots: Vec<(Arc<Claims>, Slot)> = Vec::new();
        for m in &mut matched {
            if role_error(change.action, table, &roles[&m.claims.role]).is_some() {
                continue;
            }
            let slot = match slots.iter().find(|(c, _)| *c == m.claims) {
                Some((_, s)) => *s,
                None => {
                    let s = checks.add(&m.claims, table, key.clone());
                    slots.push((m.claims.clone(), s));
                    s
                }
            };
            m.rls = Some(slot);
        }
        if !slots.is_empty() {
            checks.in_transaction(xid);
        }
    }
    let too_large = max_record_bytes > 0 && raw_size(change, &new, &old) > max_record_bytes;
    Ok(Some(Prepared {
        action: change.action,
        table: table.clone(),
        commit_ts: change.commit_ts,
        new: new.map(Typed::owned),
        old: old.map(Typed::owned),
        too_large,
        roles,
        matched,
        position: (0, 0),
    }))
}

/// The error a role gets for this change before any RLS check, if any.
fn role_error(action: Action, table: &TableInfo, vis: &HashSet<String>) -> Option<Outcome> {
    if action == Action::Delete {
        return None;
    }
    if !table.has_pk() {
        return Some(Outcome::NoPk);
    }
    if table
        .columns
        .iter()
        .filter(|c| c.is_pk)
        .any(|c| !vis.contains(&c.name))
    {
        return Some(Outcome::Unauthorized);
    }
    None
}

/// Size of the change as wal2json would have printed it (names, types, values and the JSON
/// punctuation around them): what upstream compares with `max_record_bytes`.
fn raw_size(change: &Change<'_>, new: &Option<Typed<'_>>, old: &Option<Typed<'_>>) -> usize {
    let mut n = 80 + change.table.schema.len() + change.table.table.len();
    for t in [new, old].into_iter().flatten() {
        for (name, text, _) in &t.cols {
            let ty = change.table.column(name).map_or(4, |c| c.typname.len());
            n += 40 + name.len() + ty + text.map_or(4, |s| s.len() + 2);
        }
    }
    n
}

impl Prepared {
    /// Hand the change to every channel that may see it and is still subscribed (`registry`
    /// as it is now, after the checks). Returns the number of deliveries.
    pub(crate) fn deliver(self, answers: &rls::Answers, registry: &Registry) -> usize {
        let mut built: HashMap<Outcome, Arc<ChangeData>> = HashMap::new();
        // one message per (outcome, topic, ids), shared by the channels that get exactly it
        let mut frames: HashMap<(Outcome, &str, Vec<u32>), ChangeFrame> = HashMap::new();
        let mut deliveries = 0;
        for m in &self.matched {
            // unsubscribed while its checks ran: nothing more goes to that channel
            let Some(entry) = registry.get(m.id) else {
                continue;
            };
            let vis = &self.roles[&m.claims.role];
            let mut outcome_err = role_error(self.action, &self.table, vis);
            if let Some(slot) = m.rls {
                match answers.get(slot) {
                    Some(true) => {}
                    Some(false) => continue,
                    None => outcome_err = Some(Outcome::RlsFailed),
                }
            }
            // one message per distinct `select` among this channel's matching ids
            let mut by_select: Vec<(Option<Vec<String>>, Vec<u32>)> = Vec::new();
            for (id, sel) in &m.ids {
                match by_select.iter_mut().find(|(s, _)| s == sel) {
                    Some((_, v)) => {
                        if !v.contains(id) {
                            v.push(*id)
                        }
                    }
                    None => by_select.push((sel.clone(), vec![*id])),
                }
            }
            for (select, ids) in by_select {
                let outcome = outcome_err.clone().unwrap_or(Outcome::Data {
                    role: m.claims.role.clone(),
                    select,
                });
                let data = match built.get(&outcome) {
                    Some(d) => d.clone(),
                    None => {
                        let d = Arc::new(ChangeData::new(self.build(&outcome, Some(vis))));
                        built.insert(outcome.clone(), d.clone());
                        d
                    }
                };
                let frame = frames
                    .entry((outcome, entry.topic.as_str(), ids))
                    .or_insert_with_key(|(_, topic, ids)| {
                        ChangeFrame::new(topic, ids, &data, self.position)
                    })
                    .clone();
                entry.send(FeedEvent::Change(frame));
                deliveries += 1;
            }
        }
        deliveries
    }

    fn build(&self, outcome: &Outcome, vis: Option<&Arc<HashSet<String>>>) -> Value {
        let (table, new, old, too_large) = (&self.table, &self.new, &self.old, self.too_large);
        let change = self;
        let mut m = Map::new();
        m.insert("schema".into(), Value::String(table.schema.clone()));
        m.insert("table".into(), Value::String(table.table.clone()));
        m.insert("type".into(), Value::String(change.action.as_str().into()));
        let (role_select, error) = match outcome {
            Outcome::Data { select, .. } => (Some(select), None),
            Outcome::NoPk => (None, Some("Error 400: Bad Request, no primary key")),
            Outcome::Unauthorized => (None, Some("Error 401: Unauthorized")),
            Outcome::RlsFailed => (
                None,
                Some("Error 500: Internal Server Error, RLS policy evaluation failed"),
            ),
        };
        let Some(select) = role_select else {
            m.insert("commit_timestamp".into(), Value::Null);
            m.insert("columns".into(), json!([]));
            if change.action != Action::Delete {
                m.insert("record".into(), json!({}));
            }
            if change.action != Action::Insert {
                m.insert("old_record".into(), json!({}));
            }
            m.insert("errors".into(), json!([error.unwrap_or_default()]));
            return Value::Object(m);
        };
        let visible = |name: &str| match vis {
            Some(v) => v.contains(name),
            None => true,
        };
        let is_pk = |name: &str| table.column(name).is_some_and(|c| c.is_pk);
        let selected = |name: &str| {
            let chosen = match select {
                Some(s) => s.iter().any(|c| c == name),
                None => true,
            };
            chosen || is_pk(name)
        };
        let small = |v: &Value| !too_large || v.to_string().len() <= 64;
        m.insert(
            "commit_timestamp".into(),
            Value::String(format_commit_ts(change.commit_ts)),
        );
        let columns: Vec<Value> = table
            .columns
            .iter()
            .filter(|c| visible(&c.name) && selected(&c.name))
            .map(|c| json!({"name": c.name, "type": c.typname}))
            .collect();
        m.insert("columns".into(), Value::Array(columns));
        let obj = |t: &Owned, pk_only: bool| -> Value {
            let mut o = Map::new();
            for (name, v) in &t.cols {
                if visible(name) && selected(name) && small(v) && (!pk_only || is_pk(name)) {
                    o.insert(name.clone(), v.clone());
                }
            }
            Value::Object(o)
        };
        if change.action != Action::Delete {
            m.insert(
                "record".into(),
                new.as_ref().map_or_else(|| json!({}), |t| obj(t, false)),
            );
        }
        if change.action != Action::Insert {
            let pk_only = change.action == Action::Delete && table.rls_enabled;
            m.insert(
                "old_record".into(),
                old.as_ref().map_or_else(|| json!({}), |t| obj(t, pk_only)),
            );
        }
        m.insert(
            "errors".into(),
            if too_large {
                json!(["Error 413: Payload Too Large"])
            } else {
                Value::Null
            },
        );
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_timestamp_format() {
        assert_eq!(format_commit_ts(0), "2000-01-01T00:00:00.000Z");
        // 2026-08-21T12:00:00.123456Z
        let unix_us: i64 = 1_787_313_600_123_456;
        assert_eq!(
            format_commit_ts(unix_us - 946_684_800_000_000),
            "2026-08-21T12:00:00.123Z"
        );
        assert_eq!(format_commit_ts(-1000), "1999-12-31T23:59:59.999Z");
    }
}
