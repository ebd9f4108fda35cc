// What the non-finite check costs, under Node: `node nonfinite-cost.mjs MODEL [ROUNDS] [STEPS]`.
// Not a test (timings vary by machine); runtimes/web/README.md quotes its output for a GRU-256 step file.
// Two sessions over MODEL (a step file with one float input), one with nonFinite "raise" (the frame
// and the carried state checked every call) and one with "ignore" (no check), take the same frames
// in turn, step by step (which of the two goes first alternates from round to round), for ROUNDS
// rounds of STEPS steps each; it prints the median time per step of each, the median of the
// per-round ratios, and the check alone (the same scans over one frame and the state, timed alone).
import * as ort from 'onnxruntime-node';
import { StreamingSession } from '../src/index.js';
import { firstNonFinite } from '../src/nonfinite.js';

const [model, rounds = '40', steps = '500'] = process.argv.slice(2);
if (!model) {
  console.error('usage: node nonfinite-cost.mjs MODEL [ROUNDS] [STEPS]');
  process.exit(2);
}
const options = { ort, sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 } };
const checked = await StreamingSession.create(model, { ...options, nonFinite: 'raise' });
const unchecked = await StreamingSession.create(model, { ...options, nonFinite: 'ignore' });
const [input] = checked.inputs;
const length = input.shape.reduce((/** @type {number} */ a, d) => a * (typeof d === 'number' ? d : 1), 1);
const frames = Array.from({ length: 64 }, () => Float32Array.from({ length }, () => Math.random() * 2 - 1));

/** Mean µs per step of `a` and of `b`, stepped in turn `n` times each. @param {StreamingSession} a @param {StreamingSession} b @param {number} n */
async function time(a, b, n) {
  let ta = 0, tb = 0;
  for (let i = 0; i < n; i++) {
    const x = frames[i % frames.length];
    const t0 = performance.now();
    await a.step(x);
    const t1 = performance.now();
    await b.step(x);
    const t2 = performance.now();
    ta += t1 - t0;
    tb += t2 - t1;
  }
  return [(ta * 1000) / n, (tb * 1000) / n];
}

/** @param {number[]} xs */
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

await time(checked, unchecked, 2000);  // warm-up: JIT, onnxruntime's first runs
const on = [], off = [], ratio = [];
for (let r = 0; r < Number(rounds); r++) {
  const [c, u] = r % 2 ? (await time(unchecked, checked, Number(steps))).reverse() : await time(checked, unchecked, Number(steps));
  on.push(c);
  off.push(u);
  ratio.push(c / u);
}

// the check alone: one scan over the frame and one over each carried state, as a call does
const states = Object.values(checked.state).map((t) => t.data);
const n = 200000;
let sink = 0;
const t0 = performance.now();
for (let i = 0; i < n; i++) {
  sink += firstNonFinite(frames[i % frames.length]);
  for (const d of states) sink += firstNonFinite(d);
}
const scanUs = ((performance.now() - t0) * 1000) / n;
const values = length + states.reduce((a, d) => a + d.length, 0);
console.log(`${model}: ${values} float values checked per step (input ${length}, states ${values - length})`);
console.log(`step, nonFinite "ignore": ${median(off).toFixed(2)} µs (median of ${rounds} rounds of ${steps} steps)`);
console.log(`step, nonFinite "raise":  ${median(on).toFixed(2)} µs`);
console.log(`checked / unchecked: ${median(ratio).toFixed(4)} (median of per-round ratios; ` +
  `${((median(ratio) - 1) * 100).toFixed(2)} %)`);
if (sink !== -n * (1 + states.length)) throw new Error('a frame or state of the timing run was not finite');  // (and keeps the scan live)
console.log(`the scan alone: ${scanUs.toFixed(3)} µs per step (${((scanUs / median(off)) * 100).toFixed(2)} % of a step)`);
await checked.release();
await unchecked.release();
