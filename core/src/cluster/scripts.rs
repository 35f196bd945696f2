//! The store's server-side scripts. Each runs atomically in Redis and reads
//! Redis's own clock (`TIME`), so the windows every node counts against are
//! the store's, whatever the nodes' clocks say.
//!
//! One hash per scope, `<prefix>{<scope>}`, holds the scope's current
//! windows: `m`/`mr`/`mt` (minute start, requests, tokens), `d`/`dt` (day
//! start, tokens) and `mo`/`ms` (calendar month start, spend in
//! micro-dollars). A field of an older window reads as zero and is
//! overwritten, so nothing has to sweep old windows; the hash expires 40
//! days after its last write. A limit of -1 means none.

/// Shared by the scripts: the current windows by `TIME`, and the scope's
/// figures in them.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = now - now % 60000
local d = now - now % 86400000
local z = math.floor(now / 86400000) + 719468
local era = math.floor(z / 146097)
local doe = z - era * 146097
local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
local mp = math.floor((5 * doy + 2) / 153)
local dom = doy - math.floor((153 * mp + 2) / 5) + 1
local mo = d - (dom - 1) * 86400000
local h = KEYS[1]
local f = redis.call('HMGET', h, 'm', 'mr', 'mt', 'd', 'dt', 'mo', 'ms')
local mr, mt, dt, ms = 0, 0, 0, 0
if tonumber(f[1]) == m then mr = tonumber(f[2]) or 0; mt = tonumber(f[3]) or 0 end
if tonumber(f[4]) == d then dt = tonumber(f[5]) or 0 end
if tonumber(f[6]) == mo then ms = tonumber(f[7]) or 0 end
local function save()
  redis.call('HSET', h, 'm', m, 'mr', mr, 'mt', mt, 'd', d, 'dt', dt, 'mo', mo, 'ms', ms)
  redis.call('PEXPIRE', h, 3456000000)
end
local function left(limit, used)
  if limit < 0 then return -1 end
  if used >= limit then return 0 end
  return limit - used
end
local function cap(want, l)
  if l >= 0 and l < want then return l end
  return want
end
"#;

/// ARGV: requests per minute, tokens per minute, tokens per day (-1:
/// none), wanted requests, wanted tokens. Grants what the windows have
/// left, up to the want. Returns `{requests, tokens, now, minute start,
/// month spend, requests left, tokens left}` (left after the grant, -1:
/// unlimited).
pub const GRANT: &str = r#"
local rpm, tpm, tpd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wr, wt = tonumber(ARGV[4]), tonumber(ARGV[5])
local gr = cap(wr, left(rpm, mr))
local lt = left(tpm, mt)
local ltd = left(tpd, dt)
if lt < 0 or (ltd >= 0 and ltd < lt) then lt = ltd end
local gt = cap(wt, lt)
mr = mr + gr
if tpm >= 0 then mt = mt + gt end
if tpd >= 0 then dt = dt + gt end
save()
local lt_after = left(tpm, mt)
local ltd_after = left(tpd, dt)
if lt_after < 0 or (ltd_after >= 0 and ltd_after < lt_after) then lt_after = ltd_after end
return {gr, gt, now, m, ms, left(rpm, mr), lt_after}
"#;

/// ARGV: the minute start and day start the quota was granted in, unused
/// requests, unused tokens. What is still current goes back.
pub const RELEASE: &str = r#"
local wm, wd = tonumber(ARGV[1]), tonumber(ARGV[2])
local r, tk = tonumber(ARGV[3]), tonumber(ARGV[4])
if wm == m then
  mr = math.max(0, mr - r)
  mt = math.max(0, mt - tk)
end
if wd == d then dt = math.max(0, dt - tk) end
save()
return 1
"#;

/// ARGV: tokens used beyond what was granted, spend (micro-dollars).
/// Returns the month's spend.
pub const USAGE: &str = r#"
local extra, spend = tonumber(ARGV[1]), tonumber(ARGV[2])
mt = mt + extra
dt = dt + extra
ms = ms + spend
save()
return ms
"#;

/// ARGV: minute start, requests, tokens, day start, day tokens, month
/// start, spend: one node's share of windows the store lost (a restart
/// without persistence) or never saw (used while it was unreachable), added
/// where the window is still current.
pub const RESTORE: &str = r#"
if tonumber(ARGV[1]) == m then
  mr = mr + tonumber(ARGV[2])
  mt = mt + tonumber(ARGV[3])
end
if tonumber(ARGV[4]) == d then dt = dt + tonumber(ARGV[5]) end
if tonumber(ARGV[6]) == mo then ms = ms + tonumber(ARGV[7]) end
save()
return 1
"#;

/// KEYS: the live-node set, this node's marker. ARGV: node name. Returns
/// `{now, live nodes, whether the marker was there}`: a missing marker
/// means the store lost what this node had counted in it.
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 5000)
redis.call('PEXPIRE', KEYS[1], 60000)
local had = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], '1', 'PX', 3456000000)
return {now, redis.call('ZCARD', KEYS[1]), had}
"#;

/// The script a window-counting call runs: the prelude, then its body.
pub fn with_prelude(body: &str) -> String {
    let mut s = String::with_capacity(PRELUDE.len() + body.len());
    s.push_str(PRELUDE);
    s.push_str(body);
    s
}
