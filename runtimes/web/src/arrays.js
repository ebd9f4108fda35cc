// @ts-check
/** Small helpers over shapes and typed arrays, shared by the session and the model file. */

import { EdgernnError } from './errors.js';
import { TYPED_ARRAYS as TYPED } from './onnx-file.js';

/** @param {readonly number[]} dims */
export const size = (dims) => dims.reduce((a, b) => a * b, 1);

/** @param {unknown} x @returns {x is ArrayLike<any>} */
export const isArrayLike = (x) => x != null && typeof x === 'object' && typeof (/** @type {any} */ (x)).length === 'number';

/**
 * Sizes of `shape` with the batch and time filled in; other free sizes are -1.
 * @param {(number|string)[]} shape @param {number} batch @param {number} time
 */
export function concrete(shape, batch, time) {
  return shape.map((d) => (d === 'batch' ? batch : d === 'time' ? time : typeof d === 'number' && d >= 0 ? d : -1));
}

/**
 * `value` as the typed array onnxruntime wants for `dtype` (the same array when it already is one).
 * @param {string} dtype @param {ArrayLike<any>} value @param {string} name
 */
export function typed(dtype, value, name) {
  const T = TYPED[dtype];
  if (!T) throw new EdgernnError(`'${name}' has dtype ${dtype}, which edgernn-web does not feed`);
  if (value instanceof T) return value;
  if (dtype === 'int64') return BigInt64Array.from(/** @type {ArrayLike<any>} */ (value), (v) => BigInt(v));
  if (value instanceof BigInt64Array) return T.from(value, Number);
  return T.from(value);
}

/**
 * `data` (size 1 on the batch axis) repeated for `batch` streams.
 * @param {ArrayLike<any>} data @param {number[]} dims @param {number|null} axis @param {number} batch
 */
export function tile(data, dims, axis, batch) {
  const T = /** @type {any} */ (data).constructor;
  if (axis === null || batch === 1) return T.from(data);
  const outer = size(dims.slice(0, axis));
  const inner = size(dims.slice(axis + 1));
  const out = new T(outer * batch * inner);
  for (let o = 0; o < outer; o++) {
    for (let b = 0; b < batch; b++) {
      for (let i = 0; i < inner; i++) out[(o * batch + b) * inner + i] = data[o * inner + i];
    }
  }
  return out;
}
