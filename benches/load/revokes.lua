-- wrk script for benches/load/revokes.sh: each request revokes the next token of a file (one
-- per line) through POST /v1/revoke (RFC 7009). Each wrk thread walks its own slice, once: a
-- token already revoked would be answered without a write.
--
-- Usage: wrk -t THREADS -s revokes.lua URL -- TOKEN_FILE THREADS
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local file = assert(io.open(args[1], "r"), "cannot open token file " .. tostring(args[1]))
  local total = tonumber(args[2]) or 1
  local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
  requests = {}
  local n = 0
  for line in file:lines() do
    if n % total == id then
      requests[#requests + 1] = wrk.format("POST", "/v1/revoke", headers, "token=" .. line)
    end
    n = n + 1
  end
  file:close()
  position = 0
end

function request()
  position = position + 1
  assert(position <= #requests, "out of tokens: raise TOKENS")
  return requests[position]
end
