// @ts-check
/**
 * The non-finite check: whether a call's float inputs, or the state carried into it, hold NaN or
 * infinity, and where (which frame of the call, which stream of the batch). onnxruntime's GRU and LSTM
 * kernels return finite numbers from a NaN input where PyTorch propagates the NaN, so without this
 * check one NaN frame leaves a finite, wrong state that no later output shows. The session decides
 * what a finding does (its `nonFinite` policy); these functions only look.
 */

import { size } from './arrays.js';

/** The policies a session takes as `nonFinite`. */
export const NON_FINITE_POLICIES = ['raise', 'reset', 'ignore'];

/**
 * Index of the first NaN or ±Inf in `data`, or -1; always -1 for data that is not float (ints,
 * bools), which can hold neither. `v * 0` is ±0 for every finite v and NaN for NaN and ±Inf, so a
 * sum of eight such products is 0 exactly when all eight are finite: one branch per eight values
 * (2.5 times as fast under V8 as a test per value), then a test per value to find which one.
 * @param {unknown} data
 * @returns {number}
 */
export function firstNonFinite(data) {
  if (data instanceof Float32Array) return scan32(data);
  if (data instanceof Float64Array) return scan64(data);
  return -1;
}

/** (one loop per array type, so that each stays monomorphic) @param {Float32Array} d */
function scan32(d) {
  const n = d.length;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const zero = d[i] * 0 + d[i + 1] * 0 + d[i + 2] * 0 + d[i + 3] * 0 + d[i + 4] * 0 + d[i + 5] * 0 + d[i + 6] * 0 + d[i + 7] * 0;
    if (zero !== 0) break;
  }
  for (; i < n; i++) if (d[i] * 0 !== 0) return i;
  return -1;
}

/** @param {Float64Array} d */
function scan64(d) {
  const n = d.length;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const zero = d[i] * 0 + d[i + 1] * 0 + d[i + 2] * 0 + d[i + 3] * 0 + d[i + 4] * 0 + d[i + 5] * 0 + d[i + 6] * 0 + d[i + 7] * 0;
    if (zero !== 0) break;
  }
  for (; i < n; i++) if (d[i] * 0 !== 0) return i;
  return -1;
}

/** "NaN" or "infinity" (either sign), as the Python runtime says it @param {number} v */
export const nonFiniteName = (v) => (Number.isNaN(v) ? 'NaN' : 'infinity');

/**
 * The position of flat index `index` of a tensor of `dims` along `axis` (null: the tensor has no such axis).
 * @param {number} index @param {readonly number[]} dims @param {number | null} axis
 * @returns {number | null}
 */
export function along(index, dims, axis) {
  if (axis === null || axis >= dims.length) return null;
  return Math.floor(index / size(dims.slice(axis + 1))) % dims[axis];
}

/**
 * The streams whose values in `data` (a tensor of `dims` with streams on `batchAxis`) hold NaN or
 * ±Inf; "all" when the tensor has no batch axis (every stream reads it).
 * @param {ArrayLike<number>} data @param {readonly number[]} dims @param {number | null} batchAxis
 * @returns {Set<number> | "all"}
 */
export function nonFiniteStreams(data, dims, batchAxis) {
  if (batchAxis === null) return 'all';
  const streams = new Set();
  for (let i = 0; i < data.length; i++) {
    if (data[i] * 0 !== 0) streams.add(/** @type {number} */ (along(i, dims, batchAxis)));
  }
  return streams;
}

/**
 * Streams in either set ("all": every stream).
 * @param {Set<number> | "all" | null} a @param {Set<number> | "all"} b
 * @returns {Set<number> | "all"}
 */
export function union(a, b) {
  if (a === null) return b;
  if (a === 'all' || b === 'all') return 'all';
  return new Set([...a, ...b]);
}
