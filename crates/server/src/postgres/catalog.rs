//! What the feed needs to know about tables, types and roles, read from the system catalog.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::types::{builtin_kind, Kind};

/// One column of a table (attribute order, dropped columns left out).
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: String,
    /// `pg_type.typname` (`int4`, `_text`, ...): the `columns[].type` clients see.
    pub(crate) typname: String,
    /// `format_type(...)`: a castable type name for SQL.
    pub(crate) sql_type: String,
    pub(crate) kind: Kind,
    pub(crate) is_pk: bool,
}

/// A table.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    pub(crate) oid: u32,
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) columns: Vec<Column>,
    pub(crate) rls_enabled: bool,
}

impl TableInfo {
    pub(crate) fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
    pub(crate) fn has_pk(&self) -> bool {
        self.columns.iter().any(|c| c.is_pk)
    }
}

/// Tables of the publication, as (schema, table).
pub(crate) async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[&publication])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Resolve the JSON kind of a type, asking the catalog for user types (enums, domains,
/// arrays of them, composites).
pub(crate) async fn resolve_kind(
    client: &Client,
    oid: u32,
    cache: &mut HashMap<u32, Kind>,
) -> Result<Kind, tokio_postgres::Error> {
    if let Some(k) = builtin_kind(oid) {
        return Ok(k);
    }
    if let Some(k) = cache.get(&oid) {
        return Ok(k.clone());
    }
    let mut chain = Vec::new(); // (oid, is_array, delim) from the outside in
    let mut cur = oid;
    let kind = loop {
        if let Some(k) = builtin_kind(cur).or_else(|| cache.get(&cur).cloned()) {
            break k;
        }
        let row = client
            .query_opt(
                "SELECT typtype::text, typbasetype, typelem, typlen, typdelim::text FROM pg_type WHERE oid = $1",
                &[&cur],
            )
            .await?;
        let Some(row) = row else { break Kind::Text };
        let typtype: String = row.get(0);
        let base: u32 = row.get(1);
        let elem: u32 = row.get(2);
        let typlen: i16 = row.get(3);
        let delim: String = row.get(4);
        if typtype == "d" && base != 0 {
            chain.push((cur, None));
            cur = base;
        } else if elem != 0 && typlen == -1 {
            chain.push((cur, Some(delim.bytes().next().unwrap_or(b','))));
            cur = elem;
        } else {
            break Kind::Text;
        }
        if chain.len() > 16 {
            break Kind::Text;
        }
    };
    let mut k = kind;
    for (o, arr) in chain.into_iter().rev() {
        if let Some(d) = arr {
            k = Kind::Array(Box::new(k), d);
        }
        cache.insert(o, k.clone());
    }
    Ok(cache.get(&oid).cloned().unwrap_or(k))
}

/// Load a table by name; `None` when it does not exist.
pub(crate) async fn load_table(
    client: &Client,
    schema: &str,
    table: &str,
    kinds: &mut HashMap<u32, Kind>,
) -> Result<Option<Arc<TableInfo>>, tokio_postgres::Error> {
    let Some(rel) = client
        .query_opt(
            "SELECT c.oid, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = rel.get(0);
    let rls_enabled: bool = rel.get(1);
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text, format_type(a.atttypid, a.atttypmod), a.atttypid,
                    coalesce(a.attnum = ANY(pk.conkey), false)
             FROM pg_attribute a
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_constraint pk ON pk.conrelid = a.attrelid AND pk.contype = 'p'
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for r in rows {
        let type_oid: u32 = r.get(3);
        columns.push(Column {
            name: r.get(0),
            typname: r.get(1),
            sql_type: r.get(2),
            kind: resolve_kind(client, type_oid, kinds).await?,
            is_pk: r.get(4),
        });
    }
    Ok(Some(Arc::new(TableInfo {
        oid,
        schema: schema.to_string(),
        table: table.to_string(),
        columns,
        rls_enabled,
    })))
}

/// The columns of `table` that `role` may SELECT.
pub(crate) async fn visible_columns(
    client: &Client,
    role: &str,
    table_oid: u32,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = $2 AND attnum > 0 AND NOT attisdropped
               AND has_column_privilege($1::text, attrelid, attname::text, 'SELECT')",
            &[&role, &table_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Does the role exist?
pub(crate) async fn role_exists(
    client: &Client,
    role: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some())
}
