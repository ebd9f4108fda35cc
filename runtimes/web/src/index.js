// @ts-check
/**
 * edgernn-web: stream edgernn ONNX files with onnxruntime-web (browsers) or onnxruntime-node.
 *
 * Every file `edgernn export` writes describes its recurrent state in its metadata (the state I/O
 * contract, docs/state-contract.md): which graph inputs are data and which carry state, their
 * shapes with the batch and time axes named, and how each state starts. `StreamingSession` reads
 * that description, allocates the start states, and carries each call's state outputs into the
 * next call's state inputs, so an application only feeds frames:
 *
 *   import * as ort from 'onnxruntime-web';              // or 'onnxruntime-node'
 *   import { StreamingSession } from 'edgernn-web';
 *   const s = await StreamingSession.create('gru.onnx', { ort });
 *   const { y } = await s.step(frame);                   // frame: 1 frame of 1 stream, e.g. Float32Array(40)
 *   s.reset();                                           // a new stream: states back to their start values
 *
 * The same class is the Python runtime's `edgernn.runtimes.StreamingSession`, with the same
 * contract and the same checks; tests compare the two on the same frames.
 */

import { concrete, isArrayLike, size, tile, typed } from './arrays.js';
import { EdgernnError } from './errors.js';
import { ModelFile, contractFromPairs } from './model-file.js';
import { TYPED_ARRAYS as TYPED } from './onnx-file.js';
import { isNode } from './platform.js';

export { EdgernnError } from './errors.js';
export { FORMAT_VERSION, contractFromJson, contractFromMetadata } from './contract.js';
export { contractFromPairs } from './model-file.js';
export { readInitializers, readMetadata } from './onnx-file.js';
export { isOrtFormat, readOrtMetadata } from './ort-file.js';

/** @typedef {import('./contract.js').TensorSpec} TensorSpec */
/** @typedef {import('./contract.js').StateSpec} StateSpec */
/** @typedef {import('./contract.js').Contract} Contract */
/** @typedef {import('./model-file.js').ContractFrom} ContractFrom */

/**
 * A value as this package hands it out: an onnxruntime Tensor (`.data`, `.dims`, `.type`).
 * @typedef {import('onnxruntime-common').Tensor} Tensor
 */

/**
 * Frame data: a typed array or a plain array of numbers, flat, in the model's layout; or, for a batch,
 * one such array per stream. A number for an input of rank 0 (a setting such as a sample rate).
 * @typedef {ArrayLike<number> | ArrayLike<bigint> | ArrayLike<number>[] | number} FrameData
 */

/**
 * @typedef {object} OpenOptions
 * @property {any} [ort] the onnxruntime module (`import * as ort from 'onnxruntime-web'` or
 *   'onnxruntime-node'); default: `globalThis.ort` (a script tag), else onnxruntime-node under Node,
 *   else onnxruntime-web
 * @property {number} [batch] number of streams run side by side (default 1)
 * @property {object} [sessionOptions] passed to `ort.InferenceSession.create`
 *   (e.g. `{executionProviders: ['webgpu', 'wasm']}`)
 * @property {Record<string, string>} [states] state pairs, graph input name -> graph output name, for a
 *   file without edgernn metadata (or to override it)
 * @property {Contract} [contract] the whole contract, given yourself (checked as the metadata is)
 * @property {string} [name] how errors name the model (default: its path or URL)
 */

/** The onnxruntime module to use when none is given. */
async function defaultOrt() {
  const g = /** @type {any} */ (globalThis);
  if (g.ort && g.ort.InferenceSession) return g.ort;
  const name = isNode ? 'onnxruntime-node' : 'onnxruntime-web';
  try {
    return await import(name);
  } catch {
    throw new EdgernnError(`no onnxruntime module was given and '${name}' cannot be imported; install it ` +
      `(npm install ${name}) or pass {ort} to StreamingSession.create`);
  }
}

/**
 * A file whose input strides over time needs calls of several frames along a time axis.
 * @param {Contract} contract @param {string} source
 */
