-- The node registry: a node announces itself (with its figures), or every live node is read.
-- KEYS: 1 live set (node id -> expires, ms)
-- ARGV: 1 op ('announce', 'list', 'ids', 'leave'), 2 now (ms), 3 figures key prefix,
--       announce: 4 node id, 5 figures (JSON), 6 ttl (ms); leave: 4 node id
-- Returns the figures of every live node ('list'), their ids ('ids'), else {}.
local live, op, now, prefix = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
for _, id in ipairs(redis.call('ZRANGEBYSCORE', live, '-inf', now)) do
  redis.call('ZREM', live, id)
  redis.call('DEL', prefix .. id)
end
if op == 'announce' then
  local ttl = tonumber(ARGV[6])
  redis.call('ZADD', live, now + ttl, ARGV[4])
  redis.call('SET', prefix .. ARGV[4], ARGV[5], 'PX', ttl)
  return {}
elseif op == 'ids' then
  return redis.call('ZRANGE', live, 0, -1)
elseif op == 'leave' then
  redis.call('ZREM', live, ARGV[4])
  redis.call('DEL', prefix .. ARGV[4])
  return {}
end
local figures = {}
for _, id in ipairs(redis.call('ZRANGE', live, 0, -1)) do
  local f = redis.call('GET', prefix .. id)
  if f then table.insert(figures, f) end
end
return figures
