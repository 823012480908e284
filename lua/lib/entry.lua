--[[ lib/entry: stream entries in the compact format "v1" (persistence/events.py, COMPACT).

One field per entry, named "v1", its value the kind and then the kind's fields in the order of
persistence/events.py's LAYOUTS, separated by the unit separator (\31). No field can hold it:
ids and names are validated, free text refuses control characters at the API, and JSON (xp_state,
a record's value) escapes them; an entry that splits into the wrong count is quarantined. Why:
Redis encodes, and the flusher's reader builds, one string per field name and value (31 per
entry with one field per name, 3 with this); the flusher splits the value in C.

Entry.add(stream, fields): XADD one entry; `fields` is {kind, field, ...} in layout order,
strings or numbers. A number is written as its digits (Lua's tostring would write 1e+14 and
up in exponent form: those go through %.17g, exact to 2^53, as Redis writes a number argument).
]]
local Entry = {}

function Entry.add(stream, fields)
  for i = 2, #fields do
    local v = fields[i]
    if type(v) == 'number' and (v >= 1e14 or v <= -1e14) then
      fields[i] = string.format('%.17g', v)
    end
  end
  return redis.call('XADD', stream, '*', 'v1', table.concat(fields, '\31'))
end
