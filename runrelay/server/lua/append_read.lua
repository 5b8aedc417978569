-- Append a batch as append_events.lua does, then return the whole log: the end of a worker's
-- attempt, whose last events and the read of the log it archives used to be two round trips.
-- KEYS, ARGV  append_events.lua's
-- Returns the log's entries as XRANGE returns them, or append_events.lua's error.
local appended = append_events(KEYS, ARGV)
if type(appended) == 'table' and appended.err then
  return appended
end
return redis.call('XRANGE', KEYS[1], '-', '+')
