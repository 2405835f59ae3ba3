#!lua name=chc
--[[
CHC store operations as Redis 7 functions (library ``chc``).

The ops of one request for this server are one call of ``chc_batch``: for
each op, the client-sequence dedup, the per-flow ownership check, the
clock-log check, the operation itself, the clock-log record, the commit report
and the callbacks happen in one atomic server step.  The ops arrive as one
binary argument (see HEAD), reads are gathered with one variadic command per
kind, and writes of values, clock-log records, their pruning index, commit
reports and sequence marks go out with one command each at the end (see
chc_batch).
``chc/backends/redis.py`` loads this file with FUNCTION LOAD REPLACE (plus the
Lua bodies of custom operations registered at run time) and holds it to the
semantics of ``chc.core.store.StoreEngine``.

Keys (P = the namespace prefix, e.g. "chc:", passed as ARGV[1] to every
function; K = P "k:" rest, rest = vertex ":" object ":" msgpack(scope key)):
  K             the object: a string holding one msgpack value, or a Redis
                list of msgpack values (a list object: push/pop), or the
                string EMPTY (0xc1, never valid msgpack) for an empty list
                object (Redis deletes empty lists; the object must stay).
  P "o:" rest   string: owning instance of a per-flow object
  P "w:" rest   list: instances waiting to take the object, "inst client"
  P "s:" rest   set: subscribed (wire) client ids
  P "S"         set: the objects that have subscribers
  P "l"         hash: clock log, "clock:n K" -> recorded result (its reply element)
  P "lc:" id    string: one batch's clock-log fields (see chunk_of; pruning)
  P "lz"        sorted set: those chunks (and the "pc:" ones) scored by their least clock
  P "lseq"      counter: the last list id (one per batch that logs; orders pre-images)
  P "pre"       string: present = record pre-images (RedisStore.keep_preimages, NF failover)
  P "p"         hash: pre-images, "clock K" -> order (8 bytes: batch id, index; big-endian)
                .. the value of K before the first update of that clock ("V"/"L" tagged,
                "A" absent)
  P "pc:" id    list: one batch's pre-image records, clock, "clock K", ... (pruning)
  P "q"         hash: wire client id -> highest applied seq
  P "ts"        string: present = keep TS (RedisStore.keep_ts, store failover, §5.4)
  P "t"         hash: TS, wire client id -> "clock seq" of the last shared-state update
                applied for it (an incr_many's: its first increment's clock); replies that carry a value of
                shared state are then ext 4: msgpack str of TS ("client clock seq\n"
                each), then the reply element
  P "c"         string: commit reports "clock:n xor_id " each (APPEND)
  P "rf"        hash: wire client id .. " " .. seq -> "clock text" of each tagged update
                refused for what it is (CHCERR): a retransmission of it is refused again
                (its first reply may have been lost), until chc_prune passes its clock
  P "rn"        string: present = "rf" has entries (read with the epoch: costs nothing)
  P "d:" digest a big default (msgpack), referenced by ops as 0xc1 .. digest
Notifications are published on P "n:" .. wire client id; a payload is
"U" or "O", a 4-byte big-endian key length, the key, then the tagged value
("U") or the new owner instance ("O").

chc_batch answers with one msgpack array, an element per op (see X_ABSENT);
inside, and from the other functions, results are bulk strings tagged by their
first byte: "V" .. msgpack value, "L" .. msgpack array (the contents of a list
object), "A" (absent).  A retransmitted op that was acknowledged is answered
nil without being applied (a retransmitted update whose tag is still in the
clock log gets its recorded result instead; no switch turns this dedup off:
``--break no-dedup`` is the memory store's alone; a retransmitted update that
was refused for what it is is refused again, see "rf").  Errors are "CHCOWN
<owner>" (ownership) and "CHCERR <text>" (refused operation).

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

-- PUBLISH, or SPUBLISH on a Redis Cluster (the client appends "PUBLISH = 'SPUBLISH'" to the
-- library): a sharded channel stays on the node of its slot, the shard's own.
local PUBLISH = 'PUBLISH'

local CUSTOM = {}       -- custom operations: name -> function(op) -> Lua value
local VALUE_OPS = {}    -- value operations (chc.nf.value_op): name -> function(value, args) -> new, result

local function fail(text)
  error({err = 'CHCERR ' .. text})
end

-- The namespace prefix of the call being run (every function gets it as ARGV[1]).
local PREFIX = ''

local function derived(kind, k)
  return PREFIX .. kind .. string.sub(k, #PREFIX + 2)     -- P "k:rest" -> P kind ":rest"
end

-- -- msgpack ---------------------------------------------------------------------------------

-- Big-endian unsigned integer of w bytes at i (struct: C speed; a byte loop cost more than the op).
local function be(s, i, w)
  if w == 1 then return string.byte(s, i) end
  if w == 2 then return (struct.unpack('>I2', s, i)) end
  if w == 4 then return (struct.unpack('>I4', s, i)) end
  local hi, lo = struct.unpack('>I4I4', s, i)
  return hi * TWO32 + lo
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
    return '\207' .. struct.pack('>I4I4', hi, n - hi * TWO32)
  end
  if n >= -32 then return string.char(256 + n) end
  if n >= -128 then return '\208' .. string.char(256 + n) end
  if n >= -32768 then return '\209' .. struct.pack('>i2', n) end
  if n >= -2147483648 then return '\210' .. struct.pack('>i4', n) end
  local hi = math.floor(n / TWO32)
  return '\211' .. struct.pack('>i4I4', hi, n - hi * TWO32)
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
    local blob = redis.call('GET', PREFIX .. 'd:' .. string.sub(default, 2))
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

-- The number in msgpack string s (at pos, default 1): value, isfloat (bools count as 0/1, like
-- Python).
local function number_of(s, pos)
  pos = pos or 1
  local b = string.byte(s, pos)
  if b then
    if b <= 0x7f then return b, false end                    -- the usual cases first, without head()
    if b == 0xcf then
      local hi, lo = struct.unpack('>I4I4', s, pos + 1)
      if hi >= 0x200000 then fail('incr on an integer beyond 2^53 (Lua numbers are doubles)') end
      return hi * TWO32 + lo, false
    end
    if b == 0xce then return (struct.unpack('>I4', s, pos + 1)), false end
  end
  local kind, a = head(s, pos)
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

-- The state of the batch being run.  Its hot parts are upvalues (cheaper than table fields):
-- the value cache (key -> msgpack value, false = known absent), its dirty keys, the clock log
-- as this batch sees it (field -> recorded result, false = not recorded), the records to write
-- and the commit reports.  Everything is written at the batch's end with one command each (a
-- redis.call costs more than the work of most ops).
local batch = nil
local Bfast, Bcache, Bdirty, Bdirtylist, Bndirty = false, nil, nil, nil, 0
local Blog, Bfields, Bnlog = nil, nil, 0
local Bcommitted, Bcommits = nil, nil

-- The reply is one msgpack array, an element per op, that the client decodes in one C call: a
-- value as its msgpack; a list object's contents as ext 1 (a msgpack array); an absent object
-- (get: the caller substitutes its default) as ext 2; a refused op as ext 3 (its error follows
-- the array); nil for a retransmission acknowledged without being applied.  The clock log
-- records results in that form too (every logged result is a plain value).
local X_ABSENT, X_REFUSED = '\212\2\0', '\212\3\0'

local function ext1(data)
  local n = #data
  if n < 256 then return '\199' .. string.char(n) .. '\1' .. data end
  if n < 65536 then return '\200' .. struct.pack('>I2', n) .. '\1' .. data end
  return '\201' .. struct.pack('>I4', n) .. '\1' .. data
end

-- A tagged result ("V"/"L"/"A", see tagged) -> its reply element.
local function wire(r)
  local t = string.byte(r, 1)
  if t == 86 then return string.sub(r, 2) end
  if t == 76 then return ext1(string.sub(r, 2)) end
  return X_ABSENT
end

-- The recorded result of a clock-log field (false: none).  The batch read its fields' records
-- with one HMGET; a field it did not (a retransmitted op's) is read now.
local function logged(field)
  local r = Blog[field]
  if r == nil then
    r = redis.call('HGET', batch.P .. 'l', field)
    Blog[field] = r
  end
  return r
end

local function record(field, result)
  local n = Bnlog + 1
  Bnlog = n
  Bfields[2 * n - 1] = field
  Bfields[2 * n] = result
  Blog[field] = result
end

-- §5.4 NF failover: the value of k before the first update of clock (only when P "pre" is set):
-- what the batch's cache holds for k, else what Redis holds ("A": absent).  Written at the
-- batch's end with one HSET, ordered by (batch id, index) so that objects_at finds, per
-- object, the first replayed clock in the store's application order.
local function preimage(k, clock)
  local b = batch
  local field = clock .. ' ' .. k
  if b.pseen[field] then return end
  b.pseen[field] = true
  if redis.call('HEXISTS', b.P .. 'p', field) == 1 then return end   -- an earlier batch's
  local v = Bcache[k]
  if v then
    if v == EMPTY then v = 'L\144' else v = 'V' .. v end
  else
    v = tagged(k) or 'A'
  end
  local n = b.npre + 1
  b.npre = n
  b.pfields[n] = field
  b.pvalues[n] = v
  b.pmembers[2 * n - 1] = clock
  b.pmembers[2 * n] = field
  local c = tonumber(clock)
  if b.pminclock == nil or c < b.pminclock then b.pminclock = c end
end

-- §5.4 a commit report "clock:n xor " (the client keeps the clock).
local function commit(tag, xor)
  Bcommits[#Bcommits + 1] = tag .. ' ' .. xor .. ' '
end

-- §5.4 TS: a reply carrying a value of shared state, with the TS after the op (ext 4).
local function stamped(result)
  local b = batch
  local enc = b.tsenc
  if enc == nil then
    local parts = {}
    for c, stamp in pairs(b.ts) do parts[#parts + 1] = c .. ' ' .. stamp .. '\n' end
    enc = encode(table.concat(parts))
    b.tsenc = enc
  end
  local data = enc .. result
  local n = #data
  if n < 256 then return '\199' .. string.char(n) .. '\4' .. data end
  if n < 65536 then return '\200' .. struct.pack('>I2', n) .. '\4' .. data end
  return '\201' .. struct.pack('>I4', n) .. '\4' .. data
end

-- Op codes whose reply carries a value of shared state when applied (get: always).
local OBSERVED = {[3] = true, [6] = true, [7] = true, [9] = true, [10] = true}

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

-- §4.3 coalesced increments of one counter: args[10] = total, [11] = tags "clock:n ...", [12] =
-- msgpack amounts (aligned with the tags), [13] = commit reports "clock:n xor ..." of the tags
-- with an XOR id, [14] = the tags' clock-log fields (made from [11] when the batch was read).
-- One addition; each increment keeps its clock-log entry (§5.3: one already recorded, a
-- replayed packet's, is left out of the sum and not reported again) and commit (§5.4).
UPDATE['incr_many'] = function(k, args)
  local fields = args[14]
  local by, bf = number_of(args[10])
  local replayed, amounts = nil, nil
  for i = 1, #fields do
    if logged(fields[i]) then
      amounts = amounts or decode(args[12], 1)
      replayed = replayed or {}
      replayed[i] = true
      by = by - amounts[i]
    end
  end
  local v, vf = number_at(k, args[9])
  local r = enc_number(v + by, vf or bf)
  redis.call('SET', k, r)
  for i = 1, #fields do
    if not (replayed and replayed[i]) then record(fields[i], r) end
  end
  local reports = args[13]
  if reports ~= '' then
    if replayed == nil then
      Bcommits[#Bcommits + 1] = reports     -- all fresh: the client's text as it is
    else
      local again = {}
      local i = 0
      for t in string.gmatch(args[11], '%S+') do
        i = i + 1
        if replayed[i] then again[t] = true end
      end
      for t, x in string.gmatch(reports, '(%S+) (%S+)') do
        if not again[t] then commit(t, x) end
      end
    end
  end
  return 'V' .. r
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
-- other (untagged, or pruned: acknowledged) gets nil (false).
local function retransmitted(k, args)
  local code = args[4]
  if code == 'get' or UPDATE[code] == nil then return false end
  if code == 'incr_many' then
    for _, f in ipairs(args[14]) do
      local r = logged(f)
      if r then return r end
    end
    return false
  end
  if args[6] == '' then return false end
  return logged(args[6] .. ' ' .. k) or false
end


local function variadic(cmd, key, items, n, step)
  for i = 1, n, CHUNK * step do
    if key then
      redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK * step - 1, n)))
    else
      redis.call(cmd, unpack(items, i, math.min(i + CHUNK * step - 1, n)))
    end
  end
end

-- get/set/incr on a string value work on the batch's value cache (filled by one MGET, written
-- back by one MSET): a redis.call costs more than such an op.  Every other op reads and writes
-- Redis itself, after the cache is written back, and invalidates what it may have changed.
local function flush()
  local n = Bndirty
  if n > 0 then
    local kv, keys, cache = {}, Bdirtylist, Bcache
    for i = 1, n do
      local k = keys[i]
      kv[2 * i - 1] = k
      kv[2 * i] = cache[k]
    end
    variadic('MSET', nil, kv, 2 * n, 2)
    Bdirty, Bdirtylist, Bndirty = {}, {}, 0
  end
end

local function cache_write(k, v)
  Bcache[k] = v
  if not Bdirty[k] then
    Bdirty[k] = true
    local n = Bndirty + 1
    Bndirty = n
    Bdirtylist[n] = k
  end
end

-- The ops of a batch are one binary string, op after op: a fixed head (struct format HEAD:
-- code, flags (1 = per-flow object), client index, seq, XOR id, then the lengths of the
-- instance, the tag "clock:n " (with its space, so that tag and key are the op's clock-log
-- field "clock:n K"), the key, the default and four operands) and those strings.  One
-- struct.unpack reads a head: one Redis argument per field, or Lua parsing text, cost more
-- than the ops (docs/benchmarks.md).
local HEAD = '>BBHdI4BBI4I4I4I4I4I4'
local CODES = {'get', 'set', 'incr', 'incr_many', 'push', 'pop', 'cas', 'delete', 'custom', 'apply'}

-- The general path: the op as the table UPDATE functions take (client seq instance code
-- per_flow tag clock xor_id default operands... [14] = incr_many's clock-log fields).
local function op_args(client, seq, inst, code, pf, tag, xor, default, blob, p, l1, l2, l3, l4, fields)
  local a1 = string.sub(blob, p, p + l1 - 1)
  p = p + l1
  local a2 = string.sub(blob, p, p + l2 - 1)
  p = p + l2
  local a3 = string.sub(blob, p, p + l3 - 1)
  p = p + l3
  return {client, seq, inst, code, pf, tag, '', xor, default, a1, a2, a3, string.sub(blob, p, p + l4 - 1), fields}
end

-- Op j of the batch: its reply element, or {err = text} when refused.
local function apply(j)
  local b = batch
  local blob = b.blob
  local code, flags, ci, seq, xor, li, lt, lk, ld, l1, l2, l3, l4, p = struct.unpack(HEAD, blob, b.starts[j])
  local pk = p + li + lt              -- the key
  local pd = pk + lk                  -- the default
  local po = pd + ld                  -- the operands
  local k, field = b.keys[j], b.opfields[j]
  local client = b.clients[ci + 1]
  if seq > 0 then
    local last = b.seqs[client]
    if last == nil then
      last = tonumber(redis.call('HGET', b.P .. 'q', client) or '0')
      b.seqs[client] = last
    end
    if seq <= last then
      -- a resent read is answered again: its first reply may have been lost
      if code ~= 1 and b.refusals then
        local refused = redis.call('HGET', b.P .. 'rf', client .. ' ' .. seq)
        if refused then return {err = string.match(refused, '^%S+ (.*)$')} end
      end
      if code ~= 1 then
        local tag = lt > 0 and string.sub(blob, p + li, pk - 2) or ''
        return retransmitted(k, op_args(client, seq, '', CODES[code], '', tag, xor, string.sub(blob, pd, po - 1),
                                        blob, po, l1, l2, l3, l4, b.many[j])) or NIL
      end
    else
      b.seqs[client] = seq
      b.dirty_seqs[client] = true
    end
  end
  local cached = nil                  -- nil: not cached; false: known absent
  if Bfast then cached = Bcache[k] end
  if code == 1 then
    local r
    if cached then
      if cached == EMPTY then r = ext1('\144') else r = cached end
    elseif cached == false then
      r = X_ABSENT
    else
      local v = tagged(k)
      if v == nil then r = X_ABSENT else r = wire(v) end
    end
    if b.ts and flags % 2 == 0 then return stamped(r) end
    return r
  end
  if field then
    local r = Blog[field]
    if r == nil then r = logged(field) end
    -- §5.3: emulate the duplicate, whoever sends it (it writes nothing, so it takes no
    -- ownership: a failover replays updates of flows that have moved since)
    if r then return r end
  end
  local inst = ''
  if li > 0 then inst = string.sub(blob, p, p + li - 1) end
  if flags % 2 == 1 then
    local ok = derived('o', k)
    local owner = b.owners[ok]
    if owner == nil then
      owner = redis.call('GET', ok)
      b.owners[ok] = owner
    end
    if not owner then
      if inst ~= '' then
        redis.call('SET', ok, inst)
        b.owners[ok] = inst
      end
    elseif owner ~= inst then
      return {err = 'CHCOWN ' .. owner}
    end
  end
  if field then
    if b.preimages then
      local clock = string.match(field, '^[^:]*')
      preimage(k, clock)
      if code == 9 then
        local args = op_args(client, seq, inst, 'custom', flags, '', xor, '', blob, po, l1, l2, l3, l4)
        if args[10] == 'argmin_incr' then
          local counters = (decode(args[11], 1))[1]       -- the counters it may change
          for i = 1, (counters and counters.n or 0) do preimage(counters[i], clock) end
        end
      end
    end
  end
  local result
  if Bfast and code == 2 then
    cache_write(k, string.sub(blob, po, po + l1 - 1))
    result = NIL
  elseif code == 3 and ((cached and cached ~= EMPTY) or cached == false) then
    local v, vf
    if cached then
      v, vf = number_of(cached)
    else
      v, vf = number_of(resolve(string.sub(blob, pd, po - 1)))
    end
    local by, bf = number_of(blob, po)
    result = enc_number(v + by, vf or bf)
    cache_write(k, result)
  else
    flush()
    local name = CODES[code]
    local tag = lt > 0 and string.sub(blob, p + li, pk - 2) or ''
    result = wire(UPDATE[name](k, op_args(client, seq, inst, name, flags, tag, xor, string.sub(blob, pd, po - 1),
                                          blob, po, l1, l2, l3, l4, b.many[j])))
    if code == 9 then Bcache = {} else Bcache[k] = nil end
  end
  if field then
    record(field, result)
    if xor ~= 0 then Bcommitted[#Bcommitted + 1] = j end
  end
  if b.ts and flags % 2 == 0 then
    -- §5.4 TS: the client's last shared-state update (the root's writes carry no seq)
    if seq > 0 then
      local clock = '-1'
      if lt > 0 then
        clock = string.match(string.sub(blob, p + li, pk - 2), '^[^:]*')
      elseif code == 4 and b.many[j] and b.many[j][1] then
        clock = string.match(b.many[j][1], '^[^:]*')     -- (its tag is its first increment's)
      end
      b.ts[client] = clock .. ' ' .. string.format('%d', seq)
      b.tsenc = nil
      b.tsdirty = true
    end
    if OBSERVED[code] then result = stamped(result) end
  end
  if b.watched and redis.call('SISMEMBER', b.P .. 'S', k) == 1 then
    local v = tagged(k)
    if v == nil then
      v = resolve(string.sub(blob, pd, po - 1))
      if v == '' then v = NIL end
      v = 'V' .. v
    end
    local payload = 'U' .. struct.pack('>I4', #k) .. k .. v
    for _, s in ipairs(redis.call('SMEMBERS', derived('s', k))) do
      if s ~= client then redis.call(PUBLISH, b.P .. 'n:' .. s, payload) end
    end
  end
  return result
end

-- Op j was refused with error text e: a tagged update refused for what it is (CHCERR) is kept
-- in "rf" by its client and seq, with its clock, so that a retransmission is refused again.
local function refused(j, e)
  if not string.find(e, 'CHCERR ', 1, true) then return end
  local b = batch
  local _, _, ci, seq, _, li, lt, _, _, _, _, _, _, p = struct.unpack(HEAD, b.blob, b.starts[j])
  local clock
  if lt > 0 then
    clock = string.match(string.sub(b.blob, p + li, p + li + lt - 1), '^%d+')
  elseif b.many[j] and b.many[j][1] then
    clock = string.match(b.many[j][1], '^%d+')
  end
  if seq == 0 or not clock then return end
  redis.call('HSET', b.P .. 'rf', b.clients[ci + 1] .. ' ' .. seq, clock .. ' ' .. e)
  redis.call('SET', b.P .. 'rn', '1')
  b.refusals = true
end

-- Ops from..n in order; a refused op's error is noted and the others still run.
local function run(from, n)
  local b = batch
  local results = b.results
  for j = from, n do
    b.cur = j
    local r = apply(j)
    if type(r) == 'table' then
      results[j] = X_REFUSED
      b.errors[#b.errors + 1] = j .. ' ' .. r.err
    else
      results[j] = r
    end
  end
end

-- The pruning index of a batch's clock-log fields: one string, their count and lengths (4 bytes
-- each, big-endian), then the fields.
local function chunk_of(names, n)
  local lens = {}
  for i = 1, n do lens[i] = #names[i] end
  local parts = {struct.pack('>I4', n)}
  for i = 1, n, CHUNK do
    local m = math.min(i + CHUNK - 1, n)
    parts[#parts + 1] = struct.pack('>' .. string.rep('I4', m - i + 1), unpack(lens, i, m))
  end
  parts[#parts + 1] = table.concat(names, '', 1, n)
  return table.concat(parts)
end

-- ARGV = prefix, epoch ('' = not checked; else the namespace's epoch key must hold it: a server
-- that restarted empty must not be written as if it held the run's state), the least clock of
-- the batch's tags ('' = none), the commit reports of its tagged ops with an XOR id ("clock:n
-- xor " each, incr_many's apart) and how many, the number of clients, wire clients..., the
-- ops (see HEAD).  Returns {results, errors...}: the msgpack array of the ops' reply elements,
-- then "index text" per refused op (the other ops still run).
local function chc_batch(keys, argv)
  local P = argv[1]
  PREFIX = P
  -- The epoch and the pre-image switch in one read (the switch costs the batch nothing).
  local meta = redis.call('MGET', P .. 'epoch', P .. 'pre', P .. 'ts', P .. 'rn')
  if argv[2] ~= '' and meta[1] ~= argv[2] then
    return redis.error_reply('CHCEPOCH the namespace lost its state')   -- restarted empty or flushed
  end
  local nc = tonumber(argv[6])
  local clients = {}
  for c = 1, nc do clients[c] = argv[6 + c] end
  local blob = argv[7 + nc]
  local watched = redis.call('EXISTS', P .. 'S') == 1
  batch = {P = P, blob = blob, clients = clients, seqs = {}, dirty_seqs = {}, watched = watched, owners = {},
           preimages = meta[2] ~= false, starts = {}, keys = {}, opfields = {}, many = {}, results = {}, errors = {},
           refusals = meta[4] ~= false}
  Bfast, Bcache, Bdirty, Bdirtylist, Bndirty = not watched, {}, {}, {}, 0
  Blog, Bfields, Bnlog, Bcommitted, Bcommits = {}, {}, 0, {}, {}
  local b = batch
  if b.preimages then
    b.pseen, b.npre, b.pfields, b.pvalues, b.pmembers = {}, 0, {}, {}, {}
  end
  if meta[3] then
    local ts, flat = {}, redis.call('HGETALL', P .. 't')
    for i = 1, #flat, 2 do ts[flat[i]] = flat[i + 1] end
    b.ts, b.tsdirty = ts, false
  end
  local starts, ks, opfields, many = b.starts, b.keys, b.opfields, b.many
  local nops, tagfields, nt, reads, nr = 0, {}, 0, {}, 0
  local pos, size = 1, #blob
  while pos <= size do
    local code, _, _, _, _, li, lt, lk, ld, l1, l2, l3, l4, p = struct.unpack(HEAD, blob, pos)
    if CODES[code] == nil then fail('unknown operation code ' .. code) end
    nops = nops + 1
    starts[nops] = pos
    local pk = p + li + lt
    local k = string.sub(blob, pk, pk + lk - 1)
    ks[nops] = k
    if lt > 0 then
      local field = string.sub(blob, p + li, pk + lk - 1)
      opfields[nops] = field
      nt = nt + 1
      tagfields[nt] = field
    elseif code == 4 then
      local fields, nf = {}, 0
      local q = pk + lk + ld + l1
      for t in string.gmatch(string.sub(blob, q, q + l2 - 1), '%S+') do
        nf = nf + 1
        fields[nf] = t .. ' ' .. k
        nt = nt + 1
        tagfields[nt] = fields[nf]
      end
      many[nops] = fields
    end
    if code == 1 or code == 3 then
      nr = nr + 1
      reads[nr] = k
    end
    pos = pk + lk + ld + l1 + l2 + l3 + l4
  end
  for j = 1, nt, CHUNK do
    local got = redis.call('HMGET', P .. 'l', unpack(tagfields, j, math.min(j + CHUNK - 1, nt)))
    for m = 1, #got do Blog[tagfields[j + m - 1]] = got[m] end
  end
  if Bfast then
    local cache, misses, nm = Bcache, {}, 0
    for j = 1, nr, CHUNK do
      local got = redis.call('MGET', unpack(reads, j, math.min(j + CHUNK - 1, nr)))
      for m = 1, #got do
        if got[m] then
          cache[reads[j + m - 1]] = got[m]
        else
          nm = nm + 1
          misses[nm] = reads[j + m - 1]                       -- absent, or a list object
        end
      end
    end
    -- Usually none of the misses exists (new counters): then they are known absent and their
    -- ops stay on the cache too; else (a list among them) they all take the general path.
    local exist = 0
    for j = 1, nm, CHUNK do
      exist = exist + redis.call('EXISTS', unpack(misses, j, math.min(j + CHUNK - 1, nm)))
    end
    if exist == 0 then
      for j = 1, nm do cache[misses[j]] = false end
    end
  end
  local j = 1
  while j <= nops do
    local ok, e = pcall(run, j, nops)
    if ok then break end
    if type(e) == 'table' then e = e.err else e = 'ERR ' .. tostring(e) end
    b.results[b.cur] = X_REFUSED
    b.errors[#b.errors + 1] = b.cur .. ' ' .. tostring(e)
    refused(b.cur, tostring(e))
    j = b.cur + 1
  end
  flush()
  local id = nil
  if Bnlog > 0 then
    variadic('HSET', P .. 'l', Bfields, Bnlog * 2, 2)
    -- The pruning index: this batch's fields as one string, scored by the least clock of its
    -- tags (one SET and one ZADD per batch).
    id = redis.call('INCR', P .. 'lseq')
    local names = {}
    for i = 1, Bnlog do names[i] = Bfields[2 * i - 1] end
    local chunk = P .. 'lc:' .. id
    redis.call('SET', chunk, chunk_of(names, Bnlog))
    redis.call('ZADD', P .. 'lz', argv[3] ~= '' and argv[3] or '-inf', chunk)
  end
  if b.preimages and b.npre > 0 then
    -- Pre-images: ordered by (this batch's id, index), pruned with the clock log.
    id = id or redis.call('INCR', P .. 'lseq')
    local kv = {}
    for i = 1, b.npre do
      kv[2 * i - 1] = b.pfields[i]
      kv[2 * i] = struct.pack('>I4I4', id, i) .. b.pvalues[i]
    end
    variadic('HSET', P .. 'p', kv, b.npre * 2, 2)
    local chunk = P .. 'pc:' .. id
    variadic('RPUSH', chunk, b.pmembers, b.npre * 2, 2)
    redis.call('ZADD', P .. 'lz', string.format('%.17g', b.pminclock), chunk)
  end
  -- §5.4 commit reports: the client's text when every op it lists was applied now (the usual
  -- case), else those of the ops that were; then incr_many's.
  local reports = argv[4]
  if #Bcommitted ~= tonumber(argv[5]) then
    local parts = {}
    for i, c in ipairs(Bcommitted) do
      local _, _, _, _, xor, li, lt, _, _, _, _, _, _, p = struct.unpack(HEAD, blob, starts[c])
      parts[i] = string.sub(blob, p + li, p + li + lt - 1) .. string.format('%d', xor) .. ' '
    end
    reports = table.concat(parts)
  end
  reports = reports .. table.concat(Bcommits)
  if reports ~= '' then redis.call('APPEND', P .. 'c', reports) end
  local marks, nm = {}, 0
  for c in pairs(b.dirty_seqs) do
    marks[nm + 1] = c
    marks[nm + 2] = b.seqs[c]
    nm = nm + 2
  end
  if nm > 0 then redis.call('HSET', P .. 'q', unpack(marks)) end
  if b.tsdirty then
    local kv = {}
    for c, stamp in pairs(b.ts) do
      kv[#kv + 1] = c
      kv[#kv + 1] = stamp
    end
    redis.call('HSET', P .. 't', unpack(kv))
  end
  batch, Bcache, Bdirty, Bdirtylist, Blog, Bfields, Bcommitted, Bcommits = nil, nil, nil, nil, nil, nil, nil, nil
  local out = {arr_header(nops) .. table.concat(b.results)}
  for i = 1, #b.errors do out[i + 1] = b.errors[i] end
  return out
end

-- KEYS[1] = object; ARGV = prefix, kind ('L' list object, 'V' value), msgpack items...
local function chc_declare(keys, args)
  local k = keys[1]
  if redis.call('EXISTS', k) == 1 then return 0 end
  if args[2] == 'V' then
    redis.call('SET', k, args[3])
  elseif #args == 2 then
    redis.call('SET', k, EMPTY)
  else
    local items = {}
    for i = 3, #args do items[i - 2] = args[i] end
    rpush_all(k, items)
  end
  return 1
end

-- KEYS[1] = object; ARGV = prefix, wire client.  Returns the tagged current value (nil if absent).
local function chc_subscribe(keys, args)
  PREFIX = args[1]
  redis.call('SADD', derived('s', keys[1]), args[2])
  redis.call('SADD', PREFIX .. 'S', keys[1])             -- lets a batch skip unwatched objects
  return tagged(keys[1])
end

-- KEYS[1] = object; ARGV = prefix, wire client, instance.  '1' = owner now, '0' = queued.
local function chc_take(keys, args)
  PREFIX = args[1]
  local ok = derived('o', keys[1])
  local owner = redis.call('GET', ok)
  if not owner or owner == args[3] then
    redis.call('SET', ok, args[3])
    return '1'
  end
  redis.call('RPUSH', derived('w', keys[1]), args[3] .. ' ' .. args[2])
  return '0'
end

-- KEYS[1] = object; ARGV = prefix, instance.  The first waiting instance becomes the owner and
-- its client is notified.
local function chc_release(keys, args)
  PREFIX = args[1]
  local k = keys[1]
  local ok = derived('o', k)
  local owner = redis.call('GET', ok)
  if owner and owner ~= args[2] then return redis.error_reply('CHCOWN ' .. owner) end
  redis.call('DEL', ok)
  local nxt = redis.call('LPOP', derived('w', k))
  if nxt then
    local sp = string.find(nxt, ' ', 1, true)
    local inst, client = string.sub(nxt, 1, sp - 1), string.sub(nxt, sp + 1)
    redis.call('SET', ok, inst)
    redis.call(PUBLISH, PREFIX .. 'n:' .. client, 'O' .. struct.pack('>I4', #k) .. k .. inst)
  end
  return 'ok'
end

-- ARGV = prefix, token, ttl (ms).  Take or renew the namespace's lease for token: 'ok', or the
-- token of the run holding it.
local function chc_lease(keys, args)
  local k = args[1] .. 'lease'
  local cur = redis.call('GET', k)
  if cur and cur ~= args[2] then return cur end
  redis.call('SET', k, args[2], 'PX', args[3])
  return 'ok'
end

-- ARGV = prefix, token.  Give the lease up if token holds it.
local function chc_unlease(keys, args)
  local k = args[1] .. 'lease'
  if redis.call('GET', k) == args[2] then redis.call('DEL', k) end
  return 'ok'
end

-- ARGV = prefix, clock.  Forget clock-log entries (and pre-images) of clocks < clock; returns how
-- many clock-log entries.  The chunks whose least clock is below go; entries of theirs at or
-- above the bound are kept in the chunk, indexed by their new least clock.  A clock-log chunk
-- ("lc:") is a string (see chunk_of), a pre-image chunk ("pc:") a list of clock, field pairs.
local function chc_prune(keys, args)
  -- args[3]: the first clock of the limit's root (each root prunes its own clocks).  A chunk is
  -- scored by its least clock, so those scored from there below the limit hold no entry of a
  -- lower root, and a higher root's are above the limit: kept, and the chunk re-scored.  A
  -- request's chunk with clocks of several roots waits for the lowest one's root.
  local P, limit = args[1], tonumber(args[2])
  if redis.call('EXISTS', P .. 'rn') == 1 then
    -- refusals of the limit's root below it (few: each one is an NF error)
    local first, flat, gone = tonumber(args[3] or '0'), redis.call('HGETALL', P .. 'rf'), {}
    for i = 1, #flat, 2 do
      local c = tonumber(string.match(flat[i + 1], '^%d+'))
      if c >= first and c < limit then gone[#gone + 1] = flat[i] end
    end
    for i = 1, #gone, CHUNK do redis.call('HDEL', P .. 'rf', unpack(gone, i, math.min(i + CHUNK - 1, #gone))) end
    if redis.call('EXISTS', P .. 'rf') == 0 then redis.call('DEL', P .. 'rn') end
  end
  local chunks = redis.call('ZRANGEBYSCORE', P .. 'lz', args[3] or '-inf', '(' .. args[2])
  local n = 0
  for _, chunk in ipairs(chunks) do
    -- a "pc:" chunk lists pre-images (not counted: the clock log's entries are)
    local images = string.sub(chunk, #P + 1, #P + 3) == 'pc:'
    local hash = P .. (images and 'p' or 'l')
    local gone, keep, low = {}, {}, nil
    if images then
      local items = redis.call('LRANGE', chunk, 0, -1)
      for i = 1, #items, 2 do
        local c = tonumber(items[i])
        if c < limit then
          gone[#gone + 1] = items[i + 1]
        else
          keep[#keep + 1] = items[i]
          keep[#keep + 1] = items[i + 1]
          if low == nil or c < low then low = c end
        end
      end
    else
      local raw = redis.call('GET', chunk)
      local count = raw and struct.unpack('>I4', raw, 1) or 0
      local pos = 5 + 4 * count
      for i = 1, count do
        local len = struct.unpack('>I4', raw, 1 + 4 * i)
        local f = string.sub(raw, pos, pos + len - 1)
        pos = pos + len
        local c = tonumber(string.match(f, '^%d+'))
        if c < limit then
          gone[#gone + 1] = f
        else
          keep[#keep + 1] = f
          if low == nil or c < low then low = c end
        end
      end
    end
    for i = 1, #gone, CHUNK do
      local d = redis.call('HDEL', hash, unpack(gone, i, math.min(i + CHUNK - 1, #gone)))
      if not images then n = n + d end
    end
    redis.call('DEL', chunk)
    if #keep > 0 then
      if images then
        variadic('RPUSH', chunk, keep, #keep, 2)
      else
        redis.call('SET', chunk, chunk_of(keep, #keep))
      end
      redis.call('ZADD', P .. 'lz', string.format('%.17g', low), chunk)
    else
      redis.call('ZREM', P .. 'lz', chunk)
    end
  end
  return n
end

-- ARGV = prefix.  Drain the commit reports: "clock:n xor_id " each.
local function chc_commits(keys, args)
  local out = redis.call('GET', args[1] .. 'c') or ''
  redis.call('DEL', args[1] .. 'c')
  if args[2] == nil then return out end
  -- args[2]: a root id; only its reports (a clock's root is in its high bits), the rest stay
  local root, mine, rest = tonumber(args[2]), {}, {}
  for report in string.gmatch(out, '%S+ %S+') do
    local clock = tonumber(string.match(report, '^%d+'))
    if math.floor(clock / 281474976710656) == root then mine[#mine + 1] = report
    else rest[#rest + 1] = report end
  end
  if #rest > 0 then redis.call('SET', args[1] .. 'c', table.concat(rest, ' ') .. ' ') end
  return table.concat(mine, ' ')
end

-- KEYS[1] = object.  Tagged current value, nil when absent (no side effects).
local function chc_peek(keys, args)
  return tagged(keys[1])
end

-- KEYS = objects (one shard's).  Their tagged current values, nil when absent (no side effects):
-- a whole shard's objects in a few calls (objects(), checkpoints), where a call per object cost
-- more than reading it.
local function chc_peek_many(keys, args)
  local out = {}
  for i = 1, #keys do out[i] = tagged(keys[i]) or false end
  return out
end

redis.register_function('chc_batch', chc_batch)
redis.register_function('chc_declare', chc_declare)
redis.register_function('chc_subscribe', chc_subscribe)
redis.register_function('chc_take', chc_take)
redis.register_function('chc_release', chc_release)
redis.register_function('chc_prune', chc_prune)
redis.register_function('chc_lease', chc_lease)
redis.register_function('chc_unlease', chc_unlease)
redis.register_function('chc_commits', chc_commits)
redis.register_function{function_name = 'chc_peek', callback = chc_peek, flags = {'no-writes'}}
redis.register_function{function_name = 'chc_peek_many', callback = chc_peek_many, flags = {'no-writes'}}

-- Custom operations registered at run time follow, one per block:
--   CUSTOM['name'] = function(op) <body> end
-- and so do value operations (chc.nf.value_op with a Lua chunk):
--   VALUE_OPS['name'] = function(value, args) <chunk returning new, result> end
-- op.key (the object's Redis key), op.args (decoded arguments after the name; ObjectKeys are
-- Redis keys), op.default, op.client, op.instance; CHC.read/write/read_number/write_number/
-- read_raw/write_raw/encode/decode are available to the body.  The result is encoded with CHC.encode.
