//! Idempotent database setup: the Supabase roles and `auth.*` helpers policies rely on, the
//! publication, and the replication slot; plus the clean-up that removes slot and publication.

use tokio_postgres::Client;

use crate::replication::{quote_ident, ReplError, ReplicationConnection};

/// Roles, auth helpers and the publication.
pub(crate) async fn prepare(
    client: &Client,
    publication: &str,
) -> Result<(), tokio_postgres::Error> {
    // Roles and auth.* helpers come from the server's versioned migrations (idempotent,
    // advisory-locked), shared with private channels.
    crate::migrate::run(client).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if !exists {
        if let Err(e) = client
            .batch_execute(&format!("CREATE PUBLICATION {}", quote_ident(publication)))
            .await
        {
            // a concurrent creator won the race
            if e.as_db_error().map(|d| d.code().code()) != Some("42710") {
                return Err(e);
            }
        }
        tracing::info!(publication, "created publication");
    }
    Ok(())
}

/// Make sure the slot exists (pgoutput, permanent). Returns true when it was just created.
pub(crate) async fn ensure_slot(
    client: &Client,
    repl: &mut ReplicationConnection,
    slot: &str,
) -> Result<bool, SetupError> {
    let row = client
        .query_opt(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(SetupError::Query)?;
    match row {
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            if plugin.as_deref() != Some("pgoutput") {
                return Err(SetupError::Other(format!(
                    "replication slot {slot} exists with plugin {plugin:?}, not pgoutput; drop it or choose another slot name"
                )));
            }
            Ok(false)
        }
        None => {
            repl.simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
                quote_ident(slot)
            ))
            .await
            .map_err(SetupError::Repl)?;
            tracing::info!(slot, "created replication slot");
            Ok(true)
        }
    }
}

/// Terminate a backend that still holds the slot (a previous server that died).
pub(crate) async fn release_slot(client: &Client, slot: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL AND active_pid <> pg_backend_pid()",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// Drop the slot and the publication.
pub(crate) async fn cleanup(
    client: &Client,
    slot: &str,
    publication: &str,
) -> Result<(), tokio_postgres::Error> {
    release_slot(client, slot).await?;
    client
        .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await?;
    client
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(publication)
        ))
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("{0}")]
    Query(tokio_postgres::Error),
    #[error("{0}")]
    Repl(ReplError),
    #[error("{0}")]
    Other(String),
}
