export { EdgernnError } from "./errors.js";
export { contractFromPairs } from "./model-file.js";
/**
 * One onnxruntime session over an edgernn file, carrying the recurrent state between calls, for
 * one stream or a batch of streams. Create it with `await StreamingSession.create(model, options)`.
 *
 * Layouts are the model's own (`edgernn info` prints them): a frame for input `x` of shape
 * `[1, "batch", 40]` is 40 values for one stream, or `batch` × 40 values (or `batch` arrays of 40).
 */
export class StreamingSession {
    /**
     * Opens `model` (a path under Node, a URL, or the file's bytes; `.onnx` or `.ort`) and reads its
     * state contract: from {contract}, else from the {states} pairs, else from the file's metadata,
     * else, for an `.ort` file, from the `<name>.edgernn.json` beside it. Stored start values of an
     * `.ort` file come from the `<name>.state_init.npz` beside it.
     * @param {string | URL | ArrayBuffer | Uint8Array} model
     * @param {OpenOptions} [options]
     * @returns {Promise<StreamingSession>}
     */
    static create(model: string | URL | ArrayBuffer | Uint8Array, options?: OpenOptions): Promise<StreamingSession>;
    /**
     * @param {any} ort @param {any} session @param {Contract} contract @param {ContractFrom} contractFrom
     * @param {Record<string, any>} stored @param {number} batch @param {string} source
     * @param {NonFinite} nonFinite
     * @private
     */
    private constructor();
    /** the onnxruntime module in use */
    ort: any;
    /** the underlying onnxruntime InferenceSession */
    session: any;
    /** @type {Contract} */
    contract: Contract;
    /**
     * where the contract came from: "metadata" (the file's), "sidecar" (the `<name>.edgernn.json`
     * beside an `.ort` file), "given" ({contract}) or "inferred" (from the {states} pairs)
     * @type {ContractFrom}
     */
    contractFrom: ContractFrom;
    /** how errors name the model */
    source: string;
    /**
     * what a call does with NaN or infinity in its float inputs or carried state: "raise", "reset"
     * or "ignore" (see {@link NonFinite})
     * @readonly @type {NonFinite}
     */
    readonly nonFinite: NonFinite;
    /** @type {SessionStats} */
    stats: SessionStats;
    /** @private */
    private _stored;
    /** @private @type {Record<string, Tensor>} */
    private _state;
    /** @private */
    private _batch;
    /** @private @type {Promise<any>} calls run one after another, in the order they were made */
    private _queue;
    /** @private frames the streams have run since create() or reset(), for error messages */
    private _frame;
    /** "step", "chunk" or "sequence" @returns {Contract["mode"]} */
    get mode(): Contract["mode"];
    /** The data inputs. @returns {TensorSpec[]} */
    get inputs(): TensorSpec[];
    /** The data outputs. @returns {TensorSpec[]} */
    get outputs(): TensorSpec[];
    /** The state pairs. @returns {StateSpec[]} */
    get states(): StateSpec[];
    /**
     * The frames of every call must be a multiple of this (the model strides over time or works in blocks of frames; 1: any number):
     * the least common multiple of the inputs' `frame_multiple`.
     * @returns {number}
     */
    get frameMultiple(): number;
    /**
     * Per data output: frames of lookahead (`delay`). Outputs come as the file produces them: frame t
     * of a stream's output is frame t - delay of the model's output on the whole sequence.
     * @returns {Record<string, number>}
     */
    get delays(): Record<string, number>;
    /** The largest delay of the data outputs, in frames (0: no lookahead). @returns {number} */
    get delay(): number;
    /** Number of streams run side by side. */
    get batch(): number;
    /**
     * Replaces the carried state: every state by name, as Tensors or flat arrays of the right size.
     * (A state holding NaN or infinity is taken; the next call finds it, as `nonFinite` says.)
     * @param {Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>} values
     */
    set state(values: Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>);
    /**
     * The carried state by name (onnxruntime Tensors; a new object each time).
     * @returns {Record<string, Tensor>}
     */
    get state(): Record<string, Tensor>;
    /**
     * Starts new streams: every state back to its start value (zeros, or the value stored in the file);
     * error messages count frames from 0 again.
     * @param {number} [batch] a new number of streams (default: keep the current one)
     */
    reset(batch?: number): void;
    /** @private */
    private _fast;
    /**
     * Starts stream `index` of the batch afresh (its slice of every state back to the start value);
     * the other streams keep theirs. Takes effect from the next call (after calls already made).
     * @param {number} index 0 <= index < batch
     * @returns {Promise<void>}
     */
    resetStream(index: number): Promise<void>;
    /**
     * Feeds one frame per stream; resolves to the data outputs by name.
     * `frame`: the frame of the model's only streamed input, or `{inputName: frame, ...}`.
     * @param {FrameData | Record<string, FrameData>} frame
     * @returns {Promise<Record<string, Tensor>>}
     */
    step(frame: FrameData | Record<string, FrameData>): Promise<Record<string, Tensor>>;
    /**
     * Feeds several frames per stream, carrying state; resolves to the outputs joined along time.
     * `frames`: an array of frames (each as `step` takes them), or one flat array in the model's layout
     * with the time axis holding the frames (`[time, batch, features]` for a step file, `[batch, time,
     * features]` for a batch-first chunk file); or `{inputName: frames, ...}`. A chunk-mode file takes all
     * frames in one call; a step-mode file one call per frame. Outputs without a time axis are stacked
     * on a new leading axis, one entry per frame, for a step file (as Python's `stream` does). A file that
     * strides over time takes a multiple of `frameMultiple` frames per call; outputs with lookahead come as
     * the file produces them (`delays`: frame t is the model's frame t - delay).
     * @param {FrameData[] | ArrayLike<number> | Record<string, FrameData[] | ArrayLike<number> | number>} frames
     * @returns {Promise<Record<string, Tensor>>}
     */
    chunk(frames: FrameData[] | ArrayLike<number> | Record<string, FrameData[] | ArrayLike<number> | number>): Promise<Record<string, Tensor>>;
    /** Frees onnxruntime's session. */
    release(): Promise<void>;
    /**
     * Runs one call of `frames` frames after the calls before it, and carries its state outputs
     * forward; first checks its float inputs and the state carried into it, as `nonFinite` says.
     * @private @param {Record<string, Tensor>} tensors @param {number} frames
     */
    private _enqueue;
    /**
     * Checks a call's float inputs and the state carried into it for NaN and infinity (one scan each,
     * src/nonfinite.js). "raise": the first found throws, naming the input or state and the frame.
     * "reset": streams whose carried state holds one start over now, before the run, and the streams
     * whose inputs hold one are returned, to start over after it (null: none).
     * @private @param {Record<string, Tensor>} tensors
     * @returns {Set<number> | "all" | null}
     */
    private _checkNonFinite;
    /**
     * `state` with streams `streams` back to their start values (every stream when a state has no batch
     * axis), counted in `stats.nonFiniteResets`.
     * @private @param {Record<string, Tensor>} state @param {Set<number> | "all"} streams
     * @returns {Record<string, Tensor>}
     */
    private _restart;
    /** "the stream", "stream 2" or "the streams" (a value shared by all). @private @param {number | null} stream */
    private _streamName;
    /**
     * Runs `fn` after every call made before it (a failed call does not stop the ones after it).
     * @private @template T @param {() => T | Promise<T>} fn @returns {Promise<T>}
     */
    private _serial;
}
export type TensorSpec = import("./contract.js").TensorSpec;
export type StateSpec = import("./contract.js").StateSpec;
export type Contract = import("./contract.js").Contract;
export type ContractFrom = import("./model-file.js").ContractFrom;
/**
 * A value as this package hands it out: an onnxruntime Tensor (`.data`, `.dims`, `.type`).
 */
