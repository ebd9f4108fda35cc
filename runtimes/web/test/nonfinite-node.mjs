// The non-finite policy of StreamingSession under Node: `node nonfinite-node.mjs FOLDER` runs each
// check below over the files tests/runtimes/test_web_nonfinite.py writes into FOLDER (gru_step.onnx:
// an ONNX GRU step file, x [1, batch, 8] -> y, state gru.h [1, batch, 16]; lstm_chunk.onnx: an ONNX
// LSTM chunk file, x [batch, time, 8], states lstm.h and lstm.c; nan_start.onnx: stored_init.onnx
// with a NaN in its stored start value) and the shared fixture stored_init.onnx (h' = h + x, from a
// stored start value), prints one line per failure and a count, and exits 1 when one failed.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { StreamingSession } from '../src/index.js';
import { firstNonFinite } from '../src/nonfinite.js';

const folder = process.argv[2];
if (!folder) {
  console.error('usage: node nonfinite-node.mjs FOLDER');
  process.exit(2);
}
const GRU = join(folder, 'gru_step.onnx');
const LSTM = join(folder, 'lstm_chunk.onnx');
const STORED = join(fileURLToPath(import.meta.url), '../../../../tests/fixtures/metadata/files/stored_init.onnx');
const START = [0.5, -1.0, 2.0, 0.25];  // stored_init.onnx's stored start value of h
const sessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1, logSeverityLevel: 3 };

/** @param {string} model @param {object} [options] */
const open = (model, options = {}) => StreamingSession.create(model, { ort, sessionOptions, ...options });

let seed = 1;
/** `n` values in [-1, 1), the same on every run @param {number} n */
function frame(n) {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    out[i] = (seed / 2147483648) * 2 - 1;
  }
  return out;
}

/** @param {any} t */
const values = (t) => Array.from(t.data ?? t, Number);

/** The largest |a - b| over two Tensors or arrays of the same size. @param {any} a @param {any} b */
function maxDiff(a, b) {
  const x = values(a), y = values(b);
  assert.equal(x.length, y.length);
  return x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0);
}

/** Stream `b`'s slice of a [1, batch, n] tensor. @param {any} t @param {number} b @param {number} batch */
function slice(t, b, batch) {
  const n = t.data.length / batch;
  return Array.from(t.data.slice(b * n, (b + 1) * n));
}

/**
 * Awaits `promise`, which must reject with an EdgernnError whose message starts with `start`.
 * @param {Promise<any>} promise @param {string} start
 */
async function rejects(promise, start) {
  await assert.rejects(promise, (e) => {
    assert.equal(/** @type {Error} */ (e).name, 'EdgernnError');
    const { message } = /** @type {Error} */ (e);
    assert.ok(message.startsWith(start), `message: ${message}\nexpected it to start with: ${start}`);
    return true;
  });
}

/** @type {[string, () => Promise<void>][]} */
const checks = [];
/** @param {string} name @param {() => Promise<void>} fn */
const check = (name, fn) => checks.push([name, fn]);

check('the policy is checked when the session opens', async () => {
  await rejects(open(GRU, { nonFinite: 'warn' }), "nonFinite must be one of raise, reset, ignore; got 'warn'");
  assert.equal((await open(GRU)).nonFinite, 'raise');
});

check('firstNonFinite finds NaN and both infinities in float arrays and skips int arrays', async () => {
  const f = new Float32Array(20);
  assert.equal(firstNonFinite(f), -1);
  f.fill(-0);
  assert.equal(firstNonFinite(f), -1);
  for (const [at, v] of [[3, NaN], [17, NaN], [8, Infinity], [19, -Infinity]]) {
    const g = f.slice();
    g[at] = v;
    assert.equal(firstNonFinite(g), at);
  }
  assert.equal(firstNonFinite(Float64Array.of(1, -Infinity)), 1);
  assert.equal(firstNonFinite(Float64Array.of(Number.MAX_VALUE, -Number.MAX_VALUE)), -1);
  assert.equal(firstNonFinite(new Int32Array(9)), -1);
  assert.equal(firstNonFinite(new BigInt64Array(9)), -1);
});

