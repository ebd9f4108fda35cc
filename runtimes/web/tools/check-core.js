// @ts-check
/**
 * The JavaScript side of `edgernn check` (runtimes/check_runners.py, JsLoop): one edgernn-web
 * StreamingSession over a file, fed frames the Python side wrote as raw little-endian `.bin`
 * files (one per input, every call's values one after the other), under Node (check.mjs) or in
 * the browser (check.html). Commands, one object each, answered with plain JSON:
 *
 *   {op: "open", model, base, batch, threads, method: "step"|"chunk", calls, inputs: [{name, dtype, file, size}],
 *    states?: {input: output} (a file without edgernn metadata)}
 *   {op: "stream"}            every call from the start states: {calls: [{output: {dims, data}}], state}
 *   {op: "time", settle}      `settle` untimed calls, then every call from the start states: {us: [...]}
 */

import { StreamingSession } from '../src/index.js';

/** @type {Record<string, any>} */
const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, uint64: BigUint64Array, int32: Int32Array,
  uint32: Uint32Array, int16: Int16Array, uint16: Uint16Array, int8: Int8Array, uint8: Uint8Array, bool: Uint8Array,
  float16: Uint16Array,
};

/** @param {any} t */
const plain = (t) => ({ dims: Array.from(t.dims), data: Array.from(t.data, Number) });

export class Checker {
  /**
   * @param {any} ort onnxruntime-node or onnxruntime-web
   * @param {(path: string) => Promise<ArrayBuffer>} read reads a frames file (or URL) as bytes
   * @param {(threads: number) => object} sessionOptions
   */
  constructor(ort, read, sessionOptions) {
    this.ort = ort;
    this.read = read;
    this.sessionOptions = sessionOptions;
    /** @type {any} */
    this.session = null;
    /** @type {any[][]} each call's argument to step()/chunk() */
    this.calls = [];
    this.method = 'step';
  }

  /** @param {any} cmd */
  async handle(cmd) {
    if (cmd.op === 'open') return this.open(cmd);
    if (!this.session) throw new Error('no file is open');
    if (cmd.op === 'stream') return this.stream();
    if (cmd.op === 'time') return this.time(cmd.settle ?? 0);
    throw new Error(`unknown command ${JSON.stringify(cmd.op)}`);
  }

  /** @param {any} cmd */
  async open(cmd) {
    this.session = await StreamingSession.create(cmd.model, {
      ort: this.ort, batch: cmd.batch ?? 1, sessionOptions: this.sessionOptions(cmd.threads ?? 1),
      ...(cmd.states ? { states: cmd.states } : {}),
    });
    this.method = cmd.method === 'chunk' ? 'chunk' : 'step';
    /** @type {Record<string, any>[]} */
    const perCall = Array.from({ length: cmd.calls }, () => ({}));
    for (const input of cmd.inputs) {
      const Array_ = ARRAYS[input.dtype];
      if (!Array_) throw new Error(`input '${input.name}' has dtype ${input.dtype}, which this check cannot feed`);
      const all = new Array_(await this.read(cmd.base + input.file));
      if (all.length !== input.size * cmd.calls) {
        throw new Error(`input '${input.name}': ${all.length} values in ${input.file}, expected ${input.size * cmd.calls}`);
      }
      for (let k = 0; k < cmd.calls; k++) perCall[k][input.name] = all.subarray(k * input.size, (k + 1) * input.size);
    }
    const single = cmd.inputs.length === 1 ? cmd.inputs[0].name : null;
    this.calls = perCall.map((c) => (single ? c[single] : c));
    return {};
  }

  /** @param {any} value */
  run(value) {
    return this.method === 'chunk' ? this.session.chunk(value) : this.session.step(value);
  }

  async stream() {
    this.session.reset();
    const calls = [];
    for (const value of this.calls) {
      const out = await this.run(value);
      calls.push(Object.fromEntries(Object.entries(out).map(([k, v]) => [k, plain(v)])));
    }
    const state = Object.fromEntries(Object.entries(this.session.state).map(([k, v]) => [k, plain(v)]));
    return { calls, state };
  }

  /** @param {number} settle */
  async time(settle) {
    this.session.reset();
    for (const value of this.calls.slice(0, settle)) await this.run(value);
    this.session.reset();
    const us = [];
    for (const value of this.calls) {
      const t0 = performance.now();
      await this.run(value);
      us.push((performance.now() - t0) * 1000);
    }
    return { us };
  }
}
