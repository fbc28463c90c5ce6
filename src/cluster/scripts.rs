//! The Lua scripts that make the cluster's multi-key steps atomic in Redis: joining with a
//! lease, renewing it, forgetting an ended connection, and claiming a dead run's connections.
//! Keys are built inside the reaping script from the prefix, so the cluster needs one Redis
//! (not Redis Cluster).

use std::sync::LazyLock;

use redis::Script;

/// Join: note the name's previous run, take the lease, enter the run in the runs hash, name
/// it the node's latest run, write the first heartbeat, and settle the data set's epoch.
/// KEYS: lease, runs, name, nodes, epoch. ARGV: run, node, lease_ms, heartbeat, new epoch.
/// Returns {previous run or false, epoch}.
pub(crate) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local prev = redis.call('GET', KEYS[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('SET', KEYS[5], ARGV[5], 'NX')
return {prev, redis.call('GET', KEYS[5])}
",
    )
});

/// Renew: -1 when the data set's epoch changed (Redis lost its data: join again), 0 when the
/// run was reaped (its connections' notices were sent by a survivor), else renew the lease and
/// write the heartbeat and answer 1.
/// KEYS: lease, runs, nodes, epoch. ARGV: run, node, lease_ms, heartbeat, epoch.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[4]) ~= ARGV[5] then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
",
    )
});

/// Forget an ended connection: its directory entry if it still names this session, and its
/// live entry if that is this session's.
/// KEYS: conn:{id}, live:{run}. ARGV: run:serial, id, serial.
/// Sent as EVAL in pipelines (a disconnect storm is forgotten in a few round trips).
pub(crate) const FORGET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
local v = redis.call('HGET', KEYS[2], ARGV[2])
if v and string.sub(v, 3) == ARGV[3] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
";

/// Reap: claim every run without a lease (or, with ARGV[3], that one run whatever its lease),
/// other than ARGV[2]. Each claimed run leaves the runs and heartbeat hashes and loses its
/// live hash, in one step, so exactly one node claims it. For each of its connections whose
/// directory entry still names that session (or is gone), the entry is removed and, when it
/// is announced, (run, id, serial) is returned for its notice; an id now held by another
/// session (it reconnected elsewhere) is skipped. The notices a claimed run still owed (from
/// runs it had reaped itself) are returned too, with the run and serial they came from.
/// Every notice returned is owed by this run (`owed:{ARGV[2]}`) until the reaper settles it,
/// so that, if the reaper dies first, whoever reaps it sends them.
/// ARGV: prefix, this run, forced run or ''. Returns a flat list run, id, serial, ... and
/// the claimed runs at the end as 'run:' entries with id '' and serial ''.
pub(crate) static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = ARGV[1]
local mine_owed = p .. ':owed:' .. ARGV[2]
local out = {}
local function owe(run, id, serial)
  redis.call('HSET', mine_owed, run .. ' ' .. serial, id)
  table.insert(out, run)
  table.insert(out, id)
  table.insert(out, serial)
end
local runs = redis.call('HGETALL', p .. ':runs')
for i = 1, #runs, 2 do
  local run = runs[i]
  local dead
  if ARGV[3] ~= '' then
    dead = (run == ARGV[3])
  else
    dead = run ~= ARGV[2] and redis.call('EXISTS', p .. ':lease:' .. run) == 0
  end
  if dead then
    redis.call('HDEL', p .. ':runs', run)
    redis.call('HDEL', p .. ':nodes', run)
    redis.call('DEL', p .. ':lease:' .. run)
    local live = redis.call('HGETALL', p .. ':live:' .. run)
    redis.call('DEL', p .. ':live:' .. run)
    for j = 1, #live, 2 do
      local id, v = live[j], live[j + 1]
      local serial = string.sub(v, 3)
      local key = p .. ':conn:' .. id
      local owner = redis.call('GET', key)
      local mine = (owner == run .. ':' .. serial)
      if mine then redis.call('DEL', key) end
      if (mine or not owner) and string.sub(v, 1, 1) == 'n' then
        owe(run, id, serial)
      end
    end
    local owed = redis.call('HGETALL', p .. ':owed:' .. run)
    redis.call('DEL', p .. ':owed:' .. run)
    for j = 1, #owed, 2 do
      local origin, serial = string.match(owed[j], '^(%S+) (%S+)$')
      if origin then owe(origin, owed[j + 1], serial) end
    end
    table.insert(out, run)
    table.insert(out, '')
    table.insert(out, '')
  end
end
return out
",
    )
});