function checkTiming(contract, source) {
  for (const t of contract.inputs) {
    const m = t.frame_multiple ?? 1;
    if (m === 1) continue;
    if (contract.mode === 'step') {
      throw new EdgernnError(`${source} is a step-mode file whose input '${t.name}' takes a multiple of ${m} frames ` +
        'per call, but a step file takes one frame per call; re-export it in chunk mode');
    }
    if (t.time_axis === null) {
      throw new EdgernnError(`${source} declares frame_multiple ${m} for input '${t.name}', which has no time axis; re-export it`);
    }
  }
}

/** @param {number} a @param {number} b @returns {number} */
const gcd = (a, b) => (b ? gcd(b, a % b) : a);

/**
 * One onnxruntime session over an edgernn file, carrying the recurrent state between calls, for
 * one stream or a batch of streams. Create it with `await StreamingSession.create(model, options)`.
 *
 * Layouts are the model's own (`edgernn info` prints them): a frame for input `x` of shape
 * `[1, "batch", 40]` is 40 values for one stream, or `batch` × 40 values (or `batch` arrays of 40).
 */
export class StreamingSession {
  /**
   * @param {any} ort @param {any} session @param {Contract} contract @param {ContractFrom} contractFrom
   * @param {Record<string, any>} stored @param {number} batch @param {string} source
   * @private
   */
  constructor(ort, session, contract, contractFrom, stored, batch, source) {
    /** the onnxruntime module in use */
    this.ort = ort;
    /** the underlying onnxruntime InferenceSession */
    this.session = session;
    /** @type {Contract} */
    this.contract = contract;
    /**
     * where the contract came from: "metadata" (the file's), "sidecar" (the `<name>.edgernn.json`
     * beside an `.ort` file), "given" ({contract}) or "inferred" (from the {states} pairs)
     * @type {ContractFrom}
     */
    this.contractFrom = contractFrom;
    /** how errors name the model */
    this.source = source;
    /** @private */
    this._stored = stored;
    /** @private @type {Record<string, Tensor>} */
    this._state = {};
    /** @private */
    this._batch = batch;
    /** @private @type {Promise<any>} calls run one after another, in the order they were made */
    this._queue = Promise.resolve();
    this.reset(batch);
  }

  /**
   * Opens `model` (a path under Node, a URL, or the file's bytes; `.onnx` or `.ort`) and reads its
   * state contract: from {contract}, else from the {states} pairs, else from the file's metadata,
   * else, for an `.ort` file, from the `<name>.edgernn.json` beside it. Stored start values of an
   * `.ort` file come from the `<name>.state_init.npz` beside it.
   * @param {string | URL | ArrayBuffer | Uint8Array} model
   * @param {OpenOptions} [options]
   * @returns {Promise<StreamingSession>}
   */
  static async create(model, options = {}) {
    const source = options.name ?? (model instanceof Uint8Array || model instanceof ArrayBuffer ? 'the model' : String(model));
    const batch = options.batch ?? 1;
    if (!Number.isInteger(batch) || batch < 1) throw new EdgernnError(`batch must be a whole number of streams, at least 1; got ${batch}`);
    const ort = options.ort ?? (await defaultOrt());
    const file = await ModelFile.open(model, source);
    const found = await file.contract({ contract: options.contract, states: options.states });
    let session;
    try {
      session = await ort.InferenceSession.create(file.bytes, options.sessionOptions ?? {});
    } catch (e) {
      throw new EdgernnError(`onnxruntime cannot load ${source}: ${String(/** @type {Error} */ (e).message ?? e).split('\n')[0]}`);
    }
    try {
      let contract = found?.contract;
      if (!contract) {
        if (!options.states) {
          throw new EdgernnError(`${source} has no edgernn metadata (metadata_props 'edgernn.format' is missing), so ` +
            `which inputs carry state is unknown; pass {states: {'<state input>': '<state output>', ...}} naming ` +
            `each pair (its inputs: ${session.inputNames.join(', ')}; outputs: ${session.outputNames.join(', ')}), ` +
            'or export it with edgernn export');
        }
        contract = contractFromPairs(session, options.states, source);
      }
      checkIO(session, contract, source);
      checkTiming(contract, source);
      const stored = await file.startValues(contract);
      return new StreamingSession(ort, session, contract, found?.from ?? 'inferred', stored, batch, source);
    } catch (e) {
      await session.release().catch(() => {});  // nothing is left open when create() throws
      throw e;
    }
  }

