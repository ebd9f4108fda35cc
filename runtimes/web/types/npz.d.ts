/**
 * @typedef {object} NpyArray
 * @property {string} dtype edgernn dtype name (float32, int64, ...)
 * @property {number[]} dims
 * @property {any} data the values, in a typed array of TYPED_ARRAYS[dtype]
 */
/**
 * The arrays of an `.npz` file by name (the entry's name without `.npy`).
 * @param {Uint8Array} bytes @param {string} source how messages name the file
 * @returns {Promise<Record<string, NpyArray>>}
 */
export function readNpz(bytes: Uint8Array, source: string): Promise<Record<string, NpyArray>>;
/**
 * One `.npy` array.
 * @param {Uint8Array} bytes @param {string} source
 * @returns {NpyArray}
 */
export function readNpy(bytes: Uint8Array, source: string): NpyArray;
export type NpyArray = {
    /**
     * edgernn dtype name (float32, int64, ...)
     */
    dtype: string;
    dims: number[];
    /**
     * the values, in a typed array of TYPED_ARRAYS[dtype]
     */
    data: any;
};
