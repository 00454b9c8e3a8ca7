//! A node's postgres_changes inbox: the stream the slot reader writes this node's deliveries
//! to, and the loop that reads it. Nothing lost here goes unsaid.
//!
//! **Numbered entries.** The inbox has a meta hash (`<inbox>:meta`: `e` epoch, `s` last
//! number). The writer adds each delivery under the next number as its stream id (`<n>-0`,
//! in one script with the number's increment), so the reader knows the numbers are
//! consecutive. Two things can take entries it has not read yet:
//!
//! - **Trimming.** The inbox keeps about `--cluster-inbox-max` entries (`MAXLEN ~`): a node
//!   stalled past that loses the oldest. The reader sees the next number it gets jump past
//!   the one it expected.
//! - **Redis losing its data** (a restart without persistence, a failover to an empty
//!   replica). The epoch is written when the inbox is first used and checked by the reader on
//!   every (re)connect and every second (which also keeps the meta alive while the inbox is
//!   idle): a different or missing epoch means what the inbox held is gone, and the numbers
//!   start again, so the reader reads the new inbox from its start.
//!
//! Either way the entries that were lost cannot be read any more, not even to say which
//! channels they were for, so every postgres_changes channel of this node gets `phx_error`
//! and rejoins (its client subscribes again), as a topic does whose broadcast history no
//! longer holds a gap. That costs a rejoin to channels that may have lost nothing; it never
//! leaves one with a silent gap.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Script, Value};
use tokio_util::sync::CancellationToken;

use super::changes::{self, Changes};

/// An inbox and its meta expire this long after their last use (the node died).
pub(crate) const INBOX_TTL_S: u64 = 120;
/// The reader checks the epoch (and keeps the meta alive) this often.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const READ_COUNT: usize = 2_000;

/// Append deliveries to an inbox under consecutive numbers.
///
/// KEYS: inbox stream, inbox meta. ARGV: max length, ttl (s), epoch to use if the inbox has
/// none, then the entries. Returns the last number.
pub(crate) static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('hget', KEYS[2], 'e') then
  -- a new epoch is a new inbox: numbers start again, so no older entry may stay
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', ARGV[3])
end
-- numbers never go below the stream's top (an evicted meta, entries of an older version):
-- XADD would refuse them, and the reader sees the jump as a loss, which it reports
local top = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', 1)[1]
if top then
  local last = string.match(top[1], '^(%d+)')
  if last and tonumber(last) > tonumber(redis.call('hget', KEYS[2], 's') or '0') then
    redis.call('hset', KEYS[2], 's', last)
  end
end
local n = 0
for i = 4, #ARGV do
  n = redis.call('hincrby', KEYS[2], 's', 1)
  redis.call('xadd', KEYS[1], 'MAXLEN', '~', ARGV[1], n .. '-0', 'd', ARGV[i])
end
redis.call('expire', KEYS[1], ARGV[2])
redis.call('expire', KEYS[2], ARGV[2])
return n
",
    )
});

/// The inbox's epoch, set to `ARGV[1]` if it has none; keeps the meta for `ARGV[2]` seconds.
/// KEYS: inbox meta.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = redis.call('hget', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('hset', KEYS[1], 'e', e)
end
redis.call('expire', KEYS[1], ARGV[2])
return e
",
    )
});

pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The meta hash of the inbox `inbox`.
pub(crate) fn meta_key(inbox: &str) -> String {
    format!("{inbox}:meta")
}

/// Where the reader is in the inbox.
#[derive(Debug, Default)]
struct Cursor {
    epoch: Option<String>,
    /// The last number read (0: none yet in this epoch).
    seq: u64,
}

impl Cursor {
    fn last_id(&self) -> String {
        format!("{}-0", self.seq)
    }

    /// The inbox's epoch is `epoch`: `true` if it changed since it was last seen (what the
    /// inbox held is gone); the cursor then starts the new inbox from its beginning.
    fn epoch_is(&mut self, epoch: String) -> bool {
        match &self.epoch {
            Some(known) if *known == epoch => false,
            Some(_) => {
                self.epoch = Some(epoch);
                self.seq = 0;
                true
            }
            None => {
                self.epoch = Some(epoch);
                false
            }
        }
    }

    /// Entry `n` was read: how many entries before it were lost (trimmed unread).
    fn read(&mut self, n: u64) -> u64 {
        let lost = n.saturating_sub(self.seq + 1);
        self.seq = self.seq.max(n);
        lost
    }
}

/// Reads this node's inbox and hands each delivery to its local channel.
pub(crate) async fn run(changes: Arc<Changes>, shutdown: CancellationToken) {
    let slot = changes.slot.clone();
    let key = slot.inbox_key(&slot.node);
    let meta = meta_key(&key);
    let mut cursor = Cursor::default();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut last_check = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if conn.is_none() {
            let Ok(mut c) = slot.connect(Duration::from_secs(5)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if let Err(e) = check(&changes, &meta, &mut cursor, &mut c).await {
                tracing::debug!(error = %e, "cluster: postgres_changes inbox check failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            last_check = Instant::now();
            conn = Some(c);
        }
        let Some(c) = conn.as_mut() else { continue };
        if last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            if let Err(e) = check(&changes, &meta, &mut cursor, c).await {
                tracing::debug!(error = %e, "cluster: postgres_changes inbox check failed");
                conn = None;
                continue;
            }
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(CHECK_EVERY.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(cursor.last_id());
        let read = tokio::select! {
            r = cmd.query_async::<Value>(c) => r,
            () = shutdown.cancelled() => return,
        };
        let reply = match read {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: postgres_changes inbox read failed");
                conn = None;
                continue;
            }
        };
        for (id, entry) in changes::stream_entries(reply) {
            let Some(n) = id.split('-').next().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let lost = cursor.read(n);
            if lost > 0 {
                let stats = &changes.slot.stats;
                stats.inbox_lost.fetch_add(lost, Ordering::Relaxed);
                changes.report_lost(&format!(
                    "{lost} postgres_changes deliveries trimmed from this node's inbox before it read them (it fell more than --cluster-inbox-max behind)"
                ));
            }
            changes.slot.stats.received.fetch_add(1, Ordering::Relaxed);
            changes::handle(&changes, &entry);
        }
    }
}

/// Compare the inbox's epoch with the one the cursor knows; report a change.
async fn check(
    changes: &Changes,
    meta: &str,
    cursor: &mut Cursor,
    conn: &mut MultiplexedConnection,
) -> RedisResult<()> {
    let epoch: String = CHECK
        .key(meta)
        .arg(new_epoch())
        .arg(INBOX_TTL_S)
        .invoke_async(conn)
        .await?;
    if cursor.epoch_is(epoch) {
        changes
            .slot
            .stats
            .inbox_resets
            .fetch_add(1, Ordering::Relaxed);
        changes.report_lost(
            "Redis lost this node's postgres_changes inbox (restarted without its data?)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_tells_trimmed_entries_and_a_new_epoch() {
        let mut c = Cursor::default();
        assert!(!c.epoch_is("a".into()), "the first epoch seen is no news");
        assert_eq!(c.read(1), 0);
        assert_eq!(c.read(2), 0);
        assert_eq!(c.read(7), 4, "3..=6 were trimmed");
        assert_eq!(c.last_id(), "7-0");
        assert!(!c.epoch_is("a".into()));
        assert!(c.epoch_is("b".into()), "Redis lost the inbox");
        assert_eq!(c.last_id(), "0-0", "the new inbox is read from its start");
        assert_eq!(c.read(1), 0);
    }
}
