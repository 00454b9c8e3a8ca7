//! Row-level security: which of these rows may these claims SELECT?
//!
//! As upstream's `apply_rls`: with `role` and `request.jwt.claims` set to the subscriber's,
//! the row is looked up by primary key in its table under the table's policies. DELETEs are
//! not checked (the row is gone).
//!
//! Checks are batched. The feed collects, for a run of consecutive changes (one transaction,
//! or many small ones that arrived while earlier checks were in flight), one [`Group`] per
//! (claims set, table): the primary keys of the rows that matched those claims' filters. One
//! simple-query string then answers the whole batch in one round trip, one statement per
//! group:
//!
//! ```sql
//! SELECT set_config('role', ..., true), set_config('request.jwt.claims', ..., true), ...;
//! SELECT k.o FROM unnest('{1,2,3}'::bigint[]) WITH ORDINALITY AS k(c1, o)
//!  WHERE EXISTS (SELECT 1 FROM public.t AS t WHERE t.id = k.c1);
//! ```
//!
//! The string runs as one implicit transaction, so the `set_config(.., true)` settings are
//! transaction-local and vanish at its end; nothing is left on the connection, and several
//! batches can be pipelined on a few connections.
//!
//! Checking once per distinct claims set is equivalent to checking every subscriber: the answer
//! depends only on the table's contents, the key, the role and the claims.
//!
//! **Isolation.** A policy that raises for some claims aborts the string at that group's
//! statement. Statements are counted as they complete, so the failing group is known: it is
//! answered "failed" (its subscribers get upstream's `Error 500`), and the string is re-run
//! from the next group. Other subscribers are unaffected (upstream's supabase/realtime#2093 is
//! the opposite: one failing subscription stops delivery for all).
//!
//! **Visibility.** Logical decoding streams a commit once its WAL is flushed, which can be a
//! moment before the committing backend leaves the proc array; a check in that moment would
//! read "not visible" as "not allowed". The first statement of the string asks
//! `pg_xact_status` about the batch's transactions; if one is still "in progress" the answers
//! are thrown away and the string re-run shortly after (at most for 2 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::catalog::TableInfo;
use super::registry::Claims;
use super::replication::{quote_ident, quote_literal};

/// Where the answer for one (claims, row) pair will be: group index and ordinal in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    group: usize,
    ord: u32,
}

/// The rows one claims set must be checked for, in one table.
struct Group {
    claims: Arc<Claims>,
    table: Arc<TableInfo>,
    /// primary-key texts of each row, in the table's key-column order
    keys: Vec<Vec<String>>,
}

/// The checks of a batch of changes.
#[derive(Default)]
pub(crate) struct Batch {
    groups: Vec<Group>,
    index: HashMap<(Arc<Claims>, u32), usize>,
    /// transactions whose commit must be visible before the checks run
    xids: Vec<u32>,
}

impl Batch {
    /// Ask for the visibility of the row with primary-key texts `key` for `claims`.
    pub(crate) fn add(
        &mut self,
        claims: &Arc<Claims>,
        table: &Arc<TableInfo>,
        key: Vec<String>,
    ) -> Slot {
        let group = *self
            .index
            .entry((claims.clone(), table.oid))
            .or_insert_with(|| {
                self.groups.push(Group {
                    claims: claims.clone(),
                    table: table.clone(),
                    keys: Vec::new(),
                });
                self.groups.len() - 1
            });
        let keys = &mut self.groups[group].keys;
        keys.push(key);
        Slot {
            group,
            ord: keys.len() as u32,
        }
    }

