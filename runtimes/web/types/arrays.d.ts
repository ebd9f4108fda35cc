/**
 * Sizes of `shape` with the batch and time filled in; other free sizes are -1.
 * @param {(number|string)[]} shape @param {number} batch @param {number} time
 */
export function concrete(shape: (number | string)[], batch: number, time: number): number[];
/**
 * `value` as the typed array onnxruntime wants for `dtype` (the same array when it already is one).
 * @param {string} dtype @param {ArrayLike<any>} value @param {string} name
 */
export function typed(dtype: string, value: ArrayLike<any>, name: string): any;
/**
 * `data` (size 1 on the batch axis) repeated for `batch` streams.
 * @param {ArrayLike<any>} data @param {number[]} dims @param {number|null} axis @param {number} batch
 */
export function tile(data: ArrayLike<any>, dims: number[], axis: number | null, batch: number): any;
export function size(dims: readonly number[]): number;
export function isArrayLike(x: unknown): x is ArrayLike<any>;
