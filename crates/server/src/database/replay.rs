//! `broadcast.replay`: stored messages of a private topic since a time (PROTOCOL.md §7.5).

use bytes::Bytes;

use super::{Database, DbError};

/// One stored broadcast.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    pub(crate) id: String,
    pub(crate) event: String,
    /// JSON text of the payload, or `None` for binary rows.
    pub(crate) json: Option<String>,
    pub(crate) binary: Option<Bytes>,
}

impl Database {
    /// Up to `limit` (1..=25) most recent private broadcasts of `topic` since `since_ms`,
    /// oldest first.
    pub(crate) async fn replay(
        &self,
        topic: &str,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, DbError> {
        let client = self.client().await?;
        let has_binary = client
            .query_opt(
                "SELECT 1 FROM pg_attribute WHERE attrelid = 'realtime.messages'::regclass AND attname = 'binary_payload' AND NOT attisdropped",
                &[],
            )
            .await?
            .is_some();
        let binary_col = if has_binary {
            "binary_payload"
        } else {
            "NULL::bytea"
        };
        let sql = format!(
            "SELECT id::text, coalesce(event, ''), payload::text, {binary_col} FROM realtime.messages
              WHERE topic = $1 AND private IS TRUE AND extension = 'broadcast'
                AND inserted_at >= to_timestamp($2::double precision / 1000)::timestamp
              ORDER BY inserted_at DESC LIMIT $3"
        );
        let rows = client
            .query(
                &sql,
                &[&topic, &(since_ms as f64), &i64::from(limit.clamp(1, 25))],
            )
            .await?;
        let mut out: Vec<StoredMessage> = rows
            .iter()
            .map(|r| StoredMessage {
                id: r.get(0),
                event: r.get(1),
                json: r.get(2),
                binary: r.get::<_, Option<Vec<u8>>>(3).map(Bytes::from),
            })
            .collect();
        out.reverse();
        Ok(out)
    }
}