    /// The rows checked belong to transaction `xid`.
    pub(crate) fn in_transaction(&mut self, xid: u32) {
        if self.xids.last() != Some(&xid) {
            self.xids.push(xid);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Number of (claims, row) checks.
    pub(crate) fn checks(&self) -> usize {
        self.groups.iter().map(|g| g.keys.len()).sum()
    }
}

/// The answers of a batch: per group, the visible ordinals, or `None` where the policy raised.
#[derive(Default)]
pub(crate) struct Answers {
    groups: Vec<Option<Vec<bool>>>,
}

impl Answers {
    /// `Some(visible)`, or `None` when evaluating the policy failed for these claims.
    pub(crate) fn get(&self, slot: Slot) -> Option<bool> {
        let g = self.groups.get(slot.group)?.as_ref()?;
        Some(g.get(slot.ord as usize - 1).copied().unwrap_or(false))
    }
}

fn set_claims_sql(c: &Claims) -> String {
    format!(
        "SELECT set_config('role', {}, true), set_config('request.jwt.claims', {}, true), \
         set_config('request.jwt.claim.sub', {}, true), set_config('request.jwt.claim.role', {}, true);",
        quote_literal(&c.role),
        quote_literal(&c.json),
        quote_literal(c.sub.as_deref().unwrap_or("")),
        quote_literal(&c.role),
    )
}

/// `{"a","b"}`: an array literal's text, every element quoted.
fn array_literal<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::from("{");
    for (i, v) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        for ch in v.chars() {
            if ch == '"' || ch == '\\' {
                s.push('\\');
            }
            s.push(ch);
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// The statement returning the ordinals of the group's visible rows.
fn exists_sql(g: &Group) -> String {
    let pk: Vec<_> = g.table.columns.iter().filter(|c| c.is_pk).collect();
    let mut arrays = Vec::with_capacity(pk.len());
    let mut aliases = Vec::with_capacity(pk.len() + 1);
    let mut conds = Vec::with_capacity(pk.len());
    for (i, col) in pk.iter().enumerate() {
        let lit = array_literal(g.keys.iter().map(|k| k.get(i).map_or("", String::as_str)));
        arrays.push(format!("{}::{}[]", quote_literal(&lit), col.sql_type));
        aliases.push(format!("c{i}"));
        conds.push(format!("t.{} = k.c{i}", quote_ident(&col.name)));
    }
    aliases.push("o".into());
    format!(
        "SELECT k.o FROM unnest({}) WITH ORDINALITY AS k({}) WHERE EXISTS (SELECT 1 FROM {}.{} AS t WHERE {});",
        arrays.join(", "),
        aliases.join(", "),
        quote_ident(&g.table.schema),
        quote_ident(&g.table.table),
        conds.join(" AND "),
    )
}

/// `true` when none of the transactions is still in progress.
fn visible_sql(xids: &[u32]) -> String {
    let list = xids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "SELECT coalesce(bool_and(pg_xact_status(((CASE WHEN u.v <= (s.x & 4294967295) THEN s.x >> 32 \
         ELSE (s.x >> 32) - 1 END) << 32 | u.v)::text::xid8) IS DISTINCT FROM 'in progress'), true) \
         FROM unnest('{{{list}}}'::bigint[]) AS u(v), \
         (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x) s;"
    )
}

/// Run the batch's checks. Errors of the connection itself are returned; a policy that
/// raises only fails its own group.
pub(crate) async fn run(client: &Client, batch: &Batch) -> Result<Answers, tokio_postgres::Error> {
    let n = batch.groups.len();
    let mut answers = Answers {
        groups: vec![None; n],
    };
    if n == 0 {
        return Ok(answers);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut start = 0;
    let mut need_visible = !batch.xids.is_empty();
    while start < n {
        let prefix = usize::from(need_visible);
        let mut sql = String::new();
        if need_visible {
            sql.push_str(&visible_sql(&batch.xids));
        }
        for g in &batch.groups[start..] {
            sql.push_str(&set_claims_sql(&g.claims));
            sql.push_str(&exists_sql(g));
        }
        for g in &mut answers.groups[start..] {
            *g = Some(vec![false; 0]);
        }
        let mut visible = true;
        let mut done = 0usize; // statements completed
        let mut failed_at = None;
        let stream = client.simple_query_raw(&sql).await?;
        pin_mut!(stream);
        loop {
            match stream.try_next().await {
                Ok(Some(SimpleQueryMessage::CommandComplete(_))) => done += 1,
                Ok(Some(SimpleQueryMessage::Row(row))) => {
                    if done < prefix {
                        visible = row.get(0) != Some("f");
                    } else if (done - prefix) % 2 == 1 {
                        let g = start + (done - prefix) / 2;
                        let ord: usize = row.get(0).and_then(|v| v.parse().ok()).unwrap_or(0);
                        let len = batch.groups[g].keys.len();
                        if let Some(Some(vis)) = answers.groups.get_mut(g) {
                            if vis.is_empty() {
                                vis.resize(len, false);
                            }
                            if (1..=len).contains(&ord) {
                                vis[ord - 1] = true;
                            }
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.as_db_error().is_none() => return Err(e),
                Err(e) => {
                    if done < prefix {
                        return Err(e);
                    }
                    let g = start + (done - prefix) / 2;
                    let c = &batch.groups[g].claims;
                    tracing::warn!(role = %c.role, table = %batch.groups[g].table.table, error = %e, "RLS policy evaluation failed");
                    failed_at = Some(g);
                    break;
                }
            }
        }
        if !visible && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        need_visible = false;
        match failed_at {
            Some(g) => {
                answers.groups[g] = None;
                start = g + 1;
            }
            None => break,
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_every_element() {
        assert_eq!(array_literal(["1", "2"].into_iter()), r#"{"1","2"}"#);
        assert_eq!(array_literal([r#"a"b\c"#].into_iter()), r#"{"a\"b\\c"}"#);
        assert_eq!(array_literal(std::iter::empty()), "{}");
    }
}