  /** "step", "chunk" or "sequence" @returns {Contract["mode"]} */
  get mode() {
    return this.contract.mode;
  }

  /** The data inputs. @returns {TensorSpec[]} */
  get inputs() {
    return this.contract.inputs;
  }

  /** The data outputs. @returns {TensorSpec[]} */
  get outputs() {
    return this.contract.outputs;
  }

  /** The state pairs. @returns {StateSpec[]} */
  get states() {
    return this.contract.states;
  }

  /**
   * The frames of every call must be a multiple of this (the model strides over time or works in blocks of frames; 1: any number):
   * the least common multiple of the inputs' `frame_multiple`.
   * @returns {number}
   */
  get frameMultiple() {
    return this.inputs.reduce((l, t) => { const m = t.frame_multiple ?? 1; return (l / gcd(l, m)) * m; }, 1);
  }

  /**
   * Per data output: frames of lookahead (`delay`). Outputs come as the file produces them: frame t
   * of a stream's output is frame t - delay of the model's output on the whole sequence.
   * @returns {Record<string, number>}
   */
  get delays() {
    return Object.fromEntries(this.outputs.map((t) => [t.name, t.delay ?? 0]));
  }

  /** The largest delay of the data outputs, in frames (0: no lookahead). @returns {number} */
  get delay() {
    return this.outputs.reduce((d, t) => Math.max(d, t.delay ?? 0), 0);
  }

  /** Number of streams run side by side. */
  get batch() {
    return this._batch;
  }

  /**
   * The carried state by name (onnxruntime Tensors; a new object each time).
   * @returns {Record<string, Tensor>}
   */
  get state() {
    return { ...this._state };
  }

  /**
   * Replaces the carried state: every state by name, as Tensors or flat arrays of the right size.
   * @param {Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>} values
   */
  set state(values) {
    const names = this.states.map((s) => s.name);
    const unknown = Object.keys(values).filter((k) => !names.includes(k));
    if (unknown.length) throw new EdgernnError(`unknown state '${unknown[0]}'; this model's states are ${names.join(', ')}`);
    /** @type {Record<string, Tensor>} */
    const next = {};
    for (const s of this.states) {
      if (!(s.name in values)) throw new EdgernnError(`state '${s.name}' is missing; give every state of the model`);
      const v = /** @type {any} */ (values[s.name]);
      const dims = concrete(s.shape, this._batch, 1);
      const data = v instanceof this.ort.Tensor ? v.data : v;
      if (!isArrayLike(data) || data.length !== size(dims)) {
        throw new EdgernnError(`state '${s.name}' has ${isArrayLike(data) ? data.length : 'no'} values; expected ` +
          `${size(dims)} (shape ${JSON.stringify(dims)} for batch ${this._batch})`);
      }
      next[s.name] = new this.ort.Tensor(s.dtype, typed(s.dtype, data, s.name), dims);
    }
    this._state = next;
  }

