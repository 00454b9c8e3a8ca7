//! Turning a join's `postgres_changes` items into compiled bindings (the Rust counterpart of
//! inserting `realtime.subscription` rows and of its `subscription_check_filters` trigger).
//! Error texts are the upstream ones (PROTOCOL.md §5.5).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::Client;

use super::catalog::{self, TableInfo};
use super::event::Binding;
use super::filter::{self, Condition, FilterValue, Op};
use super::types::Kind;

/// Which actions a binding wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Insert,
    Update,
    Delete,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
        }
    }
}

/// A condition with its right-hand side already cast by PostgreSQL to the column type and
/// rendered back to text (so comparisons in Rust see the same canonical form as the WAL).
#[derive(Debug, Clone)]
pub(crate) struct CompiledCond {
    pub(crate) column: String,
    pub(crate) op: Op,
    pub(crate) negate: bool,
    pub(crate) kind: Kind,
    pub(crate) value: FilterValue,
    /// compiled pattern of `match` / `imatch`
    pub(crate) regex: Option<Arc<regex_lite::Regex>>,
}

/// One binding resolved to one table.
#[derive(Debug, Clone)]
pub(crate) struct CompiledBinding {
    pub(crate) id: u32,
    pub(crate) action: Option<Action>,
    pub(crate) table: Arc<TableInfo>,
    pub(crate) conds: Vec<CompiledCond>,
    pub(crate) select: Option<Vec<String>>,
}

/// Elixir's `inspect` of a JSON value (for the "No subscription params" text).
pub(crate) fn inspect_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(inspect_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| format!("{:?} => {}", k, inspect_value(&m[k.as_str()])))
                .collect();
            format!("%{{{}}}", parts.join(", "))
        }
    }
}

fn str_param<'a>(p: &'a Value, key: &str) -> Option<&'a str> {
    p.get(key).and_then(Value::as_str)
}

/// The parsed, not yet resolved, form of one item.
struct Params {
    action: Option<Action>,
    event: String,
    schema: String,
    table: String,
    conds: Vec<Condition>,
    select: Option<Vec<String>>,
}

fn describe(p: &Params) -> String {
    let select = match &p.select {
        None => "nil".to_string(),
        Some(s) => format!(
            "[{}]",
            s.iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "[event: {}, schema: {}, table: {}, filters: {}, select: {}]",
        p.event,
        p.schema,
        p.table,
        filter::inspect(&p.conds),
        select
    )
}

fn parse_params(params: &Value) -> Result<Params, String> {
    let event = str_param(params, "event").unwrap_or("*").to_string();
    let action = match event.to_ascii_uppercase().as_str() {
        "INSERT" => Some(Action::Insert),
        "UPDATE" => Some(Action::Update),
        "DELETE" => Some(Action::Delete),
        _ => None,
    };
    let event = match action {
        Some(a) => a.as_str().to_string(),
        None => "*".to_string(),
    };
    let (schema, table) = match (str_param(params, "schema"), str_param(params, "table")) {
        (Some(s), Some(t)) => (s.to_string(), t.to_string()),
        (Some(s), None) => (s.to_string(), "*".to_string()),
        (None, Some(t)) => ("public".to_string(), t.to_string()),
        (None, None) => {
            return Err(format!(
                "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: {}",
                inspect_value(params)
            ))
        }
    };
    let conds = match params.get("filter") {
        Some(Value::String(f)) => filter::parse(f)?,
        _ => Vec::new(),
    };
    let select = match params.get("select") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            Some(a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        }
        Some(_) => {
            return Err(
                "Error parsing `select` params: expected a list of column name strings, e.g. select: [\"col1\", \"col2\"]".into()
            )
        }
    };
    Ok(Params {
        action,
        event,
        schema,
        table,
        conds,
        select,
    })
}

/// Shared caches used while compiling.
pub(crate) struct CompileCtx<'a> {
    pub(crate) client: &'a Client,
    pub(crate) publication: &'a str,
    pub(crate) kinds: &'a mut HashMap<u32, Kind>,
    pub(crate) tables: &'a mut HashMap<(String, String), Arc<TableInfo>>,
}

/// An error while compiling: `fatal` ones are not retried (bad params), others are (DB).
pub(crate) struct CompileError {
    pub(crate) message: String,
    pub(crate) fatal: bool,
}

fn db_err(e: tokio_postgres::Error) -> CompileError {
    let message = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    };
    CompileError {
        message,
        fatal: false,
    }
}

