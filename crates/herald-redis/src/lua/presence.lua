-- A channel's presence: joins (or refreshes) members, removes one, or reads it. Entries whose node
-- stopped refreshing them are swept first.
-- KEYS: 1 clients (client -> "joined_at:user"), 2 users (user -> connections),
--       3 expiry (client -> when its entry expires, ms)
-- ARGV: 1 op ('join', 'refresh', 'leave', 'read', 'counts'), 2 now (ms), 3 entry ttl (ms), then
--       join and refresh: client, user, joined_at, ... (one or more); leave: client
-- A refresh is a join that leaves the sweep to the next join or read: it runs for every entry
-- of every node every third of the ttl, so it does no more than it must.
-- Returns {changed, users, connections[, {client, member, ...}]}.
local clients, users, expiry = KEYS[1], KEYS[2], KEYS[3]
local op, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local function drop(client)
  local member = redis.call('HGET', clients, client)
  redis.call('ZREM', expiry, client)
  if not member then return 0 end
  redis.call('HDEL', clients, client)
  local user = string.sub(member, string.find(member, ':', 1, true) + 1)
  if redis.call('HINCRBY', users, user, -1) <= 0 then redis.call('HDEL', users, user) end
  return 1
end

if op ~= 'refresh' then
  for _, client in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do drop(client) end
end

local changed = 0
if op == 'join' or op == 'refresh' then
  for i = 4, #ARGV, 3 do
    local client, user, joined = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call('HSETNX', clients, client, joined .. ':' .. user) == 1 then
      redis.call('HINCRBY', users, user, 1)
      changed = changed + 1
    end
    redis.call('ZADD', expiry, now + ttl, client)
  end
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, 2 * ttl) end
elseif op == 'leave' then
  changed = drop(ARGV[4])
end
local counts = {changed, redis.call('HLEN', users), redis.call('HLEN', clients)}
if op == 'read' then table.insert(counts, redis.call('HGETALL', clients)) end
return counts
