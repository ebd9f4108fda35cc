// @ts-check
/**
 * One model file, resolved once: the JavaScript twin of the Python package's
 * `edgernn/modelfile.py` (`ModelFile`). It reads the file's bytes (a path under Node, a URL, or the
 * bytes themselves), its `metadata_props` (an `.onnx` or an `.ort` file), and answers:
 *
 * - the contract and where it came from (`contractFrom`), in this order of precedence:
 *   `given`     a whole contract passed in ({contract}), checked as the metadata is;
 *   `inferred`  state pairs passed in ({states}): the rest from the shapes onnxruntime reports
 *               (`contractFromPairs`);
 *   `metadata`  the file's `edgernn.*` metadata (contract.js reads it);
 *   `sidecar`   an `.ort` file without edgernn metadata: the `<name>.edgernn.json` beside it that
 *               `edgernn pack` wrote;
 * - the start values of states that start from a stored value (`init: {"initializer": NAME}`):
 *   from the graph's initializers, or from the `<name>.state_init.npz` beside an `.ort` file
 *   (onnxruntime drops initializers that no node reads when it converts).
 *
 * Sidecars are read from beside the file's path or URL (the name with `.ort` or `.onnx` replaced,
 * a URL's query kept), so an `.ort` file given as bytes has none: open it by path or URL.
 */

import { typed } from './arrays.js';
import { contractFromJson, contractFromJsonText, contractFromMetadata, FORMAT_VERSION, hasEdgernnMetadata, repr } from './contract.js';
import { EdgernnError } from './errors.js';
import { readNpz } from './npz.js';
import { readInitializers, readMetadata } from './onnx-file.js';
import { isOrtFormat, readOrtMetadata } from './ort-file.js';
import { isNode } from './platform.js';

/** @typedef {import('./contract.js').Contract} Contract */
/** @typedef {import('./contract.js').TensorSpec} TensorSpec */
/** @typedef {"given" | "inferred" | "metadata" | "sidecar"} ContractFrom */

export const CONTRACT_SUFFIX = '.edgernn.json';
export const STATE_INIT_SUFFIX = '.state_init.npz';

export class ModelFile {
  /**
   * @param {Uint8Array} bytes @param {string | null} location path or URL (null: bytes given)
   * @param {string} source @private
   */
  constructor(bytes, location, source) {
    /** the file's bytes */
    this.bytes = bytes;
    /** where the file was read from (a path or URL), or null when its bytes were given */
    this.location = location;
    /** how messages name the file */
    this.source = source;
    /** whether it is an ORT-format model */
    this.isOrt = isOrtFormat(bytes);
    let metadata;
    try {
      metadata = this.isOrt ? readOrtMetadata(bytes, source) : readMetadata(bytes);
    } catch (e) {
      if (this.isOrt) throw e;
      throw new EdgernnError(`${source} is not an ONNX model (${/** @type {Error} */ (e).message}); expected a .onnx file ` +
        'such as edgernn export writes');
    }
    /** @type {Record<string, string>} the file's metadata_props */
    this.metadata = metadata;
  }

  /**
   * Reads `model`: a path (Node), a URL (fetch), or the file's bytes.
   * @param {string | URL | ArrayBuffer | Uint8Array} model @param {string} source
   * @returns {Promise<ModelFile>}
   */
  static async open(model, source) {
    if (model instanceof Uint8Array) return new ModelFile(model, null, source);
    if (model instanceof ArrayBuffer) return new ModelFile(new Uint8Array(model), null, source);
    const location = String(model);
    const bytes = await readLocation(location);
    if (!bytes) throw new EdgernnError(`${location} does not exist or is not a file`);
    return new ModelFile(bytes, location, source);
  }