  /**
   * Starts new streams: every state back to its start value (zeros, or the value stored in the file).
   * @param {number} [batch] a new number of streams (default: keep the current one)
   */
  reset(batch) {
    if (batch !== undefined) {
      if (!Number.isInteger(batch) || batch < 1) throw new EdgernnError(`batch must be a whole number of streams, at least 1; got ${batch}`);
      this._batch = batch;
    }
    /** @type {Record<string, Tensor>} */
    const state = {};
    for (const s of this.states) {
      const dims = concrete(s.shape, this._batch, 1);
      if (dims.some((d) => d < 0)) {
        throw new EdgernnError(`state '${s.name}' has shape ${JSON.stringify(s.shape)} with a size not known before ` +
          'the first call; pass {contract} with its sizes');
      }
      const start = this._stored[s.name];
      const data = start ? tile(start.data, start.dims, s.batch_axis, this._batch) : new TYPED[s.dtype](size(dims));
      state[s.name] = new this.ort.Tensor(s.dtype, data, dims);
    }
    this._state = state;
    // the common call, one typed array of exactly one frame for a model with one input, skips the
    // general checks: its dims at this batch and the length that passes them are known now
    const only = this.inputs.length === 1 ? this.inputs[0] : null;
    const dims = only ? concrete(only.shape, this._batch, 1) : [];
    /** @private */
    this._fast = only && !dims.some((d) => d < 0) && TYPED[only.dtype] && (only.frame_multiple ?? 1) === 1
      ? { name: only.name, dtype: only.dtype, type: TYPED[only.dtype], dims, length: size(dims) }
      : null;
  }

  /**
   * Starts stream `index` of the batch afresh (its slice of every state back to the start value);
   * the other streams keep theirs. Takes effect from the next call (after calls already made).
   * @param {number} index 0 <= index < batch
   * @returns {Promise<void>}
   */
  resetStream(index) {
    if (!Number.isInteger(index) || index < 0 || index >= this._batch) {
      throw new EdgernnError(`stream ${index} does not exist; this session runs streams 0 to ${this._batch - 1}`);
    }
    const shared = this.states.find((s) => s.batch_axis === null);
    if (shared) throw new EdgernnError(`state '${shared.name}' has no batch axis, so all streams share it; use reset()`);
    const run = () => {
      /** @type {Record<string, Tensor>} */
      const next = { ...this._state };
      for (const s of this.states) {
        const old = this._state[s.name];
        const dims = /** @type {number[]} */ (Array.from(old.dims));
        const start = this._stored[s.name];
        const one = start ? start.data : new TYPED[s.dtype](size(dims) / this._batch);
        const data = /** @type {any} */ (old.data).slice();
        const axis = /** @type {number} */ (s.batch_axis);
        const outer = size(dims.slice(0, axis));
        const inner = size(dims.slice(axis + 1));
        for (let o = 0; o < outer; o++) {
          for (let i = 0; i < inner; i++) data[(o * this._batch + index) * inner + i] = one[o * inner + i];
        }
        next[s.name] = new this.ort.Tensor(s.dtype, data, dims);
      }
      this._state = next;
    };
    return this._serial(run);
  }

  /**
   * Feeds one frame per stream; resolves to the data outputs by name.
   * `frame`: the frame of the model's only streamed input, or `{inputName: frame, ...}`.
   * @param {FrameData | Record<string, FrameData>} frame
   * @returns {Promise<Record<string, Tensor>>}
   */
  step(frame) {
    const fast = this._fast;
    if (fast && frame instanceof fast.type && /** @type {ArrayLike<number>} */ (frame).length === fast.length) {
      return this._enqueue({ [fast.name]: new this.ort.Tensor(fast.dtype, frame, fast.dims) });
    }
    const feeds = this._named(frame, 'step');
    const strided = this.inputs.find((t) => (t.frame_multiple ?? 1) > 1);
    if (strided) {
      throw new EdgernnError(`input '${strided.name}' takes a multiple of ${strided.frame_multiple} frames per call ` +
        `(the model strides over time or works in blocks of frames); step() feeds 1 frame: use chunk() with a multiple of ${strided.frame_multiple}`);
    }
    /** @type {Record<string, Tensor>} */
    const tensors = {};
    for (const spec of this.inputs) tensors[spec.name] = this._tensor(spec, feeds[spec.name], 1, 'frame');
    return this._enqueue(tensors);
  }

