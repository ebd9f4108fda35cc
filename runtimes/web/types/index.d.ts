/**
 * The contract in a file's metadata, or null when the file has none.
 * @param {Record<string, string>} meta @param {string} source
 * @returns {Contract | null}
 */
export function contractFromMetadata(meta: Record<string, string>, source: string): Contract | null;
/**
 * A contract for a file without edgernn metadata, from the state pairs the user names and the
 * shapes onnxruntime reports. The batch axis is where the first symbolic size that a data input
 * shares with a state input sits (else the first symbolic size of the first data input); every
 * call feeds one frame (or window) as given, with no time axis. This is a simpler rule than the
 * Python package's `infer_contract`, which also guesses the pairs: here they must be named.
 * @param {any} session an onnxruntime InferenceSession
 * @param {Record<string, string>} pairs graph input -> graph output
 * @param {string} source
 * @returns {Contract}
 */
export function contractFromPairs(session: any, pairs: Record<string, string>, source: string): Contract;
export { EdgernnError } from "./errors.js";
/** The contract version this runtime reads (edgernn.format in the metadata). */
export const FORMAT_VERSION: "1";
/**
 * One onnxruntime session over an edgernn file, carrying the recurrent state between calls, for
 * one stream or a batch of streams. Create it with `await StreamingSession.create(model, options)`.
 *
 * Layouts are the model's own (`edgernn info` prints them): a frame for input `x` of shape
 * `[1, "batch", 40]` is 40 values for one stream, or `batch` × 40 values (or `batch` arrays of 40).
 */
export class StreamingSession {
    /**
     * Opens `model` (a path under Node, a URL, or the file's bytes) and reads its state contract.
     * @param {string | URL | ArrayBuffer | Uint8Array} model
     * @param {OpenOptions} [options]
     * @returns {Promise<StreamingSession>}
     */
    static create(model: string | URL | ArrayBuffer | Uint8Array, options?: OpenOptions): Promise<StreamingSession>;
    /**
     * @param {any} ort @param {any} session @param {Contract} contract @param {Record<string, any>} stored
     * @param {number} batch @param {string} source
     * @private
     */
    private constructor();
    /** the onnxruntime module in use */
    ort: any;
    /** the underlying onnxruntime InferenceSession */
    session: any;
    /** @type {Contract} */
    contract: Contract;
    /** how errors name the model */
    source: string;
    /** @private */
    private _stored;
    /** @private @type {Record<string, Tensor>} */
    private _state;
    /** @private */
    private _batch;
    /** @private @type {Promise<any>} calls run one after another, in the order they were made */
    private _queue;
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
     * @param {Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>} values
     */
    set state(values: Record<string, Tensor | ArrayLike<number> | ArrayLike<bigint>>);
    /**
     * The carried state by name (onnxruntime Tensors; a new object each time).
     * @returns {Record<string, Tensor>}
     */
    get state(): Record<string, Tensor>;
    /**
     * Starts new streams: every state back to its start value (zeros, or the value stored in the file).
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
     * Runs one call after the calls before it, and carries its state outputs forward.
     * @private @param {Record<string, Tensor>} tensors
     */
    private _enqueue;
    /**
     * Runs `fn` after every call made before it (a failed call does not stop the ones after it).
     * @private @template T @param {() => T | Promise<T>} fn @returns {Promise<T>}
     */
    private _serial;
    /**
     * Input values by name, from a bare value (models with one streamed input) or an object.
     * @private @param {any} value @param {string} call
     * @returns {Record<string, any>}
     */
    private _named;
    /**
     * A Tensor for `spec` holding `frames` frames per stream, checked against the model's shape.
     * @private @param {TensorSpec} spec @param {any} value @param {number} frames @param {string} what
     * @returns {Tensor}
     */
    private _tensor;
    /**
     * Joins one array per stream into the flat layout, when streams are the outermost axis.
     * @private @param {TensorSpec} spec @param {ArrayLike<any>} value @param {number[]} dims
     */
    private _perStream;
    /**
     * The frames of one streamed input: an array of frames, or one flat array along the time axis.
     * @private @param {TensorSpec} spec @param {any} value
     * @returns {any[]}
     */
    private _frames;
    /**
     * Joins per-frame values along `axis` (or stacks them on a new leading axis when `stack`).
     * @private @param {string} dtype @param {ArrayLike<any>[]} parts @param {readonly number[]} dims
     * @param {number} axis @param {boolean} stack
     */
    private _joined;
}
/**
 * A data input or output of the model.
 */
export type TensorSpec = {
    /**
     * graph input/output name
     */
    name: string;
    /**
     * sizes; "batch" and "time" mark those axes, other strings are free sizes
     */
    shape: (number | string)[];
    /**
     * float32, int64, ...
     */
    dtype: string;
    batch_axis: number | null;
    time_axis: number | null;
    /**
     * inputs: the frames of one call along the time axis must be a
     * multiple of this (the model strides over time or works in blocks of frames); absent: 1
     */
    frame_multiple?: number | undefined;
    /**
     * outputs: frames of lookahead; frame t of the streamed output is frame
     * t - delay of the model's output on the whole sequence; absent: 0
     */
    delay?: number | undefined;
};
/**
 * A recurrent state carried from one call to the next.
 */
export type StateSpec = {
    /**
     * the state's name (e.g. "gru.h")
     */
    name: string;
    /**
     * graph input that takes it (e.g. "state_in.gru.h")
     */
    input: string;
    /**
     * graph output that gives its next value (e.g. "state_out.gru.h")
     */
    output: string;
    shape: (number | string)[];
    dtype: string;
    batch_axis: number | null;
    /**
     * how each stream starts
     */
    init: "zeros" | {
        initializer: string;
    };
};
/**
 * What a runtime needs to stream a file.
 */
export type Contract = {
    /**
     * step: one frame per call; chunk: any number of frames per call
     */
    mode: "step" | "chunk" | "sequence";
    inputs: TensorSpec[];
    outputs: TensorSpec[];
    states: StateSpec[];
};
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
     * the whole contract, given yourself (e.g. for an ORT-format file)
     */
    contract?: Contract | undefined;
    /**
     * how errors name the model (default: its path or URL)
     */
    name?: string | undefined;
};
export { isOrtFormat, readInitializers, readMetadata } from "./onnx-file.js";
