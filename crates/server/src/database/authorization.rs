//! Private channel authorization by the RLS policies on `realtime.messages` (PROTOCOL.md §9.2).
//!
//! Both checks run in a transaction that is always rolled back, with the user's context set
//! as upstream sets it: `role`, `realtime.topic`, `request.jwt.claims`,
//! `request.jwt.claim.sub`, `request.jwt.claim.role`. So a policy such as
//! `using (realtime.topic() = 'room:' || auth.uid()::text)` means here what it means on Supabase.

use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

use super::{Database, DbError, QUERY_TIMEOUT};
use crate::auth::Claims;

/// What a user may read on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ReadAccess {
    pub(crate) broadcast: bool,
    pub(crate) presence: bool,
}

/// The two kinds of rows policies are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extension {
    Broadcast,
    Presence,
}

impl Extension {
    fn as_str(self) -> &'static str {
        match self {
            Extension::Broadcast => "broadcast",
            Extension::Presence => "presence",
        }
    }
}

async fn set_user_context(
    tx: &Transaction<'_>,
    topic: &str,
    claims: &Claims,
) -> Result<(), tokio_postgres::Error> {
    let claims_json = Value::Object(claims.raw.clone()).to_string();
    let sub = claims.raw.get("sub").and_then(Value::as_str).unwrap_or("");
    tx.execute(
        "SELECT set_config('role', $1, true), set_config('realtime.topic', $2, true),
                set_config('request.jwt.claims', $3, true), set_config('request.jwt.claim.sub', $4, true),
                set_config('request.jwt.claim.role', $1, true)",
        &[&claims.role, &topic, &claims_json, &sub],
    )
    .await?;
    Ok(())
}

/// A role the database does not know, or a policy denying, both mean "no".
fn is_denial(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE
            || *c == SqlState::UNDEFINED_OBJECT
            || *c == SqlState::INVALID_PARAMETER_VALUE
    )
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    tokio::time::timeout(QUERY_TIMEOUT, f)
        .await
        .map_err(|_| DbError::Timeout)?
}

impl Database {
    /// The read check: probe rows are inserted as the server's role, read back as the user's,
    /// and rolled back. A row the user can see means the user may read that extension.
    pub(crate) async fn read_access(
        &self,
        topic: &str,
        claims: &Claims,
        presence: bool,
    ) -> Result<ReadAccess, DbError> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let mut extensions = vec!["broadcast"];
            if presence {
                extensions.push("presence");
            }
            let probes = tx
                .query(
                    "INSERT INTO realtime.messages (topic, extension, private)
                     SELECT $1, e, true FROM unnest($2::text[]) AS e RETURNING id::text",
                    &[&topic, &extensions],
                )
                .await?;
            let ids: Vec<String> = probes.iter().map(|r| r.get(0)).collect();
            if let Err(e) = set_user_context(&tx, topic, claims).await {
                return if is_denial(&e) { Ok(ReadAccess::default()) } else { Err(e.into()) };
            }
            let visible = match tx
                .query(
                    "SELECT extension FROM realtime.messages WHERE id::text = ANY($1) AND topic = $2",
                    &[&ids, &topic],
                )
                .await
            {
                Ok(rows) => rows,
                Err(e) if is_denial(&e) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let mut access = ReadAccess::default();
            for row in visible {
                match row.get::<_, &str>(0) {
                    "broadcast" => access.broadcast = true,
                    "presence" => access.presence = true,
                    _ => {}
                }
            }
            tx.rollback().await?;
            Ok(access)
        })
        .await
    }

    /// The write check: the user's own insert of a row for the topic, rolled back.
    pub(crate) async fn can_write(
        &self,
        topic: &str,
        claims: &Claims,
        extension: Extension,
    ) -> Result<bool, DbError> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            if let Err(e) = set_user_context(&tx, topic, claims).await {
                return if is_denial(&e) { Ok(false) } else { Err(e.into()) };
            }
            let allowed = match tx
                .execute(
                    "INSERT INTO realtime.messages (topic, extension, private) VALUES ($1, $2, true)",
                    &[&topic, &extension.as_str()],
                )
                .await
            {
                Ok(_) => true,
                Err(e) if is_denial(&e) => false,
                Err(e) => return Err(e.into()),
            };
            tx.rollback().await?;
            Ok(allowed)
        })
        .await
    }
}
