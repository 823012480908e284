--[[ lib/bounds: the most a total or balance may hold: a user's total EXP, and an XP balance
with what is held (counters/redis/codes.py MAX_TOTAL; tests/redis/test_lua_contract.py checks
the two agree).

Lua numbers are doubles, exact for integers up to 2^53 (about 9.007e15). Every amount a script
adds is at most 10^12 (request schemas, import lines and rules are bounded so), so a sum
compared with MAX before it is written is exact, and a change that would pass MAX is refused
with nothing written (reply code `total_limit`). ]]
local Bounds = {MAX = 1000000000000000}  -- 10^15