  /**
   * Feeds several frames per stream, carrying state; resolves to the outputs joined along time.
   * `frames`: an array of frames (each as `step` takes them), or one flat array in the model's layout
   * with the time axis holding the frames (`[time, batch, features]` for a step file, `[batch, time,
   * features]` for a batch-first chunk file); or `{inputName: frames, ...}`. A chunk-mode file takes all
   * frames in one call; a step-mode file one call per frame. Outputs without a time axis are stacked
   * on a new leading axis, one entry per frame, for a step file (as Python's `stream` does). A file that
   * strides over time takes a multiple of `frameMultiple` frames per call; outputs with lookahead come as
   * the file produces them (`delays`: frame t is the model's frame t - delay).
   * @param {FrameData[] | ArrayLike<number> | Record<string, FrameData[] | ArrayLike<number> | number>} frames
   * @returns {Promise<Record<string, Tensor>>}
   */
  async chunk(frames) {
    const named = this._named(frames, 'chunk');
    const streamed = this.inputs.filter((s) => s.batch_axis !== null || s.time_axis !== null);
    if (!streamed.length) throw new EdgernnError('this model has no input with a batch or time axis to stream; call step() instead');
    /** @type {Record<string, any[]>} */
    const perFrame = {};
    let count = -1;
    for (const spec of streamed) {
      const frameList = this._frames(spec, named[spec.name]);
      if (count >= 0 && frameList.length !== count) {
        throw new EdgernnError(`inputs have different numbers of frames (${count} and ${frameList.length} for '${spec.name}')`);
      }
      count = frameList.length;
      perFrame[spec.name] = frameList;
    }
    if (count === 0) throw new EdgernnError('chunk() got no frames; expected at least one');
    for (const spec of streamed) {
      const m = spec.frame_multiple ?? 1;
      if (count % m) {
        throw new EdgernnError(`input '${spec.name}' takes a multiple of ${m} frames per call (the model strides over time or works in blocks of frames); got ${count}`);
      }
    }
    if (this.mode !== 'step') {
      /** @type {Record<string, any>} */
      const tensors = {};
      for (const spec of this.inputs) {
        if (!(spec.name in perFrame)) {
          tensors[spec.name] = this._tensor(spec, named[spec.name], 1, 'frame');
          continue;
        }
        const frameDims = concrete(spec.shape, this._batch, 1);
        const parts = perFrame[spec.name].map((f) => this._tensor(spec, f, 1, 'frame'));
        const axis = /** @type {number} */ (spec.time_axis ?? 0);
        tensors[spec.name] = this._joined(spec.dtype, parts.map((t) => t.data), parts[0].dims, axis, spec.time_axis === null);
      }
      return this._enqueue(tensors);
    }
    /** @type {Record<string, Tensor[]>} */
    const pieces = {};
    for (const spec of this.outputs) pieces[spec.name] = [];
    for (let t = 0; t < count; t++) {
      /** @type {Record<string, any>} */
      const call = {};
      for (const spec of this.inputs) call[spec.name] = spec.name in perFrame ? perFrame[spec.name][t] : named[spec.name];
      const out = await this.step(call);
      for (const spec of this.outputs) pieces[spec.name].push(out[spec.name]);
    }
    /** @type {Record<string, Tensor>} */
    const result = {};
    for (const spec of this.outputs) {
      const parts = pieces[spec.name];
      const stack = spec.time_axis === null;
      result[spec.name] = this._joined(spec.dtype, parts.map((p) => p.data), parts[0].dims, spec.time_axis ?? 0, stack);
    }
    return result;
  }

  /** Frees onnxruntime's session. */
  async release() {
    await this._queue;  // (never rejects: _serial catches)
    await this.session.release();
  }

  // ---------------------------------------------------------------------------------------------

