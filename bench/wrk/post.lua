-- post.lua — wrk script for the sync bench (bench/kiln_bench.py): every
-- request is the same POST with a JSON body (BENCH_BODY, from the
-- environment), and the run ends with one line of JSON that the bench
-- parses, so no one parses wrk's human output.
--
--     BENCH_BODY='{"a":1}' wrk -t2 -c16 -d5s --latency -s post.lua URL

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"prompt":"a red fox","steps":1}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
        '"errors_status":%d,"errors_timeout":%d,' ..
        '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.mean, latency.max))
end
