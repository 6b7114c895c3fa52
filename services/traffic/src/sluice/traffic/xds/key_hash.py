"""Endpoint keys reach Envoy as SHA-256 hashes, never as the keys themselves.

Envoy 1.40 compares header values only as they are (RBAC's header matcher), its Lua
API has no digest function, `basic_auth` reads only `Basic` credentials and ext_authz
would be a round trip to a service per request. So a Lua filter of our own, before
RBAC, computes SHA-256 in Lua (LuaJIT's `bit` operations, FIPS 180-4) of the request's
`authorization` header and writes it as `x-sluice-key-sha256`; the route's RBAC policy
compares that header with the hashes of `Bearer <primary key>` and `Bearer <secondary
key>`. The keys stay in the traffic controller: the xDS stream, Envoy's configuration and
its `/config_dump` hold hashes (of 256-bit random keys, which cannot be reversed).

The filter runs on every request and always replaces (or removes) the header, so a
client that sends a hash itself gets a hash of its own `authorization` instead; the
header is removed before the request goes upstream, like the key.
Cost: the digest was a third of the filter's instructions (bench/gateway_cost), and a
client sends the same credential on every request, so each Envoy worker keeps the hashes
of the last CACHED credentials it saw (bounded: past that the table starts over). That
table is in Envoy's memory, as every request's credential is while it is in flight; it is
never in the configuration.
"""

from __future__ import annotations

import hashlib

FILTER = "sluice.key_hash"
HEADER = "x-sluice-key-sha256"
CACHED = 1024  # credentials whose hash each Envoy worker keeps (the filter's cache)


def key_hash(key: str) -> str:
    """What the filter writes for `authorization: Bearer <key>`."""
    return hashlib.sha256(f"Bearer {key}".encode()).hexdigest()


LUA = """\
local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex
local byte, char, rep = string.byte, string.char, string.rep
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}
for i = 1, 64 do K[i] = tobit(K[i]) end
local w = {}

local function sha256(msg)
  local bits = #msg * 8
  msg = msg .. "\\128" .. rep("\\0", (55 - #msg) % 64) .. char(0, 0, 0, 0,
    band(rshift(bits, 24), 255), band(rshift(bits, 16), 255), band(rshift(bits, 8), 255),
    band(bits, 255))
  local h0, h1, h2, h3 = tobit(0x6a09e667), tobit(0xbb67ae85), tobit(0x3c6ef372), tobit(0xa54ff53a)
  local h4, h5, h6, h7 = tobit(0x510e527f), tobit(0x9b05688c), tobit(0x1f83d9ab), tobit(0x5be0cd19)
  for i = 1, #msg, 64 do
    for j = 0, 15 do
      local a, b, c, d = byte(msg, i + 4 * j, i + 4 * j + 3)
      w[j] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for j = 16, 63 do
      local v, u = w[j - 15], w[j - 2]
      local s0 = bxor(ror(v, 7), ror(v, 18), rshift(v, 3))
      local s1 = bxor(ror(u, 17), ror(u, 19), rshift(u, 10))
      w[j] = tobit(w[j - 16] + s0 + w[j - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for j = 0, 63 do
      local t1 = h + bxor(ror(e, 6), ror(e, 11), ror(e, 25)) + bxor(band(e, f), band(bnot(e), g))
        + K[j + 1] + w[j]
      local t2 = bxor(ror(a, 2), ror(a, 13), ror(a, 22)) + bxor(band(a, b), band(a, c), band(b, c))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    h0, h1, h2, h3 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d)
    h4, h5, h6, h7 = tobit(h4 + e), tobit(h5 + f), tobit(h6 + g), tobit(h7 + h)
  end
  return tohex(h0) .. tohex(h1) .. tohex(h2) .. tohex(h3) .. tohex(h4) .. tohex(h5)
    .. tohex(h6) .. tohex(h7)
end

-- The hashes of the credentials this worker saw last: a client sends the same key on every
-- request, and the digest is most of the filter's cost (bench/gateway_cost). Bounded: past
-- CACHED entries the table starts over.
local cache, cached = {}, 0

function envoy_on_request(handle)
  local headers = handle:headers()
  local given = headers:get("authorization")
  if given then
    local hash = cache[given]
    if hash == nil then
      hash = sha256(given)
      if cached >= CACHED then cache, cached = {}, 0 end
      cache[given] = hash
      cached = cached + 1
    end
    headers:replace("HEADER", hash)
  else
    headers:remove("HEADER")
  end
end
""".replace("HEADER", HEADER).replace("CACHED", str(CACHED))
