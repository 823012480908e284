-- Levels from EXP thresholds passed as a CSV argument ("0,100,300,...").
local Levels = {}

function Levels.csv(text)
  local out = {}
  for n in string.gmatch(text, '[^,]+') do out[#out + 1] = tonumber(n) end
  return out
end

-- The highest level whose threshold `exp` reaches.
function Levels.of(exp, thresholds)
  local level = 1
  for i = 1, #thresholds do
    if exp >= thresholds[i] then level = i end
  end
  return level
end