check('raise: a NaN frame names the input and the frame, runs nothing, and the stream goes on', async () => {
  const s = await open(GRU);
  const clean = await open(GRU);
  const f = [0, 1, 2, 3, 4].map(() => frame(8));
  for (const x of f.slice(0, 3)) { await s.step(x); await clean.step(x); }
  const before = s.state['gru.h'];
  const bad = f[3].slice();
  bad[5] = NaN;
  await rejects(s.step(bad), "input 'x' holds NaN at frame 3 of the stream; clean the data, or open the session with nonFinite: 'reset'");
  assert.equal(maxDiff(s.state['gru.h'], before), 0);
  assert.deepEqual(s.stats, { calls: 3, nonFiniteResets: 0 });
  // the refused frame did not run: the next one gives what a stream without it gives
  assert.equal(maxDiff((await s.step(f[4])).y, (await clean.step(f[4])).y), 0);
  bad[5] = -Infinity;
  await rejects(s.step(bad), "input 'x' holds infinity at frame 4 of the stream");
});

check('reset: a NaN frame runs, and the state after it is the start value again', async () => {
  const s = await open(GRU, { nonFinite: 'reset' });
  const clean = await open(GRU);
  const fresh = await open(GRU);
  const f = [0, 1, 2, 3, 4].map(() => frame(8));
  for (const x of f.slice(0, 3)) { await s.step(x); await clean.step(x); }
  const bad = f[3].slice();
  bad[0] = NaN;
  await s.step(bad);
  await clean.step(f[3]);
  assert.deepEqual(values(s.state['gru.h']), new Array(16).fill(0));
  assert.deepEqual(s.stats, { calls: 4, nonFiniteResets: 1 });
  const y = (await s.step(f[4])).y;
  assert.equal(maxDiff(y, (await fresh.step(f[4])).y), 0);  // a fresh stream's output on the same frame
  assert.ok(maxDiff(y, (await clean.step(f[4])).y) > 1e-3);  // (and not the uninterrupted stream's)
});

check('raise: a state the model drives to infinity is named going into the next frame', async () => {
  const s = await open(STORED);
  const big = new Float32Array(4).fill(3e38);
  await s.step(big);
  await s.step(big);  // h = 6e38: infinity in float32, made by the model from finite inputs
  await rejects(s.step(new Float32Array(4).fill(1)),
    "state 'h' holds infinity going into frame 2 of the stream; the model made it, or it was set so: reset() the stream");
  assert.deepEqual(values(s.state.h), new Array(4).fill(Infinity));
  s.reset();
  assert.deepEqual(values((await s.step(new Float32Array(4).fill(1))).y), START.map((v) => v + 1));
});

check('reset: a state that holds infinity goes back to the stored start value before the call', async () => {
  const s = await open(STORED, { nonFinite: 'reset' });
  const fresh = await open(STORED);
  const big = new Float32Array(4).fill(3e38);
  await s.step(big);
  await s.step(big);
  const one = new Float32Array(4).fill(1);
  const y = (await s.step(one)).y;
  assert.deepEqual(values(y), values((await fresh.step(one)).y));
  assert.deepEqual(values(y), START.map((v) => v + 1));
  assert.deepEqual(s.stats, { calls: 3, nonFiniteResets: 1 });
});

check('a state given with infinity is found by the next call (raise), or reset before it (reset)', async () => {
  const h = new Float32Array(16);
  h[7] = Infinity;
  const s = await open(GRU);
  s.state = { 'gru.h': h };
  await rejects(s.step(frame(8)), "state 'gru.h' holds infinity going into frame 0 of the stream");
  const r = await open(GRU, { nonFinite: 'reset' });
  const fresh = await open(GRU);
  r.state = { 'gru.h': h };
  const x = frame(8);
  assert.equal(maxDiff((await r.step(x)).y, (await fresh.step(x)).y), 0);
  assert.equal(r.stats.nonFiniteResets, 1);
});