  /**
   * Runs one call after the calls before it, and carries its state outputs forward.
   * @private @param {Record<string, Tensor>} tensors
   */
  _enqueue(tensors) {
    const run = async () => {
      const feeds = tensors;  // each caller builds a fresh object: the states are added to it
      for (const s of this.states) feeds[s.input] = this._state[s.name];
      const results = await this.session.run(feeds);
      /** @type {Record<string, Tensor>} */
      const next = {};
      for (const s of this.states) next[s.name] = results[s.output];
      this._state = next;
      /** @type {Record<string, Tensor>} */
      const out = {};
      for (const spec of this.outputs) out[spec.name] = results[spec.name];
      return out;
    };
    return this._serial(run);
  }

  /**
   * Runs `fn` after every call made before it (a failed call does not stop the ones after it).
   * @private @template T @param {() => T | Promise<T>} fn @returns {Promise<T>}
   */
  _serial(fn) {
    const p = this._queue.then(fn);
    this._queue = p.catch(() => {});
    return p;
  }

  /**
   * Input values by name, from a bare value (models with one streamed input) or an object.
   * @private @param {any} value @param {string} call
   * @returns {Record<string, any>}
   */
  _named(value, call) {
    const names = this.inputs.map((s) => s.name);
    const plain = value != null && typeof value === 'object' && !isArrayLike(value) && !(value instanceof this.ort.Tensor);
    /** @type {Record<string, any>} */
    let named;
    if (plain) named = value;
    else if (names.length === 1) named = { [names[0]]: value };
    else {
      throw new EdgernnError(`this model takes ${names.length} inputs (${names.join(', ')}); pass ${call}({${names.map((n) => `'${n}': ...`).join(', ')}})`);
    }
    for (const k of Object.keys(named)) {
      if (!names.includes(k)) throw new EdgernnError(`unknown input '${k}'; the model's inputs are ${names.join(', ')}`);
    }
    const missing = names.filter((n) => named[n] === undefined);
    if (missing.length) throw new EdgernnError(`input '${missing[0]}' is missing; the model's inputs are ${names.join(', ')}`);
    return named;
  }

  /**
   * A Tensor for `spec` holding `frames` frames per stream, checked against the model's shape.
   * @private @param {TensorSpec} spec @param {any} value @param {number} frames @param {string} what
   * @returns {Tensor}
   */
  _tensor(spec, value, frames, what) {
    if (value instanceof this.ort.Tensor) value = value.data;
    const dims = concrete(spec.shape, this._batch, frames);
    if (typeof value === 'number' || typeof value === 'bigint') value = [value];
    if (!isArrayLike(value)) {
      throw new EdgernnError(`input '${spec.name}' got ${value === null ? 'null' : typeof value}; expected a typed array or an array of numbers`);
    }
    if (value.length > 0 && isArrayLike(value[0])) value = this._perStream(spec, value, dims);
    const free = dims.map((d, i) => (d < 0 ? i : -1)).filter((i) => i >= 0);
    const known = size(dims.filter((d) => d >= 0));
    if (free.length === 1 && known > 0 && value.length % known === 0 && value.length > 0) dims[free[0]] = value.length / known;
    if (dims.some((d) => d < 0) || value.length !== size(dims)) {
      const streams = this._batch === 1 ? '1 stream' : `${this._batch} streams`;
      throw new EdgernnError(`input '${spec.name}' got ${value.length} values; one ${what} for ${streams} needs ` +
        `${dims.some((d) => d < 0) ? `a multiple of ${known}` : size(dims)} (shape ${JSON.stringify(spec.shape)} ` +
        `with batch ${this._batch}${spec.time_axis !== null ? `, time ${frames}` : ''})`);
    }
    return new this.ort.Tensor(spec.dtype, typed(spec.dtype, value, spec.name), dims);
  }

