-- Publishes one publication to a channel's stream, atomically.
-- KEYS: 1 stream hash, 2 history stream, [3 idempotency key]
-- ARGV: 1 pub/sub subject, 2 publication body (JSON), 3 now (ms), 4 history size,
--       5 history ttl (ms), 6 epoch for a new stream, 7 stream ttl (ms),
--       8 idempotency window (ms), 9 PUBLISH or SPUBLISH
-- Returns {offset, epoch}.
local stream, history = KEYS[1], KEYS[2]
if #KEYS == 3 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1)}
  end
end
local now, size, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local epoch = redis.call('HGET', stream, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', stream, 'e', epoch, 'o', 0)
  redis.call('DEL', history)
end
local offset = redis.call('HINCRBY', stream, 'o', 1)
redis.call('PEXPIRE', stream, ARGV[7])
if size > 0 and ttl > 0 then
  redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 't', now, 'd', ARGV[2])
  local cutoff = now - ttl
  while true do
    local first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
    if #first == 0 or tonumber(first[1][2][2]) > cutoff then break end
    redis.call('XDEL', history, first[1][1])
  end
  redis.call('PEXPIRE', history, ttl)
end
if #KEYS == 3 then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', ARGV[8])
end
redis.call(ARGV[9], ARGV[1], 'p' .. offset .. ':' .. epoch .. ':' .. now .. ':' .. ARGV[2])
return {offset, epoch}
