-- Levels from EXP thresholds passed as a JSON array argument ("[0,100,300,...]").
local Levels = {}

-- A JSON array of numbers as a Lua table: cjson parses it in C, with no per-number garbage
-- (a gmatch loop over a CSV cost several microseconds a call).
function Levels.list(json)
  return cjson.decode(json)
end

-- The highest level whose threshold `exp` reaches.
function Levels.of(exp, thresholds)
  local level = 1
  for i = 1, #thresholds do
    if exp >= thresholds[i] then level = i end
  end
  return level
end
