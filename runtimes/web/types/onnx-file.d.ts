/**
 * The `metadata_props` of an ONNX model, as a plain object (key -> value).
 * @param {Uint8Array} bytes the .onnx file
 * @returns {Record<string, string>}
 */
export function readMetadata(bytes: Uint8Array): Record<string, string>;
/**
 * @typedef {object} StoredTensor
 * @property {string} name
 * @property {string} dtype edgernn dtype name (float32, int64, ...)
 * @property {number[]} dims
 * @property {Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array} data
 */
/**
 * The initializers called `names` in the model's main graph (others are skipped unread).
 * @param {Uint8Array} bytes the .onnx file
 * @param {Iterable<string>} names
 * @returns {Record<string, StoredTensor>}
 */
export function readInitializers(bytes: Uint8Array, names: Iterable<string>): Record<string, StoredTensor>;
/** The typed array that holds each dtype's values (onnxruntime-web's Tensor takes the same ones). */
export const TYPED_ARRAYS: Record<string, any>;
/** onnx TensorProto.DataType numbers -> the dtype names used in edgernn metadata. */
export const ONNX_DTYPES: Record<number, string>;
export type StoredTensor = {
    name: string;
    /**
     * edgernn dtype name (float32, int64, ...)
     */
    dtype: string;
    dims: number[];
    data: Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array;
};
