/** @typedef {import('./contract.js').TensorSpec} TensorSpec */
/** @typedef {import('onnxruntime-common').Tensor} Tensor */
/**
 * Input values by name, from a bare value (models with one streamed input) or an object.
 * @param {any} ort @param {TensorSpec[]} inputs @param {any} value @param {string} call
 * @returns {Record<string, any>}
 */
export function namedInputs(ort: any, inputs: TensorSpec[], value: any, call: string): Record<string, any>;
/**
 * A Tensor for `spec` holding `frames` frames per stream, checked against the model's shape.
 * @param {any} ort @param {TensorSpec} spec @param {any} value @param {number} batch
 * @param {number} frames @param {string} what how the error names one call's value ("frame")
 * @returns {Tensor}
 */
export function inputTensor(ort: any, spec: TensorSpec, value: any, batch: number, frames: number, what: string): Tensor;
/**
 * A chunk's frames, split apart per streamed input (an input with a batch or a time axis; the others
 * take one value for the whole call), and their number, the same for every input and a multiple of
 * each input's `frame_multiple`.
 * @param {any} ort @param {TensorSpec[]} inputs @param {Record<string, any>} named @param {number} batch
 * @returns {{perFrame: Record<string, any[]>, count: number}}
 */
export function chunkFrames(ort: any, inputs: TensorSpec[], named: Record<string, any>, batch: number): {
    perFrame: Record<string, any[]>;
    count: number;
};
/**
 * Joins per-frame values along `axis` (or stacks them on a new leading axis when `stack`).
 * @param {any} ort @param {string} dtype @param {ArrayLike<any>[]} parts @param {readonly number[]} dims
 * @param {number} axis @param {boolean} stack
 * @returns {Tensor}
 */
export function joinFrames(ort: any, dtype: string, parts: ArrayLike<any>[], dims: readonly number[], axis: number, stack: boolean): Tensor;
export type TensorSpec = import("./contract.js").TensorSpec;
export type Tensor = import("onnxruntime-common").Tensor;