check("ignore: nothing is checked; onnxruntime's GRU makes a finite state from a NaN frame", async () => {
  const s = await open(GRU, { nonFinite: 'ignore' });
  const x = frame(8);
  x[2] = NaN;
  await s.step(x);
  assert.deepEqual(s.stats, { calls: 1, nonFiniteResets: 0 });
  // the reason for the policy (README): PyTorch's GRU gives NaN here, onnxruntime's kernel numbers
  assert.equal(firstNonFinite(s.state['gru.h'].data), -1);
});

check('reset in a batch: only the stream whose frame held NaN starts over', async () => {
  const batch = 3;
  const s = await open(GRU, { nonFinite: 'reset', batch });
  const clean = await open(GRU, { batch });
  const fresh = await open(GRU);
  const calls = [0, 1, 2, 3].map(() => [0, 1, 2].map(() => frame(8)));
  for (let t = 0; t < 4; t++) {
    const bad = calls[t].map((f) => f.slice());
    if (t === 2) bad[1][4] = NaN;
    const y = (await s.step(bad)).y;
    const want = (await clean.step(calls[t])).y;
    for (const b of [0, 2]) assert.ok(maxDiff(slice(y, b, batch), slice(want, b, batch)) <= 1e-6, `stream ${b}, call ${t}`);
    if (t === 2) assert.deepEqual(slice(s.state['gru.h'], 1, batch), new Array(16).fill(0));
    if (t === 3) assert.ok(maxDiff(slice(y, 1, batch), values((await fresh.step(calls[t][1])).y)) <= 1e-6);
  }
  assert.deepEqual(s.stats, { calls: 4, nonFiniteResets: 1 });
});

check('chunk file: the frame inside the call and the stream are named; reset restarts that stream', async () => {
  const batch = 2;
  /** 5 frames of `batch` streams, each frame [stream 0's 8 values, stream 1's] */
  const chunk = () => [0, 1, 2, 3, 4].map(() => frame(8 * batch));
  const first = chunk(), second = chunk();
  const bad = second.map((f) => f.slice());
  bad[3][8 + 6] = NaN;  // frame 3 of the call, stream 1
  const s = await open(LSTM, { batch });
  await s.chunk(first);
  await rejects(s.chunk(bad), "input 'x' holds NaN at frame 8 of stream 1; clean the data");
  const r = await open(LSTM, { batch, nonFinite: 'reset' });
  const clean = await open(LSTM, { batch });
  await r.chunk(first);
  await clean.chunk(first);
  await r.chunk(bad);
  await clean.chunk(second);
  for (const name of ['lstm.h', 'lstm.c']) {
    assert.deepEqual(slice(r.state[name], 1, batch), new Array(16).fill(0), name);
    assert.ok(maxDiff(slice(r.state[name], 0, batch), slice(clean.state[name], 0, batch)) <= 1e-6, name);
  }
  assert.deepEqual(r.stats, { calls: 2, nonFiniteResets: 1 });
});

check('a stored start value that holds NaN is refused when the file opens (unless ignore)', async () => {
  const nan = join(folder, 'nan_start.onnx');
  await rejects(open(nan), `${nan} stores a start value for state 'h' that holds NaN (value 1); a stream cannot start from it`);
  assert.equal((await open(nan, { nonFinite: 'ignore' })).nonFinite, 'ignore');
});

let failed = 0;
for (const [name, fn] of checks) {
  try {
    await fn();
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${/** @type {Error} */ (e).message}`);
  }
}
console.log(`${checks.length - failed} passed, ${failed} failed (non-finite policy, onnxruntime-node ${ort.env.versions?.common ?? ''})`);
process.exit(failed ? 1 : 0);
