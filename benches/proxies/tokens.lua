-- wrk script for benches/proxies/run.sh: every request carries the next token of a small pool
-- (one per line in a file) as `Authorization: Bearer`, plus any `-H` headers given to wrk
-- (benches/load/tokens.lua drops those). Each wrk thread walks its own slice of the file.
--
-- Usage: wrk -t THREADS -s tokens.lua URL -- TOKEN_FILE THREADS
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local file = assert(io.open(args[1], "r"), "cannot open token file " .. tostring(args[1]))
  local total = tonumber(args[2]) or 1
  requests = {}
  local n = 0
  for line in file:lines() do
    if n % total == id then
      local headers = {}
      for name, value in pairs(wrk.headers) do
        headers[name] = value
      end
      headers["Authorization"] = "Bearer " .. line
      -- Formatted once: the pool is small, and the client's own cost stays low.
      requests[#requests + 1] = wrk.format(nil, nil, headers)
    end
    n = n + 1
  end
  file:close()
  position = 0
end

function request()
  position = position % #requests + 1
  return requests[position]
end
