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
/**
 * `<name><suffix>` beside `<name>.ort` (or `<name>.onnx`): a path, or a URL whose query is kept.
 * @param {string} location @param {string} suffix
 */
export function sidecarLocation(location: string, suffix: string): string;
/** @typedef {import('./contract.js').Contract} Contract */
/** @typedef {import('./contract.js').TensorSpec} TensorSpec */
/** @typedef {"given" | "inferred" | "metadata" | "sidecar"} ContractFrom */
export const CONTRACT_SUFFIX: ".edgernn.json";
export const STATE_INIT_SUFFIX: ".state_init.npz";
export class ModelFile {
    /**
     * Reads `model`: a path (Node), a URL (fetch), or the file's bytes.
     * @param {string | URL | ArrayBuffer | Uint8Array} model @param {string} source
     * @returns {Promise<ModelFile>}
     */
    static open(model: string | URL | ArrayBuffer | Uint8Array, source: string): Promise<ModelFile>;
    /**
     * @param {Uint8Array} bytes @param {string | null} location path or URL (null: bytes given)
     * @param {string} source @private
     */
    private constructor();
    /** the file's bytes */
    bytes: Uint8Array<ArrayBufferLike>;
    /** where the file was read from (a path or URL), or null when its bytes were given */
    location: string | null;
    /** how messages name the file */
    source: string;
    /** whether it is an ORT-format model */
    isOrt: boolean;
    /** @type {Record<string, string>} the file's metadata_props */
    metadata: Record<string, string>;
    /**
     * The contract that needs no onnxruntime session (given, metadata, sidecar), and where it came
     * from; null when it comes from state pairs (see `contractFromPairs`) or the file has no
     * edgernn metadata (the caller says so, naming the session's inputs and outputs).
     * @param {{contract?: Contract, states?: Record<string, string>}} options
     * @returns {Promise<{contract: Contract, from: ContractFrom} | null>}
     */
    contract({ contract, states }: {
        contract?: Contract;
        states?: Record<string, string>;
    }): Promise<{
        contract: Contract;
        from: ContractFrom;
    } | null>;
    /**
     * State name -> stored start value (size 1 on the batch axis) of the states that do not start
     * from zeros, checked against the state's shape and cast to its dtype.
     * @param {Contract} contract
     * @returns {Promise<Record<string, {data: any, dims: number[]}>>}
     */
    startValues(contract: Contract): Promise<Record<string, {
        data: any;
        dims: number[];
    }>>;
    /** @private @returns {Promise<Record<string, {dims: number[], data: any}>>} */
    private _npzValues;
}
export type Contract = import("./contract.js").Contract;
export type TensorSpec = import("./contract.js").TensorSpec;
export type ContractFrom = "given" | "inferred" | "metadata" | "sidecar";