  /**
   * The contract that needs no onnxruntime session (given, metadata, sidecar), and where it came
   * from; null when it comes from state pairs (see `contractFromPairs`) or the file has no
   * edgernn metadata (the caller says so, naming the session's inputs and outputs).
   * @param {{contract?: Contract, states?: Record<string, string>}} options
   * @returns {Promise<{contract: Contract, from: ContractFrom} | null>}
   */
  async contract({ contract, states }) {
    if (contract) return { contract: contractFromJson({ format: FORMAT_VERSION, ...contract }, `the contract given for ${this.source}`), from: 'given' };
    if (states) return null;
    if (hasEdgernnMetadata(this.metadata)) return { contract: contractFromMetadata(this.metadata, this.source), from: 'metadata' };
    if (!this.isOrt) return null;
    const where = this.location === null ? null : sidecarLocation(this.location, CONTRACT_SUFFIX);
    const text = where === null ? null : await readLocation(where);
    if (where === null || text === null) {
      throw new EdgernnError(`${this.source} is an ORT-format model without edgernn metadata, so its contract cannot be ` +
        `read from a graph; keep the <name>${CONTRACT_SUFFIX} that \`edgernn pack\` wrote next to it, or pass {contract} ` +
        `(or {states} naming its state pairs)${where === null ? '; open it by path or URL for the file next to it to be read' : ''}`);
    }
    return { contract: contractFromJsonText(new TextDecoder().decode(text), where), from: 'sidecar' };
  }

  /**
   * State name -> stored start value (size 1 on the batch axis) of the states that do not start
   * from zeros, checked against the state's shape and cast to its dtype.
   * @param {Contract} contract
   * @returns {Promise<Record<string, {data: any, dims: number[]}>>}
   */
  async startValues(contract) {
    const stored = contract.states.filter((s) => s.init !== 'zeros');
    if (!stored.length) return {};
    const names = stored.map((s) => /** @type {{initializer: string}} */ (s.init).initializer);
    const found = this.isOrt ? await this._npzValues() : readInitializers(this.bytes, names);
    /** @type {Record<string, {data: any, dims: number[]}>} */
    const out = {};
    for (const s of stored) {
      const name = /** @type {{initializer: string}} */ (s.init).initializer;
      const t = found[name];
      if (!t) throw new EdgernnError(`${this.source} names initializer ${repr(name)} as a state's start value, but has no such initializer`);
      const want = s.shape.map((d) => (typeof d === 'number' ? d : 1));
      if (t.dims.length !== want.length || t.dims.some((d, i) => d !== want[i])) {
        throw new EdgernnError(`start value ${repr(name)} of state ${repr(s.name)} has shape ${repr(t.dims)}; expected ` +
          `${repr(want)} (the state's shape with size 1 on the batch axis)`);
      }
      out[s.name] = { data: typed(s.dtype, t.data, s.name), dims: t.dims };
    }
    return out;
  }

