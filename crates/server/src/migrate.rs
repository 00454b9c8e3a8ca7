//! Versioned migrations, applied at start, each once per database.
//!
//! Two servers starting on one database take the same advisory lock, so the second waits and
//! then finds everything applied. Each migration is written to be safe on a database that
//! already has the objects (a Supabase project): it creates only what is missing.

use tokio_postgres::Client;

/// (version, name, SQL), in order. Never edit an applied migration: add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "roles_and_auth",
        include_str!("migrations/0001_roles_and_auth.sql"),
    ),
    (
        2,
        "realtime_messages",
        include_str!("migrations/0002_realtime_messages.sql"),
    ),
];

/// Apply what is missing. Returns the versions applied by this call.
///
/// Takes a shared client (the change feed's setup calls it too) and runs its own transaction,
/// so the client must not be used concurrently meanwhile.
pub(crate) async fn run(client: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    match apply(client).await {
        Ok(done) => {
            client.batch_execute("COMMIT").await?;
            if done.is_empty() {
                tracing::debug!("database schema up to date");
            }
            Ok(done)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn apply(tx: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('supa_realtime_rs_migrations'));
         CREATE SCHEMA IF NOT EXISTS realtime;
         CREATE TABLE IF NOT EXISTS realtime.rs_schema_migrations (
           version bigint PRIMARY KEY,
           name text NOT NULL,
           inserted_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let applied: Vec<i64> = tx
        .query("SELECT version FROM realtime.rs_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO realtime.rs_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, "applied database migration");
        done.push(*version);
    }
    Ok(done)
}
