-- submit.lua — wrk script for the async bench (bench/kiln_bench.py): POSTs
-- the same small JSON body to kiln's queue API, and each wrk thread stops
-- once it has had its share of answers:
--
--     wrk -t2 -c64 -d600s -s submit.lua http://127.0.0.1:PORT/queue/bench/noop -- 50000
--
-- (the argument after -- is the answers each thread waits for). A thread
-- stops sending with requests of its other connections still in flight,
-- which the gateway still queues: the bench counts what was queued from
-- kiln:seq, not from wrk. wrk itself runs for its whole -d regardless, so
-- the bench ends it with SIGINT once kiln:seq shows all were queued (wrk
-- then still prints its summary). Ends with one line of JSON, as post.lua
-- does.

wrk.method = "POST"
wrk.body = '{"n":1}'
wrk.headers["Content-Type"] = "application/json"

local limit = 0
local answered = 0
local refused = 0

function init(args)
    limit = tonumber(args[1]) or 1000
end

function response(status, headers, body)
    answered = answered + 1
    if status ~= 200 then
        refused = refused + 1
    end
    if answered >= limit then
        wrk.thread:stop()
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,' ..
        '"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
        '"errors_status":%d,"errors_timeout":%d,' ..
        '"p50_us":%d,"p99_us":%d}\n',
        summary.requests, summary.duration,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
