//! The Lua scripts the cluster runs in Redis. Each is atomic there, which is the point: a
//! message's history entry, offset and pub/sub publish happen in one call (as Centrifugo's
//! broker does), so the offset order is the delivery order and a node that sees offset N+2
//! after N knows it missed N+1; a presence change and its event also happen in one call.

use std::sync::LazyLock;

use redis::Script;

/// Publish one envelope on a topic.
///
/// KEYS: stream, meta, presence hash, presence expiry set.
/// ARGV: channel, envelope, history size, history ttl (s), meta ttl (s), epoch to use if the
/// topic has none, presence op (`-`, `join`, `leave`, `expire`), presence field, expiry
/// member, expire-at / now (ms), node id, the node's sequence number of a broadcast (0: none).
///
/// A broadcast whose sequence number is not above the last one the topic took from that node
/// is one sent again after a batch failed half-way: it is skipped (`{0, "dup"}`), so other
/// nodes get it once. The numbers live in the topic's meta hash (a field per publishing node,
/// gone with the meta).
///
/// `expire` is a sweeper's leave: it happens only if the lease is still expired (it was not
/// refreshed meanwhile, nor already swept by another node). Returns `{offset, epoch}`, or
/// `{0, ""}` when an `expire` found nothing to do.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local op = ARGV[7]
if op == 'expire' then
  local score = redis.call('zscore', KEYS[4], ARGV[9])
  if (not score) or tonumber(score) > tonumber(ARGV[10]) then
    return {0, ''}
  end
end
local seq = tonumber(ARGV[12])
if seq > 0 then
  local field = 'w:' .. ARGV[11]
  local last = tonumber(redis.call('hget', KEYS[2], field) or '0')
  if last >= seq then
    return {0, 'dup'}
  end
  redis.call('hset', KEYS[2], field, ARGV[12])
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[2], 'e', epoch)
end
local offset = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('expire', KEYS[2], ARGV[5])
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[3], offset, 'd', ARGV[2])
redis.call('expire', KEYS[1], ARGV[4])
if op == 'join' then
  redis.call('hset', KEYS[3], ARGV[8], ARGV[2])
  redis.call('zadd', KEYS[4], ARGV[10], ARGV[9])
elseif op == 'leave' or op == 'expire' then
  redis.call('hdel', KEYS[3], ARGV[8])
  redis.call('zrem', KEYS[4], ARGV[9])
end
redis.call('publish', ARGV[1], offset .. ':' .. epoch .. ':' .. ARGV[2])
return {offset, epoch}
"#,
    )
});

/// The live presence of a topic: the join envelopes whose lease has not expired.
///
/// KEYS: presence hash, presence expiry set. ARGV: now (ms), topic id.
pub(crate) static PRESENCE_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local all = redis.call('hgetall', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local score = redis.call('zscore', KEYS[2], all[i] .. '\n' .. ARGV[2])
  if score and tonumber(score) > tonumber(ARGV[1]) then
    table.insert(out, all[i + 1])
  end
end
return out
"#,
    )
});

/// A topic's position and what its history holds after an offset.
///
/// KEYS: stream, meta. ARGV: first offset wanted, at most this many entries.
/// Returns `{epoch or false, top offset or false, entries}` (entries as XRANGE gives them).
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('hmget', KEYS[2], 'e', 's')
local entries = redis.call('xrange', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
return {m[1], m[2], entries}
"#,
    )
});

/// Renew this node's leases. KEYS: expiry set. ARGV: expire-at (ms), members...
/// Returns the members that were no longer there (swept while this node could not renew).
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local lost = {}
for i = 2, #ARGV do
  if redis.call('zadd', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i]) == 0 then
    table.insert(lost, ARGV[i])
  end
end
return lost
"#,
    )
});

/// Admit one more concurrent user if the cluster is under the limit.
///
/// KEYS: users hash (node -> its users), node heartbeats. ARGV: this node, limit, oldest
/// heartbeat (ms) of a live node. Counts of nodes that stopped beating are dropped, so a dead
/// node's users stop counting once its heartbeat is stale. Returns 1 (admitted, counted) or 0.
pub(crate) static USERS_ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local all = redis.call('hgetall', KEYS[1])
local sum = 0
for i = 1, #all, 2 do
  local seen = redis.call('zscore', KEYS[2], all[i])
  if all[i] == ARGV[1] or (seen and tonumber(seen) >= tonumber(ARGV[3])) then
    sum = sum + tonumber(all[i + 1])
  else
    redis.call('hdel', KEYS[1], all[i])
  end
end
if sum >= tonumber(ARGV[2]) then
  return 0
end
redis.call('hincrby', KEYS[1], ARGV[1], 1)
return 1
"#,
    )
});

/// Add this node's counts to the rate counters' current buckets and answer each counter's
/// window total.
///
/// KEYS: per counter, its `buckets` bucket keys, current first. ARGV: one delta per counter,
/// then buckets per window, then a bucket's time to live (ms). Returns the totals in order.
pub(crate) static RATES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local buckets = tonumber(ARGV[#ARGV - 1])
local ttl = ARGV[#ARGV]
local out = {}
for c = 1, #ARGV - 2 do
  local base = (c - 1) * buckets
  local delta = tonumber(ARGV[c])
  if delta > 0 then
    redis.call('incrby', KEYS[base + 1], delta)
    redis.call('pexpire', KEYS[base + 1], ttl)
  end
  local sum = 0
  for _, v in ipairs(redis.call('mget', unpack(KEYS, base + 1, base + buckets))) do
    if v then sum = sum + tonumber(v) end
  end
  out[c] = sum
end
return out
"#,
    )
});

/// Every script, to load after each (re)connect: a restarted Redis has none.
pub(crate) fn all() -> [&'static Script; 5] {
    [&PUBLISH, &PRESENCE_GET, &HISTORY, &RENEW, &USERS_ADMIT]
}
