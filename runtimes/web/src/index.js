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

import { concrete, size } from './arrays.js';
import { EdgernnError } from './errors.js';
import { chunkFrames, inputTensor, joinFrames, namedInputs } from './feeds.js';
import { ModelFile, contractFromPairs } from './model-file.js';
import { NON_FINITE_POLICIES, along, firstNonFinite, nonFiniteName, nonFiniteStreams, union } from './nonfinite.js';
import { TYPED_ARRAYS as TYPED } from './onnx-file.js';
import { isNode } from './platform.js';
import { givenStates, startStates, withStreamReset } from './states.js';

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
 * @property {NonFinite} [nonFinite] what a call does when its float inputs, or the state carried into
 *   it, hold NaN or infinity (default "raise"; see {@link NonFinite})
 */

/**
 * What a call does when its float inputs, or the state carried into it, hold NaN or infinity; both
 * are checked before the run. "raise": an EdgernnError naming the input or state and the frame of the
 * stream, and nothing runs (the state stays as it was). "reset": the streams affected start over from
 * their start values, counted in `stats.nonFiniteResets`: a state holding NaN is reset before the call
 * runs; a frame holding NaN runs as given (its outputs are what onnxruntime makes of it) and the state
 * after it is reset. "ignore": nothing is checked.
 * @typedef {"raise" | "reset" | "ignore"} NonFinite
 */

