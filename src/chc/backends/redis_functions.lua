#!lua name=chc
--[[
CHC store operations as Redis 7 functions (library ``chc``).

Every CHC operation is one call of ``chc_op``: the client-sequence dedup, the
per-flow ownership check, the clock-log check, the operation itself, the
clock-log record, the commit report and the callbacks happen in one atomic
server step.  ``chc/backends/redis.py`` loads this file with FUNCTION LOAD
REPLACE (plus the Lua bodies of custom operations registered at run time) and
holds it to the semantics of ``chc.core.store.StoreEngine``.

Keys (K = "chc:" .. rest, rest = vertex ":" object ":" msgpack(scope key)):
  K             the object: a string holding one msgpack value, or a Redis
                list of msgpack values (a list object: push/pop), or the
                string EMPTY (0xc1, never valid msgpack) for an empty list
                object (Redis deletes empty lists; the object must stay).
  "chcl" rest   hash: clock-log tag "clock:n" -> recorded result
  "chco" rest   string: owning instance of a per-flow object
  "chcw" rest   list: instances waiting to take the object, "inst client"
  "chcs" rest   set: subscribed (wire) client ids
  chcq          hash: wire client id -> highest applied seq
  chclz         sorted set: "clock:n K-of-log" scored by clock (pruning)
  chcc          list: commit reports "clock:xor_id"
  "chcd:" digest  a big default (msgpack), referenced by ops as 0xc1 .. digest
Notifications are published on "chc:n:" .. wire client id; a payload is
"U" or "O", a 4-byte big-endian key length, the key, then the tagged value
("U") or the new owner instance ("O").

Results are bulk strings tagged by their first byte: "V" .. msgpack value,
"L" .. msgpack array (the contents of a list object), "A" (get of an absent
object: the caller substitutes its default); nil = a retransmitted op that
was acknowledged without being applied (a retransmitted update whose tag is
still in the clock log gets its recorded result instead; no switch turns this
dedup off: ``--break no-dedup`` is the memory store's alone).  Errors are
"CHCOWN <owner>" (ownership) and "CHCERR <text>" (refused operation).

Numbers: Lua numbers are doubles, so incr/argmin_incr are exact for integers
up to 2^53 and refuse beyond; floats stay floats (msgpack float64).  The
msgpack codec here is our own: Redis' cmsgpack cannot read bin or ext values.
--]]

local EMPTY = '\193'
local NIL = '\192'
local R_NIL, R_TRUE, R_FALSE = 'V\192', 'V\195', 'V\194'
local TWO53 = 9007199254740992
local TWO32 = 4294967296
local CHUNK = 1000
-- (no aliases of string/math/table/redis functions: only redis.register_function exists at load time)

local CUSTOM = {}       -- custom operations: name -> function(op) -> Lua value
local VALUE_OPS = {}    -- value operations (chc.nf.value_op): name -> function(value, args) -> new, result

local function fail(text)
  error({err = 'CHCERR ' .. text})
end

local function derived(prefix, k)
  return prefix .. string.sub(k, 4)       -- "chc:rest" -> prefix .. ":rest"
end

-- -- msgpack ---------------------------------------------------------------------------------

local function be(s, i, w)
  local v = 0
  for j = i, i + w - 1 do v = v * 256 + string.byte(s, j) end
  return v
end

local INT_W = {[0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8, [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8}
local FIXEXT_W = {[0xd4] = 1, [0xd5] = 2, [0xd6] = 4, [0xd7] = 8, [0xd8] = 16}
local W124 = {1, 2, 4}

-- The value at pos: kind, a, p.  int/float/bool: a = value, p = next position;
-- nil: p = next; str/bin: a = length, p = first data byte; ext: a = length,
-- p = the type byte; arr/map: a = count, p = first element.
local function head(s, pos)
  local b = string.byte(s, pos)
  if b == nil then fail('truncated msgpack value') end
  if b <= 0x7f then return 'int', b, pos + 1 end
  if b >= 0xe0 then return 'int', b - 256, pos + 1 end
  if b <= 0x8f then return 'map', b - 0x80, pos + 1 end
  if b <= 0x9f then return 'arr', b - 0x90, pos + 1 end
  if b <= 0xbf then return 'str', b - 0xa0, pos + 1 end
  if b == 0xc0 then return 'nil', nil, pos + 1 end
  if b == 0xc2 then return 'bool', false, pos + 1 end
  if b == 0xc3 then return 'bool', true, pos + 1 end
  if b >= 0xc4 and b <= 0xc6 then
    local w = W124[b - 0xc3]
    return 'bin', be(s, pos + 1, w), pos + 1 + w
  end
  if b >= 0xc7 and b <= 0xc9 then
    local w = W124[b - 0xc6]
    return 'ext', be(s, pos + 1, w), pos + 1 + w
  end
  if b == 0xca then return 'float', (struct.unpack('>f', s, pos + 1)), pos + 5 end
  if b == 0xcb then return 'float', (struct.unpack('>d', s, pos + 1)), pos + 9 end
  local w = INT_W[b]
  if w then
    local v = be(s, pos + 1, w)
    if b >= 0xd0 and v >= 2 ^ (8 * w - 1) then v = v - 2 ^ (8 * w) end
    return 'int', v, pos + 1 + w
  end
  w = FIXEXT_W[b]
  if w then return 'ext', w, pos + 1 end
  if b >= 0xd9 and b <= 0xdb then
    w = W124[b - 0xd8]
    return 'str', be(s, pos + 1, w), pos + 1 + w
  end
  if b == 0xdc then return 'arr', be(s, pos + 1, 2), pos + 3 end
  if b == 0xdd then return 'arr', be(s, pos + 1, 4), pos + 5 end
  if b == 0xde then return 'map', be(s, pos + 1, 2), pos + 3 end
  if b == 0xdf then return 'map', be(s, pos + 1, 4), pos + 5 end
  fail('invalid msgpack value')
end

local function skip(s, pos)
  local kind, a, p = head(s, pos)
  if kind == 'str' or kind == 'bin' then return p + a end
  if kind == 'ext' then return p + 1 + a end
  if kind == 'arr' then
    for _ = 1, a do p = skip(s, p) end
    return p
  end
  if kind == 'map' then
    for _ = 1, 2 * a do p = skip(s, p) end
    return p
  end
  return p
end

-- msgpack -> Lua: str and bin -> string, ext -> its data, arrays -> {n = count, ...}.
local decode
decode = function(s, pos)
  local kind, a, p = head(s, pos)
  if kind == 'str' or kind == 'bin' then return string.sub(s, p, p + a - 1), p + a end
  if kind == 'ext' then return string.sub(s, p + 1, p + a), p + 1 + a end
  if kind == 'arr' then
    local t = {n = a}
    for i = 1, a do t[i], p = decode(s, p) end
    return t, p
  end
  if kind == 'map' then
    local t = {}
    for _ = 1, a do
      local k, v
      k, p = decode(s, p)
      v, p = decode(s, p)
      if k ~= nil then t[k] = v end
    end
    return t, p
  end
  return a, p
end

local function arr_header(n)
  if n < 16 then return string.char(0x90 + n) end
  if n < 65536 then return '\220' .. struct.pack('>I2', n) end
  return '\221' .. struct.pack('>I4', n)
end

local function map_header(n)
  if n < 16 then return string.char(0x80 + n) end
  if n < 65536 then return '\222' .. struct.pack('>I2', n) end
  return '\223' .. struct.pack('>I4', n)
end

-- An integral number with |n| < 2^53 in the smallest msgpack int encoding.
local function enc_int(n)
  if n >= 0 then
    if n < 128 then return string.char(n) end
    if n < 256 then return '\204' .. string.char(n) end
    if n < 65536 then return '\205' .. struct.pack('>I2', n) end
    if n < TWO32 then return '\206' .. struct.pack('>I4', n) end
    local hi = math.floor(n / TWO32)
    return '\207' .. struct.pack('>I4', hi) .. struct.pack('>I4', n - hi * TWO32)
  end
  if n >= -32 then return string.char(256 + n) end
  if n >= -128 then return '\208' .. string.char(256 + n) end
  if n >= -32768 then return '\209' .. struct.pack('>i2', n) end
  if n >= -2147483648 then return '\210' .. struct.pack('>i4', n) end
  local hi = math.floor(n / TWO32)
  return '\211' .. struct.pack('>i4', hi) .. struct.pack('>I4', n - hi * TWO32)
end

local function enc_float(n)
  return '\203' .. struct.pack('>d', n)
end

local function enc_number(n, isfloat)
  if isfloat then return enc_float(n) end
  if n >= TWO53 or n <= -TWO53 then fail('integer result beyond 2^53 (Lua numbers are doubles)') end
  return enc_int(n)
end

-- Boxes a value operation or custom op may return to fix a number's Python type.
local FLOAT_BOX, INT_BOX = {}, {}

-- Lua -> msgpack (results and writes of custom and value operations).  Lua has
-- one number type, so an integral number's Python type comes from, in order:
-- a box (CHC.float(x), CHC.int(x)); the shape of the value it replaces (the
-- same position held a float or an int); floaty (some input held a float);
-- else int.  Non-integral numbers are floats.  ASCII strings -> str, other
-- strings -> bin; tables with n or a sequence part -> array, others -> map.
local encode
encode = function(v, floaty, shape)
  local t = type(v)
  if v == nil then return NIL end
  if t == 'boolean' then return v and '\195' or '\194' end
  if t == 'number' then
    local isfloat
    if shape == 'f' then isfloat = true
    elseif shape == 'i' then isfloat = false
    else isfloat = floaty end
    if not isfloat and v == math.floor(v) and v > -TWO53 and v < TWO53 then return enc_int(v) end
    return enc_float(v)
  end
  if t == 'table' and getmetatable(v) == FLOAT_BOX then return enc_float(v[1]) end
  if t == 'table' and getmetatable(v) == INT_BOX then return enc_number(v[1], false) end
  if type(shape) ~= 'table' then shape = nil end
  if t == 'string' then
    local n = #v
    if v:find('[\128-\255]') then
      if n < 256 then return '\196' .. string.char(n) .. v end
      if n < 65536 then return '\197' .. struct.pack('>I2', n) .. v end
      return '\198' .. struct.pack('>I4', n) .. v
    end
    if n < 32 then return string.char(0xa0 + n) .. v end
    if n < 256 then return '\217' .. string.char(n) .. v end
    if n < 65536 then return '\218' .. struct.pack('>I2', n) .. v end
    return '\219' .. struct.pack('>I4', n) .. v
  end
  if t == 'table' then
    local n = v.n
    if type(n) ~= 'number' then n = #v end
    if n > 0 or next(v) == nil then
      local parts = {arr_header(n)}
      for i = 1, n do parts[i + 1] = encode(v[i], floaty, shape and shape[i]) end
      return table.concat(parts)
    end
    local parts, count = {}, 0
    for k, x in pairs(v) do
      count = count + 1
      parts[count + 1] = encode(k, floaty) .. encode(x, floaty, shape and shape[k])
    end
    parts[1] = map_header(count)
    return table.concat(parts)
  end
  fail('cannot encode a Lua ' .. t)
end

-- The number types in the msgpack value at pos ('f', 'i', or a table of the
-- shapes of an array's items / a map's values), and the next position.
local shape_of
shape_of = function(s, pos)
  local kind, a, p = head(s, pos)
  if kind == 'float' then return 'f', p end
  if kind == 'int' then return 'i', p end
  if kind == 'str' or kind == 'bin' then return nil, p + a end
  if kind == 'ext' then return nil, p + 1 + a end
  if kind == 'arr' then
    local t = {}
    for i = 1, a do t[i], p = shape_of(s, p) end
    return t, p
  end
  if kind == 'map' then
    local t = {}
    for _ = 1, a do
      local k, sh
      k, p = decode(s, p)
      sh, p = shape_of(s, p)
      if k ~= nil then t[k] = sh end
    end
    return t, p
  end
  return nil, p
end

-- Whether the msgpack string s holds a float anywhere.
local function has_float(s)
  local function walk(pos)
    local kind, a, p = head(s, pos)
    if kind == 'float' then return true, p end
    if kind == 'str' or kind == 'bin' then return false, p + a end
    if kind == 'ext' then return false, p + 1 + a end
    if kind == 'arr' or kind == 'map' then
      local found = false
      local f
      for _ = 1, (kind == 'arr' and a or 2 * a) do
        f, p = walk(p)
        found = found or f
      end
      return found, p
    end
    return false, p
  end
  if s == nil or s == '' then return false end
  return (walk(1))
end

-- Canonical form of the msgpack value at pos for Python equality (cas):
-- 1 == 1.0 == True, -0.0 == 0, dicts equal whatever their order, str ~= bytes,
-- NaN equal to nothing.  Self-delimiting, so it concatenates.
local nan_seq = 0
local canon
canon = function(s, pos)
  local kind, a, p = head(s, pos)
  if kind == 'int' or kind == 'float' then
    if a ~= a then
      nan_seq = nan_seq + 1
      return 'N' .. nan_seq .. ';', p
    end
    if a == math.floor(a) and a > -TWO53 and a < TWO53 then
      if a == 0 then a = 0 end
      return 'i' .. string.format('%.0f', a) .. ';', p
    end
    if kind == 'int' then return 'I' .. string.sub(s, pos, p - 1), p end
    return 'f' .. string.format('%.17g', a) .. ';', p
  end
  if kind == 'bool' then return a and 'i1;' or 'i0;', p end
  if kind == 'nil' then return 'n', p end
  if kind == 'str' then return 's' .. a .. ':' .. string.sub(s, p, p + a - 1), p + a end
  if kind == 'bin' then return 'b' .. a .. ':' .. string.sub(s, p, p + a - 1), p + a end
  if kind == 'ext' then return 'x' .. a .. ':' .. string.sub(s, p, p + a), p + 1 + a end
  if kind == 'arr' then
    local parts = {'a' .. a .. ':'}
    for i = 1, a do parts[i + 1], p = canon(s, p) end
    return table.concat(parts), p
  end
  local entries = {}
  for i = 1, a do
    local ck, cv
    ck, p = canon(s, p)
    cv, p = canon(s, p)
    entries[i] = ck .. cv
  end
  table.sort(entries)
  return 'm' .. a .. ':' .. table.concat(entries), p
end

local function same(x, y)
  if x == y then return true end
  return (canon(x, 1)) == (canon(y, 1))
end

-- A default sent by reference (0xc1 .. digest: big list defaults are stored once, as
-- "chcd:" .. digest, by the client) -> its msgpack string.
local function resolve(default)
  if string.byte(default, 1) == 0xc1 then
    local blob = redis.call('GET', 'chcd:' .. string.sub(default, 2))
    if not blob then fail('CHCNODEF the default ' .. string.sub(default, 2) .. ' is not in the store') end
    return blob
  end
  return default
end

-- The elements (msgpack strings) of a list default: an array or nil.
local function elements(default)
  default = resolve(default)
  if default == '' or default == NIL then return {} end
  local kind, n, p = head(default, 1)
  if kind ~= 'arr' then fail('the default of a list object must be a sequence') end
  local out = {}
  for i = 1, n do
    local q = skip(default, p)
    out[i] = string.sub(default, p, q - 1)
    p = q
  end
  return out
end

local function rpush_all(k, items)
  for i = 1, #items, CHUNK do
    redis.call('RPUSH', k, unpack(items, i, math.min(i + CHUNK - 1, #items)))
  end
end

-- -- objects ---------------------------------------------------------------------------------

-- Tagged current value of k ("V"/"L"), nil when absent.
local function tagged(k)
  local v = redis.pcall('GET', k)
  if v == false then return nil end
  if type(v) == 'string' then
    if v == EMPTY then return 'L\144' end
    return 'V' .. v
  end
  local items = redis.call('LRANGE', k, 0, -1)
  return 'L' .. arr_header(#items) .. table.concat(items)
end

-- The number in msgpack string s: value, isfloat (bools count as 0/1, like Python).
local function number_of(s)
  local kind, a = head(s, 1)
  if kind == 'int' then
    if a >= TWO53 or a <= -TWO53 then fail('incr on an integer beyond 2^53 (Lua numbers are doubles)') end
    return a, false
  end
  if kind == 'float' then return a, true end
  if kind == 'bool' then return a and 1 or 0, false end
  fail('incr on a non-number value')
end

-- Number stored at k (the msgpack default when absent): value, isfloat.
local function number_at(k, default)
  local v = redis.pcall('GET', k)
  if type(v) == 'table' or v == EMPTY then fail('incr on a non-number value') end
  if v == false then v = resolve(default) end
  return number_of(v)
end

-- Helpers for custom operations (their bodies are appended to this library).
local CHC = {
  decode = function(s) return (decode(s, 1)) end,
  encode = encode,
  read_raw = function(k) local v = redis.pcall('GET', k); if type(v) ~= 'string' then return nil end; return v end,
  write_raw = function(k, s) redis.call('SET', k, s) end,
  read = function(k)
    local v = tagged(k)
    if v == nil then return nil end
    return (decode(v, 2))
  end,
  write = function(k, v) redis.call('SET', k, encode(v)) end,
  read_number = function(k) return number_at(k, '\0') end,
  float = function(x) return setmetatable({x}, FLOAT_BOX) end,
  int = function(x) return setmetatable({x}, INT_BOX) end,
  write_number = function(k, n, isfloat) redis.call('SET', k, enc_number(n, isfloat)) end,
}

local UPDATE = {}

UPDATE['set'] = function(k, args)
  redis.call('SET', k, args[10])
  return R_NIL
end

UPDATE['incr'] = function(k, args)
  local v, vf = number_at(k, args[9])
  local by, bf = number_of(args[10])
  local r = enc_number(v + by, vf or bf)
  redis.call('SET', k, r)
  return 'V' .. r
end

-- §4.3 coalesced increments of one counter: ARGV[10] = total, [11] = tags "clock:n ...",
-- [12] = msgpack amounts, [13] = XOR ids "x ..." (both aligned with the tags; 0 = a timer's).
-- One addition; each increment keeps its clock-log entry (§5.3: one already recorded, a
-- replayed packet's, is left out of the sum and not reported again) and commit (§5.4).
UPDATE['incr_many'] = function(k, args)
  local lk = derived('chcl', k)
  local tags, xors = {}, {}
  for t in string.gmatch(args[11], '%S+') do tags[#tags + 1] = t end
  for x in string.gmatch(args[13], '%S+') do xors[#xors + 1] = x end
  local by, bf = number_of(args[10])
  local recorded = {}
  if redis.call('EXISTS', lk) == 1 then
    local amounts = decode(args[12], 1)
    for i = 1, #tags, CHUNK do
      local got = redis.call('HMGET', lk, unpack(tags, i, math.min(i + CHUNK - 1, #tags)))
      for j = 1, #got do
        if got[j] then
          recorded[i + j - 1] = true
          by = by - amounts[i + j - 1]
        end
      end
    end
  end
  local v, vf = number_at(k, args[9])
  local r = 'V' .. enc_number(v + by, vf or bf)
  redis.call('SET', k, string.sub(r, 2))
  local fields, members, commits = {}, {}, {}
  for i, t in ipairs(tags) do
    if not recorded[i] then
      local clock = string.sub(t, 1, string.find(t, ':', 1, true) - 1)
      fields[#fields + 1] = t
      fields[#fields + 1] = r
      members[#members + 1] = clock
      members[#members + 1] = t .. ' ' .. lk
      if xors[i] ~= '0' then commits[#commits + 1] = clock .. ':' .. xors[i] end
    end
  end
  for i = 1, #fields, CHUNK do
    redis.call('HSET', lk, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    redis.call('ZADD', 'chclz', unpack(members, i, math.min(i + CHUNK - 1, #members)))
  end
  for i = 1, #commits, CHUNK do
    redis.call('RPUSH', 'chcc', unpack(commits, i, math.min(i + CHUNK - 1, #commits)))
  end
  return r
end

UPDATE['push'] = function(k, args)
  local n = redis.pcall('RPUSHX', k, args[10])
  if type(n) == 'number' and n > 0 then return 'V' .. enc_int(n) end
  if n == 0 then
    rpush_all(k, elements(args[9]))                   -- absent: starts from the default
  elseif redis.call('GET', k) == EMPTY then
    redis.call('DEL', k)
  else
    fail('push/pop on a non-list value')
  end
  return 'V' .. enc_int(redis.call('RPUSH', k, args[10]))
end

UPDATE['pop'] = function(k, args)
  local v = redis.pcall('LPOP', k)
  if type(v) == 'string' then
    if redis.call('EXISTS', k) == 0 then redis.call('SET', k, EMPTY) end
    return 'V' .. v
  end
  if v == false then                                 -- absent: starts from the default
    local items = elements(args[9])
    if #items <= 1 then
      redis.call('SET', k, EMPTY)
      if #items == 0 then return R_NIL end
      return 'V' .. items[1]
    end
    local first = table.remove(items, 1)
    rpush_all(k, items)
    return 'V' .. first
  end
  if redis.call('GET', k) == EMPTY then return R_NIL end
  fail('push/pop on a non-list value')
end

UPDATE['cas'] = function(k, args)
  local cur = redis.pcall('GET', k)
  if type(cur) == 'table' or cur == EMPTY then return R_FALSE end   -- a list object never equals
  if cur == false then
    cur = resolve(args[9])
    if cur == '' then cur = NIL end
  end
  if not same(cur, args[10]) then return R_FALSE end
  redis.call('SET', k, args[11])
  return R_TRUE
end

UPDATE['delete'] = function(k, args)
  redis.call('DEL', k)
  return R_NIL
end

UPDATE['custom'] = function(k, args)
  local name = args[10]
  local fn = CUSTOM[name]
  if fn == nil then fail("unknown custom operation '" .. tostring(name) .. "'") end
  local default = nil
  if args[9] ~= '' then default = (decode(resolve(args[9]), 1)) end
  local op = {key = k, args = (decode(args[11], 1)), default = default, client = args[1], instance = args[3]}
  return 'V' .. encode(fn(op))
end

-- A value operation (chc.nf.value_op): new, result = fn(value, args) on the object's value
-- (the default when absent); the object becomes new; the result is the msgpack pair
-- (new, result), as StoreEngine returns it.  Python's int/float distinction (see encode):
-- new takes the number types of the value it replaces; other integral numbers are floats
-- when the value or an argument held a float (1.0 * 4 is 4.0); CHC.float/CHC.int decide.
UPDATE['apply'] = function(k, args)
  local name = args[10]
  local fn = VALUE_OPS[name]
  if fn == nil then fail("unknown value operation '" .. tostring(name) .. "'") end
  local cur = redis.pcall('GET', k)
  if type(cur) == 'table' or cur == EMPTY then fail('apply on a list object') end
  if cur == false then
    cur = resolve(args[9])
    if cur == '' then cur = NIL end
  end
  local floaty = has_float(cur) or has_float(args[11])
  local new, result = fn((decode(cur, 1)), (decode(args[11], 1)))
  local enew = encode(new, floaty, (shape_of(cur, 1)))
  redis.call('SET', k, enew)
  return 'V' .. arr_header(2) .. enew .. encode(result, floaty)
end

-- Built-in custom operation: index of the least counter among args[1] (object keys), incremented
-- by one (the load balancer's choice, §6); the first on ties; absent counters are 0.  With
-- args[2] (weights): the least counter / weight among positive weights, compared by
-- cross-multiplication as chc.nf.least_loaded does; nil (nothing incremented) when none is.
CUSTOM['argmin_incr'] = function(op)
  local keys = op.args[1]
  if keys == nil or keys.n == 0 then fail('argmin_incr needs at least one counter') end
  local weights = op.args[2]
  local best, bestv, bestf, bestw
  for i = 1, keys.n do
    local w = 1
    if weights ~= nil then w = weights[i] end
    if w > 0 then
      local v, f = number_at(keys[i], '\0')
      if best == nil or v * bestw < bestv * w then best, bestv, bestf, bestw = i, v, f, w end
    end
  end
  if best == nil then return nil end
  redis.call('SET', keys[best], enc_number(bestv + 1, bestf))
  return best - 1
end

-- -- the operation ---------------------------------------------------------------------------

-- §4.3 a retransmission (seq at or below the client's mark: applied or refused before) is not
-- applied again.  An update whose tag is still in the clock log gets its recorded result (§5.3:
-- the reply that was lost carried it; incr_many: that of its first tag still recorded); any
-- other (untagged, or pruned: acknowledged) gets nil.
local function retransmitted(k, args)
  local code = args[4]
  if code == 'get' or UPDATE[code] == nil then return nil end
  local lk = derived('chcl', k)
  if code == 'incr_many' then
    for t in string.gmatch(args[11], '%S+') do
      local r = redis.call('HGET', lk, t)
      if r then return r end
    end
    return nil
  end
  if args[6] == '' then return nil end
  return redis.call('HGET', lk, args[6]) or nil
end

-- KEYS[1] = object; ARGV = client seq instance code per_flow tag clock xor_id default, operands...
local function chc_op(keys, args)
  local k = keys[1]
  local client, seq = args[1], args[2]
  local code = args[4]
  if seq ~= '0' then
    local last = redis.call('HGET', 'chcq', client)
    if last and tonumber(seq) <= tonumber(last) then
      -- a resent read is answered again: its first reply may have been lost
      if code ~= 'get' then return retransmitted(k, args) end
    else
      redis.call('HSET', 'chcq', client, seq)
    end
  end
  if code == 'get' then return tagged(k) or 'A' end
  local update = UPDATE[code]
  if update == nil then fail("unknown operation '" .. code .. "'") end
  if args[5] == '1' then
    local ok = derived('chco', k)
    local owner = redis.call('GET', ok)
    local inst = args[3]
    if not owner then
      if inst ~= '' then redis.call('SET', ok, inst) end
    elseif owner ~= inst then
      return redis.error_reply('CHCOWN ' .. owner)
    end
  end
  local tag = args[6]
  local lk
  if tag ~= '' then
    lk = derived('chcl', k)
    local recorded = redis.call('HGET', lk, tag)
    if recorded then return recorded end              -- §5.3: emulate the duplicate
  end
  local result = update(k, args)
  if tag ~= '' then
    redis.call('HSET', lk, tag, result)
    redis.call('ZADD', 'chclz', args[7], tag .. ' ' .. lk)
    if args[8] ~= '0' then redis.call('RPUSH', 'chcc', args[7] .. ':' .. args[8]) end
  end
  local subs = redis.call('SMEMBERS', derived('chcs', k))
  if #subs > 0 then
    local v = tagged(k)
    if v == nil then
      v = resolve(args[9])
      if v == '' then v = NIL end
      v = 'V' .. v
    end
    local payload = 'U' .. struct.pack('>I4', #k) .. k .. v
    for _, s in ipairs(subs) do
      if s ~= client then redis.call('PUBLISH', 'chc:n:' .. s, payload) end
    end
  end
  return result
end

-- KEYS[1] = object; ARGV = kind ('L' list object, 'V' value), msgpack items...
local function chc_declare(keys, args)
  local k = keys[1]
  if redis.call('EXISTS', k) == 1 then return 0 end
  if args[1] == 'V' then
    redis.call('SET', k, args[2])
  elseif #args == 1 then
    redis.call('SET', k, EMPTY)
  else
    local items = {}
    for i = 2, #args do items[i - 1] = args[i] end
    rpush_all(k, items)
  end
  return 1
end

-- KEYS[1] = object; ARGV = wire client.  Returns the tagged current value (nil if absent).
local function chc_subscribe(keys, args)
  redis.call('SADD', derived('chcs', keys[1]), args[1])
  return tagged(keys[1])
end

-- KEYS[1] = object; ARGV = wire client, instance.  '1' = owner now, '0' = queued.
local function chc_take(keys, args)
  local ok = derived('chco', keys[1])
  local owner = redis.call('GET', ok)
  if not owner or owner == args[2] then
    redis.call('SET', ok, args[2])
    return '1'
  end
  redis.call('RPUSH', derived('chcw', keys[1]), args[2] .. ' ' .. args[1])
  return '0'
end

-- KEYS[1] = object; ARGV = instance.  The first waiting instance becomes the owner and its client
-- is notified.
local function chc_release(keys, args)
  local k = keys[1]
  local ok = derived('chco', k)
  local owner = redis.call('GET', ok)
  if owner and owner ~= args[1] then return redis.error_reply('CHCOWN ' .. owner) end
  redis.call('DEL', ok)
  local nxt = redis.call('LPOP', derived('chcw', k))
  if nxt then
    local sp = string.find(nxt, ' ', 1, true)
    local inst, client = string.sub(nxt, 1, sp - 1), string.sub(nxt, sp + 1)
    redis.call('SET', ok, inst)
    redis.call('PUBLISH', 'chc:n:' .. client, 'O' .. struct.pack('>I4', #k) .. k .. inst)
  end
  return 'ok'
end

-- ARGV = clock.  Forget clock-log entries of clocks < clock; returns how many.
local function chc_prune(keys, args)
  local bound = '(' .. args[1]
  local members = redis.call('ZRANGEBYSCORE', 'chclz', '-inf', bound)
  for _, m in ipairs(members) do
    local sp = string.find(m, ' ', 1, true)
    redis.call('HDEL', string.sub(m, sp + 1), string.sub(m, 1, sp - 1))
  end
  if #members > 0 then redis.call('ZREMRANGEBYSCORE', 'chclz', '-inf', bound) end
  return #members
end

-- Drain the commit reports ("clock:xor_id").
local function chc_commits(keys, args)
  local out = redis.call('LRANGE', 'chcc', 0, -1)
  redis.call('DEL', 'chcc')
  return out
end

-- KEYS[1] = object.  Tagged current value, nil when absent (no side effects).
local function chc_peek(keys, args)
  return tagged(keys[1])
end

redis.register_function('chc_op', chc_op)
redis.register_function('chc_declare', chc_declare)
redis.register_function('chc_subscribe', chc_subscribe)
redis.register_function('chc_take', chc_take)
redis.register_function('chc_release', chc_release)
redis.register_function('chc_prune', chc_prune)
redis.register_function('chc_commits', chc_commits)
redis.register_function{function_name = 'chc_peek', callback = chc_peek, flags = {'no-writes'}}

-- Custom operations registered at run time follow, one per block:
--   CUSTOM['name'] = function(op) <body> end
-- and so do value operations (chc.nf.value_op with a Lua chunk):
--   VALUE_OPS['name'] = function(value, args) <chunk returning new, result> end
-- op.key (the object's Redis key), op.args (decoded arguments after the name; ObjectKeys are
-- Redis keys), op.default, op.client, op.instance; CHC.read/write/read_number/write_number/
-- read_raw/write_raw/encode/decode are available to the body.  The result is encoded with CHC.encode.
