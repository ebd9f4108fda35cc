/**
 * Index of the first NaN or ±Inf in `data`, or -1; always -1 for data that is not float (ints,
 * bools), which can hold neither. `v * 0` is ±0 for every finite v and NaN for NaN and ±Inf, so a
 * sum of eight such products is 0 exactly when all eight are finite: one branch per eight values
 * (2.5 times as fast under V8 as a test per value), then a test per value to find which one.
 * @param {unknown} data
 * @returns {number}
 */
export function firstNonFinite(data: unknown): number;
/**
 * The position of flat index `index` of a tensor of `dims` along `axis` (null: the tensor has no such axis).
 * @param {number} index @param {readonly number[]} dims @param {number | null} axis
 * @returns {number | null}
 */
export function along(index: number, dims: readonly number[], axis: number | null): number | null;
/**
 * The streams whose values in `data` (a tensor of `dims` with streams on `batchAxis`) hold NaN or
 * ±Inf; "all" when the tensor has no batch axis (every stream reads it).
 * @param {ArrayLike<number>} data @param {readonly number[]} dims @param {number | null} batchAxis
 * @returns {Set<number> | "all"}
 */
export function nonFiniteStreams(data: ArrayLike<number>, dims: readonly number[], batchAxis: number | null): Set<number> | "all";
/**
 * Streams in either set ("all": every stream).
 * @param {Set<number> | "all" | null} a @param {Set<number> | "all"} b
 * @returns {Set<number> | "all"}
 */
export function union(a: Set<number> | "all" | null, b: Set<number> | "all"): Set<number> | "all";
/** The policies a session takes as `nonFinite`. */
export const NON_FINITE_POLICIES: string[];
export function nonFiniteName(v: number): "NaN" | "infinity";
