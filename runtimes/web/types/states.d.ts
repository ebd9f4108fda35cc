/** @typedef {import('./contract.js').StateSpec} StateSpec */
/** @typedef {import('onnxruntime-common').Tensor} Tensor */
/**
 * Every state at its start value for `batch` streams: zeros, or the value stored in the file
 * (`stored`, size 1 on the batch axis), one copy per stream.
 * @param {any} ort @param {StateSpec[]} states @param {Record<string, any>} stored @param {number} batch
 * @returns {Record<string, Tensor>}
 */
export function startStates(ort: any, states: StateSpec[], stored: Record<string, any>, batch: number): Record<string, Tensor>;
/**
 * `values` (every state by name, as Tensors or flat arrays) as Tensors, checked against the states'
 * shapes at `batch` streams.
 * @param {any} ort @param {StateSpec[]} states
 * @param {Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>} values @param {number} batch
 * @returns {Record<string, Tensor>}
 */
export function givenStates(ort: any, states: StateSpec[], values: Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>, batch: number): Record<string, Tensor>;
/**
 * `current` with stream `index`'s slice of every state back to its start value; the other streams'
 * slices are copied as they are. Every state has a batch axis (the caller checks).
 * @param {any} ort @param {StateSpec[]} states @param {Record<string, Tensor>} current
 * @param {Record<string, any>} stored @param {number} batch @param {number} index
 * @returns {Record<string, Tensor>}
 */
export function withStreamReset(ort: any, states: StateSpec[], current: Record<string, Tensor>, stored: Record<string, any>, batch: number, index: number): Record<string, Tensor>;
export type StateSpec = import("./contract.js").StateSpec;
export type Tensor = import("onnxruntime-common").Tensor;
