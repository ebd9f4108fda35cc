// @ts-check
/**
 * What a call feeds: the values an application passes to `step()` and `chunk()`, named by input,
 * checked against the model's shapes and made into onnxruntime Tensors; and a chunk's frames, split
 * apart along the time axis and joined back along it. The session decides which call runs; these
 * functions only check and lay out values, with the session's `ort` module and number of streams.
 */

import { concrete, isArrayLike, size, typed } from './arrays.js';
import { EdgernnError } from './errors.js';
import { TYPED_ARRAYS as TYPED } from './onnx-file.js';

/** @typedef {import('./contract.js').TensorSpec} TensorSpec */
/** @typedef {import('onnxruntime-common').Tensor} Tensor */

/**
 * Input values by name, from a bare value (models with one streamed input) or an object.
 * @param {any} ort @param {TensorSpec[]} inputs @param {any} value @param {string} call
 * @returns {Record<string, any>}
 */
export function namedInputs(ort, inputs, value, call) {
  const names = inputs.map((s) => s.name);
  const plain = value != null && typeof value === 'object' && !isArrayLike(value) && !(value instanceof ort.Tensor);
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
 * @param {any} ort @param {TensorSpec} spec @param {any} value @param {number} batch
 * @param {number} frames @param {string} what how the error names one call's value ("frame")
 * @returns {Tensor}
 */
export function inputTensor(ort, spec, value, batch, frames, what) {
  if (value instanceof ort.Tensor) value = value.data;
  const dims = concrete(spec.shape, batch, frames);
  if (typeof value === 'number' || typeof value === 'bigint') value = [value];
  if (!isArrayLike(value)) {
    throw new EdgernnError(`input '${spec.name}' got ${value === null ? 'null' : typeof value}; expected a typed array or an array of numbers`);
  }
  if (value.length > 0 && isArrayLike(value[0])) value = perStream(spec, value, dims, batch);
  // one size the contract leaves free (neither batch nor time) is read off the value's length
  const free = dims.map((d, i) => (d < 0 ? i : -1)).filter((i) => i >= 0);
  const known = size(dims.filter((d) => d >= 0));
  if (free.length === 1 && known > 0 && value.length % known === 0 && value.length > 0) dims[free[0]] = value.length / known;
  if (dims.some((d) => d < 0) || value.length !== size(dims)) {
    const streams = batch === 1 ? '1 stream' : `${batch} streams`;
    throw new EdgernnError(`input '${spec.name}' got ${value.length} values; one ${what} for ${streams} needs ` +
      `${dims.some((d) => d < 0) ? `a multiple of ${known}` : size(dims)} (shape ${JSON.stringify(spec.shape)} ` +
      `with batch ${batch}${spec.time_axis !== null ? `, time ${frames}` : ''})`);
  }
  return new ort.Tensor(spec.dtype, typed(spec.dtype, value, spec.name), dims);
}

/**
 * Joins one array per stream into the flat layout, when streams are the outermost axis.
 * @param {TensorSpec} spec @param {ArrayLike<any>} value @param {number[]} dims @param {number} batch
 */
function perStream(spec, value, dims, batch) {
  const axis = spec.batch_axis;
  if (axis === null || dims.slice(0, axis).some((d) => d !== 1)) {
    throw new EdgernnError(`input '${spec.name}' got nested arrays, but its streams are not its outermost axis ` +
      `(shape ${JSON.stringify(spec.shape)}); pass one flat array in that layout`);
  }
  if (value.length !== batch) {
    throw new EdgernnError(`input '${spec.name}' got ${value.length} streams; this session runs ${batch} (reset(batch) changes it)`);
  }
  const flat = [];
  for (let b = 0; b < value.length; b++) for (let i = 0; i < value[b].length; i++) flat.push(value[b][i]);
  return flat;
}

/**
 * A chunk's frames, split apart per streamed input (an input with a batch or a time axis; the others
 * take one value for the whole call), and their number, the same for every input and a multiple of
 * each input's `frame_multiple`.
 * @param {any} ort @param {TensorSpec[]} inputs @param {Record<string, any>} named @param {number} batch
 * @returns {{perFrame: Record<string, any[]>, count: number}}
 */
export function chunkFrames(ort, inputs, named, batch) {
  const streamed = inputs.filter((s) => s.batch_axis !== null || s.time_axis !== null);
  if (!streamed.length) throw new EdgernnError('this model has no input with a batch or time axis to stream; call step() instead');
  /** @type {Record<string, any[]>} */
  const perFrame = {};
  let count = -1;
  for (const spec of streamed) {
    const frameList = splitFrames(ort, spec, named[spec.name], batch);
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
  return { perFrame, count };
}

/**
 * The frames of one streamed input: an array of frames, or one flat array along the time axis.
 * @param {any} ort @param {TensorSpec} spec @param {any} value @param {number} batch
 * @returns {any[]}
 */
function splitFrames(ort, spec, value, batch) {
  if (value instanceof ort.Tensor) value = value.data;
  if (!isArrayLike(value)) throw new EdgernnError(`input '${spec.name}' got ${typeof value}; expected an array of frames or a flat array`);
  if (value.length === 0) return [];
  if (isArrayLike(value[0])) return Array.from(value);
  const frame = concrete(spec.shape, batch, 1);
  if (frame.some((d) => d < 0)) throw new EdgernnError(`input '${spec.name}' has free sizes ${JSON.stringify(spec.shape)}; pass chunk() an array of frames`);
  const n = size(frame);
  if (value.length % n !== 0) {
    throw new EdgernnError(`input '${spec.name}' got ${value.length} values, not a whole number of frames of ${n} ` +
      `(shape ${JSON.stringify(spec.shape)} with batch ${batch})`);
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
 * @param {any} ort @param {string} dtype @param {ArrayLike<any>[]} parts @param {readonly number[]} dims
 * @param {number} axis @param {boolean} stack
 * @returns {Tensor}
 */
export function joinFrames(ort, dtype, parts, dims, axis, stack) {
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
  return new ort.Tensor(dtype, data, out);
}
