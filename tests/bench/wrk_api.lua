-- wrk script for tevo-hold's API (and the floor app): every request carries a global_id of its
-- own, "<prefix>-<thread>-<n>", n counting from 0 in each wrk thread (thread ids count from 0 in
-- the order wrk sets them up), so release and invoice runs can target holds made beforehand.
--
-- wrk ... -s wrk_api.lua URL -- MODE PREFIX LISTING_PREFIX LISTINGS API_KEY
--   MODE      hold | release | invoice | floor (a hold's body, sent to the floor app)
--   listing   hold and floor: "<LISTING_PREFIX>-<i>", i in 0..LISTINGS-1 (LISTINGS = 1: one listing
--             named LISTING_PREFIX-0, the hot listing)
-- done() prints one line "BENCH_RESULT {json}": requests, duration, errors, HTTP statuses,
-- latency percentiles (microseconds).

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local paths = {hold = "/v1/holds", release = "/v1/releases", invoice = "/v1/invoices",
               floor = "/v1/holds"}

function init(args)
  mode, prefix, lprefix, listings, key = args[1], args[2], args[3], tonumber(args[4]), args[5]
  path = paths[mode]
  headers = {["Content-Type"] = "application/json", ["X-API-Key"] = key}
  n = 0
  statuses = {}
end

function request()
  local gid = prefix .. "-" .. tid .. "-" .. n
  local body
  if mode == "release" then
    body = '{"global_id":"' .. gid .. '"}'
  elseif mode == "invoice" then
    body = '{"global_id":"' .. gid .. '","tevo_order_id":' .. (tid * 100000000 + n) .. '}'
  else
    local rid = lprefix .. "-" .. ((n + tid * 7919) % listings)
    body = '{"remote_id":"' .. rid .. '","quantity":1,"global_id":"' .. gid .. '"}'
  end
  n = n + 1
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local codes, sent = {}, {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      codes[status] = (codes[status] or 0) + count
    end
    table.insert(sent, thread:get("n"))
  end
  local parts = {}
  for status, count in pairs(codes) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  local pcts = {}
  for _, p in ipairs({50, 75, 90, 95, 99, 99.9}) do
    table.insert(pcts, string.format('"%g":%d', p, latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"statuses":{%s},"sent_per_thread":[%s],' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"percentiles":{%s}}}\n',
    summary.requests, summary.duration, table.concat(parts, ","), table.concat(sent, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, table.concat(pcts, ",")))
end