  /**
   * Joins one array per stream into the flat layout, when streams are the outermost axis.
   * @private @param {TensorSpec} spec @param {ArrayLike<any>} value @param {number[]} dims
   */
  _perStream(spec, value, dims) {
    const axis = spec.batch_axis;
    if (axis === null || dims.slice(0, axis).some((d) => d !== 1)) {
      throw new EdgernnError(`input '${spec.name}' got nested arrays, but its streams are not its outermost axis ` +
        `(shape ${JSON.stringify(spec.shape)}); pass one flat array in that layout`);
    }
    if (value.length !== this._batch) {
      throw new EdgernnError(`input '${spec.name}' got ${value.length} streams; this session runs ${this._batch} (reset(batch) changes it)`);
    }
    const flat = [];
    for (let b = 0; b < value.length; b++) for (let i = 0; i < value[b].length; i++) flat.push(value[b][i]);
    return flat;
  }

  /**
   * The frames of one streamed input: an array of frames, or one flat array along the time axis.
   * @private @param {TensorSpec} spec @param {any} value
   * @returns {any[]}
   */
  _frames(spec, value) {
    if (value instanceof this.ort.Tensor) value = value.data;
    if (!isArrayLike(value)) throw new EdgernnError(`input '${spec.name}' got ${typeof value}; expected an array of frames or a flat array`);
    if (value.length === 0) return [];
    if (isArrayLike(value[0])) return Array.from(value);
    const frame = concrete(spec.shape, this._batch, 1);
    if (frame.some((d) => d < 0)) throw new EdgernnError(`input '${spec.name}' has free sizes ${JSON.stringify(spec.shape)}; pass chunk() an array of frames`);
    const n = size(frame);
    if (value.length % n !== 0) {
      throw new EdgernnError(`input '${spec.name}' got ${value.length} values, not a whole number of frames of ${n} ` +
        `(shape ${JSON.stringify(spec.shape)} with batch ${this._batch})`);
    }
    const count = value.length / n;
    const axis = spec.time_axis ?? 0;  // no time axis: frames follow one another
    const outer = spec.time_axis === null ? 1 : size(frame.slice(0, axis));
    const inner = spec.time_axis === null ? n : size(frame.slice(axis + 1));
    const frames = [];
    for (let t = 0; t < count; t++) {
      /** @type {any} */
      const f = Array.isArray(value) ? new Array(n) : new (/** @type {any} */ (value).constructor)(n);
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) f[o * inner + i] = value[(o * count + t) * inner + i];
      }
      frames.push(f);
    }
    return frames;
  }

  /**
   * Joins per-frame values along `axis` (or stacks them on a new leading axis when `stack`).
   * @private @param {string} dtype @param {ArrayLike<any>[]} parts @param {readonly number[]} dims
   * @param {number} axis @param {boolean} stack
   */
  _joined(dtype, parts, dims, axis, stack) {
    const count = parts.length;
    const n = size(dims);
    const outer = stack ? 1 : size(dims.slice(0, axis));
    const inner = stack ? n : size(dims.slice(axis + 1));
    const step = stack ? 1 : dims[axis];
    const data = new TYPED[dtype](n * count);
    for (let t = 0; t < count; t++) {
      const p = parts[t];
      for (let o = 0; o < outer; o++) {
        const block = step * inner;
        for (let i = 0; i < block; i++) data[(o * count + t) * block + i] = p[o * block + i];
      }
    }
    const out = stack ? [count, ...dims] : dims.map((d, i) => (i === axis ? d * count : d));
    return new this.ort.Tensor(dtype, data, out);
  }
}

/**
 * Checks that the contract names the session's graph inputs and outputs.
 * @param {any} session @param {Contract} contract @param {string} source
 */
function checkIO(session, contract, source) {
  for (const name of [...contract.inputs.map((t) => t.name), ...contract.states.map((s) => s.input)]) {
    if (!session.inputNames.includes(name)) {
      throw new EdgernnError(`${source} has no graph input '${name}'; its inputs are ${session.inputNames.join(', ')}`);
    }
  }
  for (const name of [...contract.outputs.map((t) => t.name), ...contract.states.map((s) => s.output)]) {
    if (!session.outputNames.includes(name)) {
      throw new EdgernnError(`${source} has no graph output '${name}'; its outputs are ${session.outputNames.join(', ')}`);
    }
  }
}
