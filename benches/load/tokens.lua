-- wrk script: each request carries the next token from a file (one per line), so every
-- request presents a token the server has never seen (cold) or cycles a small pool (warm).
-- Each wrk thread reads only its own slice of the file (line i where i % threads == id).
--
-- Usage: wrk -t THREADS -s tokens.lua URL -- TOKEN_FILE THREADS
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local file = assert(io.open(args[1], "r"), "cannot open token file " .. tostring(args[1]))
  tokens = {}
  local n = 0
  local total = tonumber(args[2]) or 1
  for line in file:lines() do
    if n % total == id then
      tokens[#tokens + 1] = "Bearer " .. line
    end
    n = n + 1
  end
  file:close()
  position = 0
end

function request()
  position = position % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = tokens[position] })
end