/**
 * Counts kept by a session since it was created (`reset()` leaves them).
 * @typedef {object} SessionStats
 * @property {number} calls runs of the model (a `chunk()` of a step-mode file runs it once per frame)
 * @property {number} nonFiniteResets streams put back to their start values because their input or
 *   state held NaN or infinity (`nonFinite: "reset"`)
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
   * @param {NonFinite} nonFinite
   * @private
   */
  constructor(ort, session, contract, contractFrom, stored, batch, source, nonFinite) {
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
    /**
     * what a call does with NaN or infinity in its float inputs or carried state: "raise", "reset"
     * or "ignore" (see {@link NonFinite})
     * @readonly @type {NonFinite}
     */
    this.nonFinite = nonFinite;
    /** @type {SessionStats} */
    this.stats = { calls: 0, nonFiniteResets: 0 };
    /** @private */
    this._stored = stored;
    /** @private @type {Record<string, Tensor>} */
    this._state = {};
    /** @private */
    this._batch = batch;
    /** @private @type {Promise<any>} calls run one after another, in the order they were made */
    this._queue = Promise.resolve();
    /** @private frames the streams have run since create() or reset(), for error messages */
    this._frame = 0;
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
    const nonFinite = options.nonFinite ?? 'raise';
    if (!NON_FINITE_POLICIES.includes(nonFinite)) {
      const got = typeof nonFinite === 'string' ? `'${nonFinite}'` : String(nonFinite);
      throw new EdgernnError(`nonFinite must be one of ${NON_FINITE_POLICIES.join(', ')}; got ${got}`);
    }
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
      if (nonFinite !== 'ignore') checkStored(contract, stored, source);
      return new StreamingSession(ort, session, contract, found?.from ?? 'inferred', stored, batch, source, nonFinite);
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
   * (A state holding NaN or infinity is taken; the next call finds it, as `nonFinite` says.)
   * @param {Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>} values
   */
  set state(values) {
    this._state = givenStates(this.ort, this.states, values, this._batch);
  }

  /**
   * Starts new streams: every state back to its start value (zeros, or the value stored in the file);
   * error messages count frames from 0 again.
   * @param {number} [batch] a new number of streams (default: keep the current one)
   */
  reset(batch) {
    if (batch !== undefined) {
      if (!Number.isInteger(batch) || batch < 1) throw new EdgernnError(`batch must be a whole number of streams, at least 1; got ${batch}`);
      this._batch = batch;
    }
    this._state = startStates(this.ort, this.states, this._stored, this._batch);
    this._frame = 0;
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
      this._state = withStreamReset(this.ort, this.states, this._state, this._stored, this._batch, index);
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
      return this._enqueue({ [fast.name]: new this.ort.Tensor(fast.dtype, frame, fast.dims) }, 1);
    }
    const feeds = namedInputs(this.ort, this.inputs, frame, 'step');
    const strided = this.inputs.find((t) => (t.frame_multiple ?? 1) > 1);
    if (strided) {
      throw new EdgernnError(`input '${strided.name}' takes a multiple of ${strided.frame_multiple} frames per call ` +
        `(the model strides over time or works in blocks of frames); step() feeds 1 frame: use chunk() with a multiple of ${strided.frame_multiple}`);
    }
    /** @type {Record<string, Tensor>} */
    const tensors = {};
    for (const spec of this.inputs) tensors[spec.name] = inputTensor(this.ort, spec, feeds[spec.name], this._batch, 1, 'frame');
    return this._enqueue(tensors, 1);
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
    const named = namedInputs(this.ort, this.inputs, frames, 'chunk');
    const { perFrame, count } = chunkFrames(this.ort, this.inputs, named, this._batch);
    if (this.mode !== 'step') {
      /** @type {Record<string, any>} */
      const tensors = {};
      for (const spec of this.inputs) {
        if (!(spec.name in perFrame)) {
          tensors[spec.name] = inputTensor(this.ort, spec, named[spec.name], this._batch, 1, 'frame');
          continue;
        }
        const parts = perFrame[spec.name].map((f) => inputTensor(this.ort, spec, f, this._batch, 1, 'frame'));
        const axis = /** @type {number} */ (spec.time_axis ?? 0);
        tensors[spec.name] = joinFrames(this.ort, spec.dtype, parts.map((t) => t.data), parts[0].dims, axis, spec.time_axis === null);
      }
      return this._enqueue(tensors, count);
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
      result[spec.name] = joinFrames(this.ort, spec.dtype, parts.map((p) => p.data), parts[0].dims, spec.time_axis ?? 0, stack);
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
   * Runs one call of `frames` frames after the calls before it, and carries its state outputs
   * forward; first checks its float inputs and the state carried into it, as `nonFinite` says.
   * @private @param {Record<string, Tensor>} tensors @param {number} frames
   */
  _enqueue(tensors, frames) {
    const run = async () => {
      const fed = this.nonFinite === 'ignore' ? null : this._checkNonFinite(tensors);
      const feeds = tensors;  // each caller builds a fresh object: the states are added to it
      for (const s of this.states) feeds[s.input] = this._state[s.name];
      const results = await this.session.run(feeds);
      /** @type {Record<string, Tensor>} */
      let next = {};
      for (const s of this.states) next[s.name] = results[s.output];
      if (fed) next = this._restart(next, fed);  // the state made from a frame with NaN is not carried
      this._state = next;
      this._frame += frames;
      this.stats.calls += 1;
      /** @type {Record<string, Tensor>} */
      const out = {};
      for (const spec of this.outputs) out[spec.name] = results[spec.name];
      return out;
    };
    return this._serial(run);
  }

  /**
   * Checks a call's float inputs and the state carried into it for NaN and infinity (one scan each,
   * src/nonfinite.js). "raise": the first found throws, naming the input or state and the frame.
   * "reset": streams whose carried state holds one start over now, before the run, and the streams
   * whose inputs hold one are returned, to start over after it (null: none).
   * @private @param {Record<string, Tensor>} tensors
   * @returns {Set<number> | "all" | null}
   */
  _checkNonFinite(tensors) {
    /** @type {Set<number> | "all" | null} */
    let fed = null;
    for (const spec of this.inputs) {
      const t = tensors[spec.name];
      const i = firstNonFinite(t.data);
      if (i < 0) continue;
      // chunk() stacks the frames of an input without a time axis on a new leading one
      const stacked = t.dims.length === spec.shape.length + 1;
      const time = stacked ? 0 : spec.time_axis;
      const batch = stacked && spec.batch_axis !== null ? spec.batch_axis + 1 : spec.batch_axis;
      if (this.nonFinite === 'raise') {
        const frame = this._frame + (along(i, t.dims, time) ?? 0);
        throw new EdgernnError(`input '${spec.name}' holds ${nonFiniteName(/** @type {number} */ (t.data[i]))} at frame ` +
          `${frame} of ${this._streamName(along(i, t.dims, batch))}; clean the data, or open the session with ` +
          "nonFinite: 'reset' to start such streams over (or 'ignore')");
      }
      fed = union(fed, nonFiniteStreams(/** @type {ArrayLike<number>} */ (t.data), t.dims, batch));
    }
    /** @type {Set<number> | "all" | null} */
    let carried = null;
    for (const s of this.states) {
      const t = this._state[s.name];
      const i = firstNonFinite(t.data);
      if (i < 0) continue;
      if (this.nonFinite === 'raise') {
        throw new EdgernnError(`state '${s.name}' holds ${nonFiniteName(/** @type {number} */ (t.data[i]))} going into ` +
          `frame ${this._frame} of ${this._streamName(along(i, t.dims, s.batch_axis))}; the model made it, or it was set ` +
          "so: reset() the stream, or open the session with nonFinite: 'reset' (or 'ignore')");
      }
      carried = union(carried, nonFiniteStreams(/** @type {ArrayLike<number>} */ (t.data), t.dims, s.batch_axis));
    }
    if (carried) this._state = this._restart(this._state, carried);
    return fed;
  }

  /**
   * `state` with streams `streams` back to their start values (every stream when a state has no batch
   * axis), counted in `stats.nonFiniteResets`.
   * @private @param {Record<string, Tensor>} state @param {Set<number> | "all"} streams
   * @returns {Record<string, Tensor>}
   */
  _restart(state, streams) {
    if (streams === 'all' || streams.size === this._batch || this.states.some((s) => s.batch_axis === null)) {
      this.stats.nonFiniteResets += this._batch;
      return startStates(this.ort, this.states, this._stored, this._batch);
    }
    for (const b of streams) state = withStreamReset(this.ort, this.states, state, this._stored, this._batch, b);
    this.stats.nonFiniteResets += streams.size;
    return state;
  }

  /** "the stream", "stream 2" or "the streams" (a value shared by all). @private @param {number | null} stream */
  _streamName(stream) {
    return this._batch === 1 ? 'the stream' : stream === null ? 'the streams' : `stream ${stream}`;
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
}

/**
 * A stream cannot start from a stored start value that holds NaN or infinity.
 * @param {Contract} contract @param {Record<string, any>} stored @param {string} source
 */
function checkStored(contract, stored, source) {
  for (const s of contract.states) {
    const start = stored[s.name];
    const i = start ? firstNonFinite(start.data) : -1;
    if (i >= 0) {
      throw new EdgernnError(`${source} stores a start value for state '${s.name}' that holds ` +
        `${nonFiniteName(start.data[i])} (value ${i}); a stream cannot start from it (nonFinite: 'ignore' skips this check)`);
    }
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
