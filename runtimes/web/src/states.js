// @ts-check
/**
 * The carried state's values, by state name: the start values of new streams, a state given by the
 * application, and one stream of a batch started afresh. Each function returns a new object of
 * onnxruntime Tensors and leaves the one it was given as it is; the session holds the current one
 * and feeds it to every call.
 */

import { concrete, isArrayLike, size, tile, typed } from './arrays.js';
import { EdgernnError } from './errors.js';
import { TYPED_ARRAYS as TYPED } from './onnx-file.js';

/** @typedef {import('./contract.js').StateSpec} StateSpec */
/** @typedef {import('onnxruntime-common').Tensor} Tensor */

/**
 * Every state at its start value for `batch` streams: zeros, or the value stored in the file
 * (`stored`, size 1 on the batch axis), one copy per stream.
 * @param {any} ort @param {StateSpec[]} states @param {Record<string, any>} stored @param {number} batch
 * @returns {Record<string, Tensor>}
 */
export function startStates(ort, states, stored, batch) {
  /** @type {Record<string, Tensor>} */
  const state = {};
  for (const s of states) {
    const dims = concrete(s.shape, batch, 1);
    if (dims.some((d) => d < 0)) {
      throw new EdgernnError(`state '${s.name}' has shape ${JSON.stringify(s.shape)} with a size not known before ` +
        'the first call; pass {contract} with its sizes');
    }
    const start = stored[s.name];
    const data = start ? tile(start.data, start.dims, s.batch_axis, batch) : new TYPED[s.dtype](size(dims));
    state[s.name] = new ort.Tensor(s.dtype, data, dims);
  }
  return state;
}

/**
 * `values` (every state by name, as Tensors or flat arrays) as Tensors, checked against the states'
 * shapes at `batch` streams.
 * @param {any} ort @param {StateSpec[]} states
 * @param {Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>} values @param {number} batch
 * @returns {Record<string, Tensor>}
 */
export function givenStates(ort, states, values, batch) {
  const names = states.map((s) => s.name);
  const unknown = Object.keys(values).filter((k) => !names.includes(k));
  if (unknown.length) throw new EdgernnError(`unknown state '${unknown[0]}'; this model's states are ${names.join(', ')}`);
  /** @type {Record<string, Tensor>} */
  const next = {};
  for (const s of states) {
    if (!(s.name in values)) throw new EdgernnError(`state '${s.name}' is missing; give every state of the model`);
    const v = /** @type {any} */ (values[s.name]);
    const dims = concrete(s.shape, batch, 1);
    const data = v instanceof ort.Tensor ? v.data : v;
    if (!isArrayLike(data) || data.length !== size(dims)) {
      throw new EdgernnError(`state '${s.name}' has ${isArrayLike(data) ? data.length : 'no'} values; expected ` +
        `${size(dims)} (shape ${JSON.stringify(dims)} for batch ${batch})`);
    }
    next[s.name] = new ort.Tensor(s.dtype, typed(s.dtype, data, s.name), dims);
  }
  return next;
}

/**
 * `current` with stream `index`'s slice of every state back to its start value; the other streams'
 * slices are copied as they are. Every state has a batch axis (the caller checks).
 * @param {any} ort @param {StateSpec[]} states @param {Record<string, Tensor>} current
 * @param {Record<string, any>} stored @param {number} batch @param {number} index
 * @returns {Record<string, Tensor>}
 */
export function withStreamReset(ort, states, current, stored, batch, index) {
  /** @type {Record<string, Tensor>} */
  const next = { ...current };
  for (const s of states) {
    const old = current[s.name];
    const dims = /** @type {number[]} */ (Array.from(old.dims));
    const start = stored[s.name];
    const one = start ? start.data : new TYPED[s.dtype](size(dims) / batch);
    const data = /** @type {any} */ (old.data).slice();
    const axis = /** @type {number} */ (s.batch_axis);
    const outer = size(dims.slice(0, axis));
    const inner = size(dims.slice(axis + 1));
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) data[(o * batch + index) * inner + i] = one[o * inner + i];
    }
    next[s.name] = new ort.Tensor(s.dtype, data, dims);
  }
  return next;
}
