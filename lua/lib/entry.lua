--[[ lib/entry: stream entries in the compact format "v1" (persistence/events.py, COMPACT).

One field per entry, named "v1", its value the kind and then the kind's fields in the order of
persistence/events.py's LAYOUTS, separated by the unit separator (\31). No field can hold it:
ids and names are validated, free text refuses control characters at the API, and JSON (xp_state,
a record's value) escapes them; an entry that splits into the wrong count is quarantined. Why:
Redis encodes, and the flusher's reader builds, one string per field name and value (31 per
entry with one field per name, 3 with this); the flusher splits the value in C.

Entry.add(stream, fields): XADD one entry; `fields` is {kind, field, ...} in layout order,
strings or numbers. A number is written as its digits: Lua's tostring writes one of 15 digits or
more in exponent form (1e+14), so a payload holding "e+" is joined again with its numbers
through %.17g (exact to 2^53, as Redis writes a number argument). No name, id or number has a
"+" otherwise; free text may (then the slower join, the same result). Looping over the fields
every time instead cost ~0.6 us an entry in Redis, more than the format saves in XADD itself.

Entry.add_joined(stream, payload): XADD one entry whose payload the caller joined already (the
hot scripts: lib/award.lua, XP.emit): its fields separated by \31 and every number written by
string.format('%d') (integers: the same digits as %.17g, never an exponent). Neither the table
nor table.concat's number conversions (%.14g, ~2,000 instructions a number in Redis 7.0) are
paid (issue #15: `python -m bench.instructions debit --redis`).

Entry.int(n): an integer's digits, as string.format('%d', n) writes them (never "-0"); those of
small integers (|n| < 1024: levels, counts, costs, rewards, a day's EXP, most seqs) kept once
formatted. A Redis Function's library runs once per load, so they are formatted once per load
and then cost a table lookup instead of a format (~1,700 instructions each); under EVALSHA
(Redis 6.2) once per call, as before.
]]
local Entry = {}
local SMALL = {} -- n -> its digits, for -1024 < n < 1024 (bounded: at most 2,047 strings)

function Entry.int(n)
  if n > -1024 and n < 1024 then -- false for NaN: never a table key
    local text = SMALL[n]
    if not text then
      text = string.format('%d', n)
      SMALL[n] = text
    end
    return text
  end
  return string.format('%d', n)
end

function Entry.add(stream, fields)
  local payload = table.concat(fields, '\31')
  if string.find(payload, 'e+', 1, true) then
    for i = 2, #fields do
      if type(fields[i]) == 'number' then fields[i] = string.format('%.17g', fields[i]) end
    end
    payload = table.concat(fields, '\31')
  end
  return redis.call('XADD', stream, '*', 'v1', payload)
end

function Entry.add_joined(stream, payload)
  return redis.call('XADD', stream, '*', 'v1', payload)
end
