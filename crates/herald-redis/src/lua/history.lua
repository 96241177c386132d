-- Reads a channel's history, creating its stream if it has none.
-- KEYS: 1 stream hash, 2 history stream
-- ARGV: 1 since offset (-1: none), 2 since epoch ('*': whatever the stream's is), 3 limit (-1:
--       none), 4 history ttl (ms; 0: keep all), 5 now (ms), 6 epoch for a new stream, 7 stream
--       ttl (ms), 8 '1' when `since` is what a node saw of this stream itself: a stream behind it
--       lost publications (a Redis restart that did not keep them all), so it takes a new epoch
--       and nobody can recover across the loss
-- Returns {epoch, last offset, complete (0/1), {offset, ts, body, ...}}, oldest first.
local stream, history = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', stream, 'e')
local top = 0
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', stream, 'e', epoch, 'o', 0)
  redis.call('DEL', history)
else
  top = tonumber(redis.call('HGET', stream, 'o'))
end
redis.call('PEXPIRE', stream, ARGV[7])
local since, limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cutoff = -1
if ttl > 0 then cutoff = tonumber(ARGV[5]) - ttl end
local out = {}
local function add(entry)
  table.insert(out, string.sub(entry[1], 1, -3))
  table.insert(out, entry[2][2])
  table.insert(out, entry[2][4])
end
if since >= 0 then
  if ARGV[2] ~= epoch and ARGV[2] ~= '*' then return {epoch, top, 0, out} end
  if since > top then
    if ARGV[8] == '1' and ARGV[2] == epoch then
      epoch = ARGV[6]
      redis.call('HSET', stream, 'e', epoch)
    end
    return {epoch, top, 0, out}
  end
  if since == top or limit == 0 then return {epoch, top, 1, out} end
  local entries
  if limit > 0 then
    entries = redis.call('XRANGE', history, (since + 1) .. '-0', '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', history, (since + 1) .. '-0', '+')
  end
  local first = entries[1]
  if not first or first[1] ~= (since + 1) .. '-0' or tonumber(first[2][2]) <= cutoff then
    return {epoch, top, 0, out}
  end
  for _, entry in ipairs(entries) do add(entry) end
  return {epoch, top, 1, out}
end
if limit == 0 then return {epoch, top, 1, out} end
local entries
if limit > 0 then
  entries = redis.call('XREVRANGE', history, '+', '-', 'COUNT', limit)
else
  entries = redis.call('XREVRANGE', history, '+', '-')
end
for i = #entries, 1, -1 do
  if tonumber(entries[i][2][2]) > cutoff then add(entries[i]) end
end
return {epoch, top, 1, out}
