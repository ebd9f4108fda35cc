/**
 * A data input or output of the model.
 * @typedef {object} TensorSpec
 * @property {string} name graph input/output name
 * @property {(number|string)[]} shape sizes; "batch" and "time" mark those axes, other strings are free sizes
 * @property {string} dtype float32, int64, ...
 * @property {number|null} batch_axis
 * @property {number|null} time_axis
 * @property {number} [frame_multiple] inputs: the frames of one call along the time axis must be a
 *   multiple of this (the model strides over time or works in blocks of frames); absent: 1
 * @property {number} [delay] outputs: frames of lookahead; frame t of the streamed output is frame
 *   t - delay of the model's output on the whole sequence; absent: 0
 */
/**
 * A recurrent state carried from one call to the next.
 * @typedef {object} StateSpec
 * @property {string} name the state's name (e.g. "gru.h")
 * @property {string} input graph input that takes it (e.g. "state_in.gru.h")
 * @property {string} output graph output that gives its next value (e.g. "state_out.gru.h")
 * @property {(number|string)[]} shape
 * @property {string} dtype
 * @property {number|null} batch_axis
 * @property {"zeros" | {initializer: string}} init how each stream starts
 */
/**
 * What a runtime needs to stream a file: the object `metadata.schema.json` describes (Python's
 * `Contract.to_json()`), `frame_multiple` and `delay` left out where they are 1 and 0.
 * @typedef {object} Contract
 * @property {"1"} [format] the contract version (always "1" in a contract read here)
 * @property {"step"|"chunk"|"sequence"} mode step: one frame per call; chunk: any number of frames per call
 * @property {TensorSpec[]} inputs
 * @property {TensorSpec[]} outputs
 * @property {StateSpec[]} states
 */
/**
 * Whether `props` (a file's `metadata_props`) hold edgernn metadata at all: a file without
 * `edgernn.format` is not an edgernn file (its contract comes from elsewhere).
 * @param {Record<string, string>} props
 */
export function hasEdgernnMetadata(props: Record<string, string>): boolean;
/**
 * The contract in a file's `metadata_props` (Python: `Contract.from_metadata`). Throws an
 * EdgernnError naming what is missing or malformed, a file without edgernn metadata included.
 * @param {Record<string, string>} props @param {string} [source] how the message names the file
 * @returns {Contract}
 */
export function contractFromMetadata(props: Record<string, string>, source?: string): Contract;
/**
 * The contract's `metadata_props` entries with their JSON decoded: `{format, mode, inputs,
 * outputs, states}`, the object that metadata.schema.json describes (Python: `decoded_metadata`).
 * The fields of each entry are checked by `contractFromJson`.
 * @param {Record<string, string>} props @param {string} [source]
 * @returns {Record<string, any>}
 */
export function decodedMetadata(props: Record<string, string>, source?: string): Record<string, any>;
/**
 * The contract of a decoded object (the `<name>.edgernn.json` beside an `.ort` file, `edgernn info
 * --json`'s contract, `decodedMetadata`), checked as the metadata is: the format version, the
 * mode, every entry's fields and the state names (Python: `Contract.from_json`). The result is a
 * fresh object with only the contract's fields.
 * @param {unknown} d @param {string} [source]
 * @returns {Contract}
 */
export function contractFromJson(d: unknown, source?: string): Contract;
/**
 * The contract in the text of a JSON file (the `<name>.edgernn.json` sidecar of an `.ort` file;
 * Python: `read_contract_json`).
 * @param {string} text @param {string} source the file's name
 * @returns {Contract}
 */
export function contractFromJsonText(text: string, source: string): Contract;
/**
 * A JSON value as Python's `repr` writes it after `json.loads`: 'x', True, None, [1, 'batch'], {'a': 1}.
 * @param {unknown} v @returns {string}
 */
export function repr(v: unknown): string;
/** The contract version this runtime reads (edgernn.format in the metadata). */
export const FORMAT_VERSION: "1";
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
 * What a runtime needs to stream a file: the object `metadata.schema.json` describes (Python's
 * `Contract.to_json()`), `frame_multiple` and `delay` left out where they are 1 and 0.
 */
export type Contract = {
    /**
     * the contract version (always "1" in a contract read here)
     */
    format?: "1" | undefined;
    /**
     * step: one frame per call; chunk: any number of frames per call
     */
    mode: "step" | "chunk" | "sequence";
    inputs: TensorSpec[];
    outputs: TensorSpec[];
    states: StateSpec[];
};