export type Tensor = import("onnxruntime-common").Tensor;
/**
 * Frame data: a typed array or a plain array of numbers, flat, in the model's layout; or, for a batch,
 * one such array per stream. A number for an input of rank 0 (a setting such as a sample rate).
 */
export type FrameData = ArrayLike<number> | ArrayLike<bigint> | ArrayLike<number>[] | number;
export type OpenOptions = {
    /**
     * the onnxruntime module (`import * as ort from 'onnxruntime-web'` or
     * 'onnxruntime-node'); default: `globalThis.ort` (a script tag), else onnxruntime-node under Node,
     * else onnxruntime-web
     */
    ort?: any;
    /**
     * number of streams run side by side (default 1)
     */
    batch?: number | undefined;
    /**
     * passed to `ort.InferenceSession.create`
     * (e.g. `{executionProviders: ['webgpu', 'wasm']}`)
     */
    sessionOptions?: object | undefined;
    /**
     * state pairs, graph input name -> graph output name, for a
     * file without edgernn metadata (or to override it)
     */
    states?: Record<string, string> | undefined;
    /**
     * the whole contract, given yourself (checked as the metadata is)
     */
    contract?: import("./contract.js").Contract | undefined;
    /**
     * how errors name the model (default: its path or URL)
     */
    name?: string | undefined;
    /**
     * what a call does when its float inputs, or the state carried into
     * it, hold NaN or infinity (default "raise"; see {@link NonFinite})
     */
    nonFinite?: NonFinite | undefined;
};
/**
 * What a call does when its float inputs, or the state carried into it, hold NaN or infinity; both
 * are checked before the run. "raise": an EdgernnError naming the input or state and the frame of the
 * stream, and nothing runs (the state stays as it was). "reset": the streams affected start over from
 * their start values, counted in `stats.nonFiniteResets`: a state holding NaN is reset before the call
 * runs; a frame holding NaN runs as given (its outputs are what onnxruntime makes of it) and the state
 * after it is reset. "ignore": nothing is checked.
 */
export type NonFinite = "raise" | "reset" | "ignore";
/**
 * Counts kept by a session since it was created (`reset()` leaves them).
 */
export type SessionStats = {
    /**
     * runs of the model (a `chunk()` of a step-mode file runs it once per frame)
     */
    calls: number;
    /**
     * streams put back to their start values because their input or
     * state held NaN or infinity (`nonFinite: "reset"`)
     */
    nonFiniteResets: number;
};
export { FORMAT_VERSION, contractFromJson, contractFromMetadata } from "./contract.js";
export { readInitializers, readMetadata } from "./onnx-file.js";
export { isOrtFormat, readOrtMetadata } from "./ort-file.js";