  /** @private @returns {Promise<Record<string, {dims: number[], data: any}>>} */
  async _npzValues() {
    if (this.location === null) {
      throw new EdgernnError(`${this.source} is an ORT-format model whose states start from stored values; open it by ` +
        `path or URL, so that the <name>${STATE_INIT_SUFFIX} file next to it is read`);
    }
    const where = sidecarLocation(this.location, STATE_INIT_SUFFIX);
    const bytes = await readLocation(where);
    if (!bytes) {
      throw new EdgernnError(`${this.source} is an ORT-format model whose states start from stored values, but ` +
        `${baseName(where)} is not next to it; copy it from the folder \`edgernn pack\` wrote`);
    }
    return readNpz(bytes, `${where} (start values of ${this.source})`);
  }
}

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
export function contractFromPairs(session, pairs, source) {
  const ins = session.inputNames;
  const outs = session.outputNames;
  const meta = /** @type {Record<string, any>} */ ({});
  for (const m of [...(session.inputMetadata || []), ...(session.outputMetadata || [])]) meta[m.name] = m;
  for (const [i, o] of Object.entries(pairs)) {
    if (!ins.includes(i)) throw new EdgernnError(`${source} has no graph input '${i}'; its inputs are ${ins.join(', ')}`);
    if (!outs.includes(o)) throw new EdgernnError(`${source} has no graph output '${o}'; its outputs are ${outs.join(', ')}`);
  }
  const stateIns = new Set(Object.keys(pairs));
  const stateOuts = new Set(Object.values(pairs));
  /** @param {string} name */
  const shapeOf = (name) => {
    const m = meta[name];
    if (!m || !m.isTensor || !Array.isArray(m.shape)) {
      throw new EdgernnError(`onnxruntime reports no tensor shape for '${name}' of ${source}; pass {contract} instead`);
    }
    return /** @type {(number|string)[]} */ ([...m.shape]);
  };
  const dataIns = ins.filter((/** @type {string} */ n) => !stateIns.has(n));
  /** @param {string} n @returns {(number|string)[]} */
  const symbolsOf = (n) => shapeOf(n).filter((d) => typeof d === 'string' || d < 0);
  const stateSymbols = new Set([...stateIns].flatMap(symbolsOf));
  let batch = dataIns.flatMap(symbolsOf).find((/** @type {number|string} */ d) => stateSymbols.has(d));
  if (batch === undefined && dataIns.length) batch = symbolsOf(dataIns[0])[0];
  /** @param {string} name @returns {TensorSpec} */
  const spec = (name) => {
    const shape = shapeOf(name).map((d) => (batch !== undefined && d === batch ? 'batch' : typeof d === 'number' && d < 0 ? '?' : d));
    const axis = shape.indexOf('batch');
    return { name, shape, dtype: meta[name].type, batch_axis: axis < 0 ? null : axis, time_axis: null };
  };
  return {
    format: FORMAT_VERSION,
    mode: 'step',
    inputs: dataIns.map(spec),
    outputs: outs.filter((/** @type {string} */ n) => !stateOuts.has(n)).map(spec),
    states: Object.entries(pairs).map(([i, o]) => {
      const s = spec(i);
      return { name: i, input: i, output: o, shape: s.shape, dtype: s.dtype, batch_axis: s.batch_axis, init: 'zeros' };
    }),
  };
}

/**
 * `<name><suffix>` beside `<name>.ort` (or `<name>.onnx`): a path, or a URL whose query is kept.
 * @param {string} location @param {string} suffix
 */
export function sidecarLocation(location, suffix) {
  const url = !isNode || /^[a-z][a-z0-9+.-]*:/i.test(location);
  const cut = url ? location.search(/[?#]/) : -1;
  const path = cut < 0 ? location : location.slice(0, cut);
  const query = cut < 0 ? '' : location.slice(cut).replace(/#.*$/, '');
  const ext = /\.(ort|onnx)$/i.exec(path);
  return (ext ? path.slice(0, -ext[0].length) : path) + suffix + query;
}

/** @param {string} location */
const baseName = (location) => location.replace(/[?#].*$/, '').split(/[\\/]/).pop() ?? location;

/**
 * The bytes at `location` (a path under Node, else a URL), or null when there is no such file.
 * @param {string} location @returns {Promise<Uint8Array | null>}
 */
async function readLocation(location) {
  if (isNode && !/^(https?|data|blob):/.test(location)) {
    const fs = await import('node:fs/promises');
    try {
      return new Uint8Array(await fs.readFile(location.startsWith('file:') ? new URL(location) : location));
    } catch (e) {
      if (/** @type {any} */ (e).code === 'ENOENT') return null;
      throw new EdgernnError(`cannot read ${location}: ${/** @type {Error} */ (e).message}`);
    }
  }
  let response;
  try {
    response = await fetch(location);
  } catch (e) {
    throw new EdgernnError(`cannot fetch ${location}: ${/** @type {Error} */ (e).message}`);
  }
  if (response.status === 404) return null;
  if (!response.ok) throw new EdgernnError(`cannot fetch ${location}: HTTP ${response.status} ${response.statusText}`);
  return new Uint8Array(await response.arrayBuffer());
}

