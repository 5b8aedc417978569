-- Append a batch as append_events.lua does, then return the whole log as the run's archive
-- keeps it: the end of a worker's attempt, whose last events and the read of the log it
-- archives used to be two round trips.
-- KEYS, ARGV  append_events.lua's
-- Returns {the last event's seq (0: none), the log as RunLog.events holds it: one line per
-- event, '<seq> <event JSON>', in seq order}, or append_events.lua's error. Built here, the
-- text costs the worker one string, not an entry (an id and a field list) per event.
local appended = append_events(KEYS, ARGV)
if type(appended) == 'table' and appended.err then
  return appended
end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local lines = {}
for i, entry in ipairs(entries) do
  local fields, data = entry[2], ''
  for j = 1, #fields, 2 do
    if fields[j] == 'd' then
      data = fields[j + 1]
    end
  end
  lines[i] = string.sub(entry[1], 3) .. ' ' .. data -- the id is 0-<seq>
end
local last = 0
if #entries > 0 then
  last = tonumber(string.sub(entries[#entries][1], 3))
end
return {last, table.concat(lines, '\n')}
