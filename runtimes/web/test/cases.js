// @ts-check
/**
 * Runs stream cases through StreamingSession: the same code under Node (stream-node.mjs, with
 * onnxruntime-node) and in the browser (page.html, with onnxruntime-web), so that both paths are
 * compared with the Python runtime on identical calls (tests/runtimes/test_web.py writes the cases).
 *
 * A case: {name, model (path or URL, after `base`), batch?, states? (pairs for files without
 * metadata), kind: "step"|"chunk", calls: [input, ...], as?: "float32", keep?: false}.
 * Each call's input is what step()/chunk() take: a flat list, nested lists, or {name: ...}; with
 * `as: "float32"` flat lists become Float32Arrays first. The result per case is
 * {calls: [{output: {dims, data}}], state: {name: {dims, data}}, timing: {frameMultiple, delay, delays},
 * stepUs: {p50, mean}, backend}
 * (with `keep: false`, only the timing), or {error, errorName} when something threw. `repeat` runs the
 * calls again (state carried) and `warmup` leaves the first calls out of the timing; `resetStream`
 * ({callIndex: stream}) restarts one stream of the batch before that call; `kind: "plain"`
 * times a hand-written onnxruntime loop instead (see plainLoop).
 */

import { StreamingSession } from '../src/index.js';

/** @param {any} value @param {string | undefined} as */
function convert(value, as) {
  if (as !== 'float32') return value;
  if (Array.isArray(value) && !Array.isArray(value[0])) return Float32Array.from(value);
  if (Array.isArray(value)) return value.map((v) => convert(v, as));
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, convert(v, as)]));
  return value;
}

/** @param {any} t */
const plain = (t) => ({ dims: Array.from(t.dims), data: Array.from(t.data, Number) });

/** @param {number[]} xs */
function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (/** @type {number} */ q) => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { p50: at(0.5) * 1000, p90: at(0.9) * 1000, mean: (s.reduce((a, b) => a + b, 0) / s.length) * 1000 };
}

/**
 * The baseline of benchmarks/web_latency.py: the loop an application writes by hand without this
 * package, over the same file and frames: zero states, `session.run`, the state outputs fed back.
 * `c.plain`: {input, dims, states: [{input, output, dims}]} (taken from the contract by the caller).
 * @param {any} ort @param {string} url @param {any} c @param {object} sessionOptions
 */
async function plainLoop(ort, url, c, sessionOptions) {
  const session = await ort.InferenceSession.create(url, sessionOptions);
  const p = c.plain;
  /** @type {Record<string, any>} */
  let states = {};
  for (const s of p.states) states[s.input] = new ort.Tensor('float32', new Float32Array(size(s.dims)), s.dims);
  const frames = c.calls.map((/** @type {number[]} */ x) => Float32Array.from(x));
  const times = [];
  for (let r = 0; r < (c.repeat ?? 1); r++) {
    for (const x of frames) {
      const t0 = performance.now();
      const out = await session.run({ [p.input]: new ort.Tensor('float32', x, p.dims), ...states });
      /** @type {Record<string, any>} */
      const next = {};
      for (const s of p.states) next[s.input] = out[s.output];
      states = next;
      times.push(performance.now() - t0);
    }
  }
  await session.release();
  const warm = times.slice(Math.min(times.length - 1, c.warmup ?? 0));
  return { stepUs: stats(warm), steps: warm.length };
}

/** @param {number[]} dims */
const size = (dims) => dims.reduce((a, b) => a * b, 1);

/**
 * @param {any} ort onnxruntime-node or onnxruntime-web
 * @param {any[]} cases
 * @param {{base?: string, sessionOptions?: object}} [options]
 */
export async function runCases(ort, cases, { base = '', sessionOptions = {} } = {}) {
  /** @type {Record<string, any>} */
  const results = {};
  for (const c of cases) {
    try {
      if (c.kind === 'plain') {
        results[c.name] = await plainLoop(ort, base + c.model, c, sessionOptions);
        continue;
      }
      const s = await StreamingSession.create(base + c.model, { ort, batch: c.batch ?? 1, states: c.states, sessionOptions });
      const calls = [];
      const times = [];
      const inputs = c.calls.map((/** @type {any} */ x) => convert(x, c.as));
      for (let r = 0; r < (c.repeat ?? 1); r++) {
        for (const [k, input] of inputs.entries()) {
          if (c.resetStream && k in c.resetStream) await s.resetStream(c.resetStream[k]);
          const t0 = performance.now();
          const out = c.kind === 'chunk' ? await s.chunk(input) : await s.step(input);
          times.push(performance.now() - t0);
          if (c.keep !== false) calls.push(Object.fromEntries(Object.entries(out).map(([k, v]) => [k, plain(v)])));
        }
      }
      const state = Object.fromEntries(Object.entries(s.state).map(([k, v]) => [k, plain(v)]));
      const warm = times.slice(Math.min(times.length - 1, c.warmup ?? 0));
      const timing = { frameMultiple: s.frameMultiple, delay: s.delay, delays: s.delays };
      results[c.name] = c.keep === false ? { stepUs: stats(warm), steps: warm.length } : { calls, state, timing, stepUs: stats(warm) };
      await s.release();
    } catch (e) {
      const err = /** @type {Error} */ (e);
      results[c.name] = { error: err.message, errorName: err.name };
    }
  }
  return results;
}
