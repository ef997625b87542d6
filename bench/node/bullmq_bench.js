// bullmq_bench.js — the BullMQ side of kiln's async bench (bench/kiln_bench.py)
//
//     node bullmq_bench.js worker   PORT QUEUE N CONCURRENCY
//     node bullmq_bench.js producer PORT QUEUE N [BATCH]
//
// The worker runs a no-op processor with CONCURRENCY jobs at once, prints
// "READY" once connected, then, when N jobs have completed, one line
// `BENCH_JSON {"completed": N, "done_ms": T}` (T: wall clock, ms) and exits.
// The producer adds N jobs with addBulk, BATCH at a time (1000), each
// carrying the same small JSON body as kiln's bench, and prints
// `BENCH_JSON {"added": N, "start_ms": T0, "end_ms": T1}`.
//
// Both keep BullMQ's defaults (completed jobs stay in Redis, as kiln keeps
// its records for the retention), on their own redis-server.
'use strict';

const { Queue, Worker } = require('bullmq');

function connection(port) {
    //  maxRetriesPerRequest null: what BullMQ asks of a worker's connection
    return { host: '127.0.0.1', port: Number(port), maxRetriesPerRequest: null };
}

async function worker(port, name, n, concurrency) {
    let completed = 0;
    const w = new Worker(name, async () => ({ ok: true }),
                         { connection: connection(port), concurrency: Number(concurrency) });
    w.on('completed', () => {
        completed += 1;
        if (completed === n) {
            process.stdout.write('BENCH_JSON ' + JSON.stringify(
                { completed, done_ms: Date.now() }) + '\n');
            w.close().then(() => process.exit(0));
        }
    });
    w.on('failed', (job, err) => {
        process.stderr.write('job failed: ' + err + '\n');
    });
    await w.waitUntilReady();
    process.stdout.write('READY\n');
}

async function producer(port, name, n, batch) {
    const q = new Queue(name, { connection: connection(port) });
    await q.waitUntilReady();
    const startMs = Date.now();
    for (let done = 0; done < n; ) {
        const size = Math.min(batch, n - done);
        const jobs = [];
        for (let i = 0; i < size; i++)
            jobs.push({ name: 'noop', data: { n: 1 } });
        await q.addBulk(jobs);
        done += size;
    }
    const endMs = Date.now();
    process.stdout.write('BENCH_JSON ' + JSON.stringify(
        { added: n, start_ms: startMs, end_ms: endMs }) + '\n');
    await q.close();
}

async function main() {
    const [mode, port, name, n, extra] = process.argv.slice(2);
    if (mode === 'worker' && extra)
        await worker(port, name, Number(n), Number(extra));
    else if (mode === 'producer' && n)
        await producer(port, name, Number(n), Number(extra || 1000));
    else {
        process.stderr.write('usage: bullmq_bench.js worker PORT QUEUE N CONCURRENCY | '
                             + 'producer PORT QUEUE N [BATCH]\n');
        process.exit(2);
    }
}

main().catch((err) => {
    process.stderr.write(String(err && err.stack || err) + '\n');
    process.exit(1);
});
