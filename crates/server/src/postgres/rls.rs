//! Row-level security: may these claims SELECT this row?
//!
//! As upstream's `apply_rls`: inside a transaction, `role` and `request.jwt.claims` are set to
//! the subscriber's, then `SELECT EXISTS(SELECT 1 FROM <table> WHERE <pk> = <value> ...)` runs
//! under the table's policies. DELETEs are not checked (the row is gone).
//!
//! The check runs once per change per DISTINCT claims set, not per subscriber. That is
//! equivalent to checking every subscriber: the query's outcome depends only on the table's
//! contents (the same for all of them, it is one snapshot per batch), the primary key (the same
//! change), the role and the claims (the same within a group), so subscribers with equal
//! claims necessarily get equal answers.
//!
//! All groups of one change go to the server in ONE round trip: a single simple-query string
//! `BEGIN READ ONLY; SET claims A; SELECT EXISTS..; RESET ROLE; SET claims B; ...; ROLLBACK`.
//! If any statement fails (a policy raising for some claims), the groups are re-run one by one
//! so that only the failing claims get the error.

use tokio_postgres::{Client, SimpleQueryMessage};

use super::catalog::TableInfo;
use super::registry::Claims;
use super::replication::{quote_ident, quote_literal};

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

/// `SELECT EXISTS(...)` for the row whose primary-key texts are `pk`.
fn exists_sql(table: &TableInfo, pk: &[(&str, &str, Option<&str>)]) -> String {
    let mut sql = format!(
        "SELECT EXISTS(SELECT 1 FROM {}.{} WHERE ",
        quote_ident(&table.schema),
        quote_ident(&table.table)
    );
    for (i, (col, ty, val)) in pk.iter().enumerate() {
        if i > 0 {
            sql.push_str(" AND ");
        }
        match val {
            Some(v) => sql.push_str(&format!(
                "{} = {}::{}",
                quote_ident(col),
                quote_literal(v),
                ty
            )),
            None => sql.push_str(&format!("{} IS NULL", quote_ident(col))),
        }
    }
    sql.push_str(");");
    sql
}

fn bools(msgs: &[SimpleQueryMessage]) -> Vec<bool> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r)
                if r.columns().len() == 1 && r.columns()[0].name() == "exists" =>
            {
                Some(r.get(0) == Some("t"))
            }
            _ => None,
        })
        .collect()
}

/// Visibility of the row (primary key `pk` = (column, sql type, text value)) for each claims
/// set, in order; `None` where evaluating the policy raised (upstream then sends
/// `Error 500`). Errors of the connection itself are returned.
pub(crate) async fn check(
    client: &Client,
    table: &TableInfo,
    pk: &[(&str, &str, Option<&str>)],
    groups: &[&Claims],
) -> Result<Vec<Option<bool>>, tokio_postgres::Error> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let exists = exists_sql(table, pk);
    let mut sql = String::from("BEGIN READ ONLY;");
    for c in groups {
        sql.push_str(&set_claims_sql(c));
        sql.push_str(&exists);
        sql.push_str("RESET ROLE;");
    }
    sql.push_str("ROLLBACK;");
    match client.simple_query(&sql).await {
        Ok(msgs) => {
            let r = bools(&msgs);
            if r.len() == groups.len() {
                return Ok(r.into_iter().map(Some).collect());
            }
        }
        Err(e) if e.as_db_error().is_none() => return Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "RLS batch failed; checking claims one by one");
            client.simple_query("ROLLBACK").await?;
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for c in groups {
        let sql = format!("BEGIN READ ONLY;{}{}ROLLBACK;", set_claims_sql(c), exists);
        match client.simple_query(&sql).await {
            Ok(msgs) => out.push(Some(bools(&msgs).first().copied().unwrap_or(false))),
            Err(e) if e.as_db_error().is_none() => return Err(e),
            Err(e) => {
                tracing::warn!(role = %c.role, error = %e, "RLS policy evaluation failed");
                client.simple_query("ROLLBACK").await?;
                out.push(None);
            }
        }
    }
    Ok(out)
}

/// Wait until transaction `xid` (32 bits, as pgoutput gives it) is no longer in progress, so a
/// statement started afterwards sees what it committed.
///
/// Logical decoding streams a commit once its WAL is flushed, which can be a moment before the
/// committing backend leaves the proc array; `pg_xact_status` is "in progress" exactly while
/// it is there. The 64-bit id is rebuilt with the epoch of the current snapshot's xmax (the
/// previous epoch when the low 32 bits are past it, across a wraparound).
pub(crate) async fn wait_until_visible(
    client: &Client,
    xid: u32,
) -> Result<(), tokio_postgres::Error> {
    const SQL: &str = "SELECT pg_xact_status(((CASE WHEN $1::bigint <= (x & 4294967295) THEN x >> 32
                                                     ELSE (x >> 32) - 1 END) << 32 | $1::bigint)::text::xid8)
                       FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x) s";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let status: Option<String> = client.query_one(SQL, &[&i64::from(xid)]).await?.get(0);
        if status.as_deref() != Some("in progress") || std::time::Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
}