/// Compile every binding of a join for the channel's role.
pub(crate) async fn compile(
    ctx: &mut CompileCtx<'_>,
    role: &str,
    bindings: &[Binding],
) -> Result<Vec<CompiledBinding>, CompileError> {
    let fatal = |message: String| CompileError {
        message,
        fatal: true,
    };
    let mut out = Vec::new();
    let pub_tables = catalog::publication_tables(ctx.client, ctx.publication)
        .await
        .map_err(db_err)?;
    let role_ok = catalog::role_exists(ctx.client, role)
        .await
        .map_err(db_err)?;
    for b in bindings {
        let p = parse_params(&b.params).map_err(fatal)?;
        let exception = |text: String| {
            fatal(format!(
                "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: {}. Exception: {}",
                describe(&p),
                text
            ))
        };
        if !role_ok {
            return Err(exception(format!("role \"{role}\" does not exist")));
        }
        let wildcard = p.schema == "*" || p.table == "*";
        if wildcard && p.select.is_some() {
            return Err(fatal("Error parsing `select` params: `select` is not allowed with a wildcard schema or table".into()));
        }
        let matches: Vec<&(String, String)> = pub_tables
            .iter()
            .filter(|(s, t)| {
                (p.schema == "*" || *s == p.schema) && (p.table == "*" || *t == p.table)
            })
            .collect();
        if matches.is_empty() {
            return Err(fatal(format!(
                "Unable to subscribe to changes with given parameters. Please check Realtime is enabled for the given connect parameters: {}",
                describe(&p)
            )));
        }
        for (schema, table) in matches {
            let key = (schema.clone(), table.clone());
            let info = match ctx.tables.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let Some(t) = catalog::load_table(ctx.client, schema, table, ctx.kinds)
                        .await
                        .map_err(db_err)?
                    else {
                        continue;
                    };
                    ctx.tables.insert(key, t.clone());
                    t
                }
            };
            let visible = catalog::visible_columns(ctx.client, role, info.oid)
                .await
                .map_err(db_err)?;
            let mut conds = Vec::with_capacity(p.conds.len());
            for c in &p.conds {
                let Some(col) = info
                    .column(&c.column)
                    .filter(|col| visible.contains(&col.name))
                else {
                    return Err(exception(format!("invalid column for filter {}", c.column)));
                };
                let value = match (&c.op, &c.value) {
                    (Op::Like | Op::Ilike | Op::Match | Op::Imatch, v) => {
                        if !matches!(
                            col.typname.as_str(),
                            "text" | "varchar" | "bpchar" | "name" | "citext"
                        ) {
                            return Err(exception(format!(
                                "operator {} is only allowed on text columns, {} is {}",
                                c.op.as_str(),
                                col.name,
                                col.typname
                            )));
                        }
                        v.clone()
                    }
                    (Op::Is, FilterValue::Bool(_) | FilterValue::Unknown)
                        if col.kind != Kind::Bool =>
                    {
                        return Err(exception(format!(
                            "invalid value for `is` filter on non-boolean column {}",
                            col.name
                        )));
                    }
                    (_, FilterValue::One(v)) => FilterValue::One(
                        canonical(ctx.client, v, &col.sql_type)
                            .await
                            .map_err(exception)?,
                    ),
                    (_, FilterValue::List(vs)) => {
                        let mut out = Vec::with_capacity(vs.len());
                        for v in vs {
                            out.push(
                                canonical(ctx.client, v, &col.sql_type)
                                    .await
                                    .map_err(exception)?,
                            );
                        }
                        FilterValue::List(out)
                    }
                    (_, v) => v.clone(),
                };
                let regex = match (&c.op, &value) {
                    (Op::Match | Op::Imatch, FilterValue::One(p)) => {
                        let pattern = if c.op == Op::Imatch {
                            format!("(?i){p}")
                        } else {
                            p.clone()
                        };
                        match regex_lite::Regex::new(&pattern) {
                            Ok(r) => Some(Arc::new(r)),
                            Err(e) => {
                                return Err(exception(format!("invalid regular expression: {e}")))
                            }
                        }
                    }
                    _ => None,
                };
                conds.push(CompiledCond {
                    column: col.name.clone(),
                    op: c.op,
                    negate: c.negate,
                    kind: col.kind.clone(),
                    value,
                    regex,
                });
            }
            if let Some(sel) = &p.select {
                for s in sel {
                    if info.column(s).is_none() || !visible.contains(s) {
                        return Err(exception(format!("invalid column for select {s}")));
                    }
                }
            }
            out.push(CompiledBinding {
                id: b.id,
                action: p.action,
                table: info,
                conds,
                select: p.select.clone(),
            });
        }
    }
    Ok(out)
}

/// Cast a filter value to the column type and back to text, as PostgreSQL prints it.
async fn canonical(client: &Client, value: &str, sql_type: &str) -> Result<String, String> {
    let sql = format!("SELECT (($1::text)::{sql_type})::text");
    match client.query_one(&sql, &[&value]).await {
        Ok(row) => Ok(row.get::<_, Option<String>>(0).unwrap_or_default()),
        Err(e) => Err(e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params() {
        let p = parse_params(&json!({"event":"insert","schema":"public"}))
            .ok()
            .unwrap();
        assert_eq!(p.action, Some(Action::Insert));
        assert_eq!(p.table, "*");
        let p = parse_params(&json!({"event":"bogus","table":"todos"}))
            .ok()
            .unwrap();
        assert_eq!((p.action, p.schema.as_str()), (None, "public"));
        let e = parse_params(&json!({"event":"*"})).err().unwrap();
        assert_eq!(
            e,
            "No subscription params provided. Please provide at least a `schema` or `table` to subscribe to: %{\"event\" => \"*\"}"
        );
        assert!(parse_params(&json!({"table":"t","select":"id"})).is_err());
        let p = parse_params(&json!({"schema":"public","table":"todos","filter":"id=eq.1"}))
            .ok()
            .unwrap();
        assert_eq!(
            describe(&p),
            "[event: *, schema: public, table: todos, filters: [{\"id\", \"eq\", \"1\"}], select: nil]"
        );
    }
}
