// @ts-check
/**
 * The state I/O contract: the one place in edgernn-web that reads edgernn metadata.
 *
 * This is the JavaScript twin of the Python package's `edgernn/contract.py` (`decoded_metadata`,
 * `Contract.from_json`, `TensorSpec.from_json`, `StateSpec.from_json`): the same checks, in the
 * same order, with the same sentences, so that a file that one refuses the other refuses too.
 * Both run the shared fixtures in tests/fixtures/metadata. The JSON schema of what is read here
 * ships with the Python package as `edgernn/schema/metadata.schema.json`; docs/state-contract.md
 * explains each field.
 *
 * Values in messages are written as Python writes them (`'x'`, `True`, `None`, `[0, 'batch']`),
 * which keeps the sentences of both runtimes equal.
 */

import { EdgernnError } from './errors.js';

/** The contract version this runtime reads (edgernn.format in the metadata). */
export const FORMAT_VERSION = '1';
const MODES = ['chunk', 'step', 'sequence'];
const STATE_IN = 'state_in.';
const STATE_OUT = 'state_out.';
const KEYS = ['format', 'mode', 'inputs', 'outputs', 'states'];
const CORE_KEYS = KEYS.map((k) => `edgernn.${k}`).sort();
/** numpy names of the ONNX element types (the schema's `dtype`). */
const DTYPES = ['float32', 'float16', 'bfloat16', 'float64', 'int8', 'int16', 'int32', 'int64',
  'uint8', 'uint16', 'uint32', 'uint64', 'bool'];

/** @param {object} d @param {string} key */
const has = (d, key) => Object.prototype.hasOwnProperty.call(d, key);

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
export function hasEdgernnMetadata(props) {
  return has(props, 'edgernn.format');
}

/**
 * The contract in a file's `metadata_props` (Python: `Contract.from_metadata`). Throws an
 * EdgernnError naming what is missing or malformed, a file without edgernn metadata included.
 * @param {Record<string, string>} props @param {string} [source] how the message names the file
 * @returns {Contract}
 */
export function contractFromMetadata(props, source = 'the model') {
  return contractFromJson(decodedMetadata(props, source), source);
}

/**
 * The contract's `metadata_props` entries with their JSON decoded: `{format, mode, inputs,
 * outputs, states}`, the object that metadata.schema.json describes (Python: `decoded_metadata`).
 * The fields of each entry are checked by `contractFromJson`.
 * @param {Record<string, string>} props @param {string} [source]
 * @returns {Record<string, any>}
 */
export function decodedMetadata(props, source = 'the model') {
  if (!hasEdgernnMetadata(props)) {
    throw new EdgernnError(`${source} has no edgernn metadata (metadata_props 'edgernn.format' is missing); ` +
      'export it with `edgernn export` or name its state pairs yourself');
  }
  checkFormat(props['edgernn.format'], source);
  const missing = CORE_KEYS.filter((k) => !has(props, k));
  if (missing.length) {
    throw new EdgernnError(`${source} has edgernn metadata without ${repr(missing[0])}; expected all of ${CORE_KEYS.join(', ')}`);
  }
  /** @type {Record<string, any>} */
  const decoded = { format: props['edgernn.format'], mode: props['edgernn.mode'] };
  for (const key of ['inputs', 'outputs', 'states']) {
    let value;
    try {
      value = JSON.parse(props[`edgernn.${key}`]);
    } catch (e) {
      throw new EdgernnError(`${source} has edgernn.${key} that is not valid JSON (${/** @type {Error} */ (e).message})`);
    }
    checkListOfObjects(value, key, source);
    decoded[key] = value;
  }
  return decoded;
}

/**
 * The contract of a decoded object (the `<name>.edgernn.json` beside an `.ort` file, `edgernn info
 * --json`'s contract, `decodedMetadata`), checked as the metadata is: the format version, the
 * mode, every entry's fields and the state names (Python: `Contract.from_json`). The result is a
 * fresh object with only the contract's fields.
 * @param {unknown} d @param {string} [source]
 * @returns {Contract}
 */
export function contractFromJson(d, source = 'the model') {
  if (!isObject(d)) {
    throw new EdgernnError(`${source} holds a JSON ${pyType(d)}; expected an object with format, mode, inputs, outputs and states`);
  }
  const missing = KEYS.filter((k) => !has(d, k));
  if (missing.length) throw new EdgernnError(`${source} has no ${repr(missing[0])}; expected format, mode, inputs, outputs and states`);
  checkFormat(d.format, source);
  if (!MODES.includes(/** @type {any} */ (d.mode))) {
    throw new EdgernnError(`${source} has edgernn.mode ${repr(d.mode)}; expected one of ${MODES.join(', ')}`);
  }
  for (const key of ['inputs', 'outputs', 'states']) checkListOfObjects(d[key], key, source);
  const inputs = entries(source, 'inputs', /** @type {any[]} */ (d.inputs), tensorFromJson);
  const outputs = entries(source, 'outputs', /** @type {any[]} */ (d.outputs), tensorFromJson);
  const states = entries(source, 'states', /** @type {any[]} */ (d.states), stateFromJson);
  for (const s of states) {
    const want = [STATE_IN + s.name, STATE_OUT + s.name];
    if (s.input !== want[0] || s.output !== want[1]) {
      throw new EdgernnError(`${source} names the graph I/O of state ${repr(s.name)} ${repr(s.input)} -> ${repr(s.output)}; ` +
        `the contract expects ${repr(want[0])} -> ${repr(want[1])}`);
    }
  }
  return { format: FORMAT_VERSION, mode: /** @type {Contract["mode"]} */ (d.mode), inputs, outputs, states };
}

/**
 * The contract in the text of a JSON file (the `<name>.edgernn.json` sidecar of an `.ort` file;
 * Python: `read_contract_json`).
 * @param {string} text @param {string} source the file's name
 * @returns {Contract}
 */
export function contractFromJsonText(text, source) {
  let d;
  try {
    d = JSON.parse(text);
  } catch (e) {
    throw new EdgernnError(`${source} is not valid JSON (${/** @type {Error} */ (e).message})`);
  }
  return contractFromJson(d, source);
}

// ---------------------------------------------------------------------------------------------
// entries

/** @param {unknown} value @param {string} source */
function checkFormat(value, source) {
  if (value !== FORMAT_VERSION) {
    throw new EdgernnError(`${source} uses edgernn contract version ${repr(value)}; this edgernn reads version ` +
      `${repr(FORMAT_VERSION)} (update edgernn-web)`);
  }
}

/** @param {unknown} value @param {string} key @param {string} source */
function checkListOfObjects(value, key, source) {
  if (!Array.isArray(value) || !value.every(isObject)) {
    throw new EdgernnError(`${source} has edgernn.${key} of type ${pyType(value)}; expected a JSON list of objects`);
  }
}

/** A field an entry lacks (Python's KeyError): "without the field 'NAME'". */
class MissingField extends Error {}

/**
 * Each entry parsed by `parse`, its problem told as Python's `_parse_entries` tells it.
 * @template T @param {string} source @param {string} key @param {Record<string, any>[]} list
 * @param {(d: Record<string, any>) => T} parse @returns {T[]}
 */
function entries(source, key, list, parse) {
  return list.map((entry, k) => {
    try {
      return parse(entry);
    } catch (e) {
      const message = /** @type {Error} */ (e).message;
      if (e instanceof MissingField) {
        throw new EdgernnError(`${source} has an entry in edgernn.${key} (number ${k}) without the field ${message}`);
      }
      throw new EdgernnError(`${source} has a malformed entry in edgernn.${key} (number ${k}: ${message})`);
    }
  });
}

/** @param {Record<string, any>} d @param {string[]} fields */
function requireFields(d, fields) {
  for (const f of fields) if (!has(d, f)) throw new MissingField(repr(f));
}

/**
 * One data input or output (Python: `TensorSpec.from_json`).
 * @param {Record<string, any>} d @returns {TensorSpec}
 */
function tensorFromJson(d) {
  requireFields(d, ['name', 'shape', 'dtype', 'batch_axis', 'time_axis']);
  const { name, shape, dtype } = common(d);
  const multiple = has(d, 'frame_multiple') ? d.frame_multiple : 1;
  const delay = has(d, 'delay') ? d.delay : 0;
  if (!isInt(multiple) || multiple < 1) {
    throw new Error(`frame_multiple ${repr(multiple)} of ${repr(name)} is not a positive integer`);
  }
  if (!isInt(delay) || delay < 0) throw new Error(`delay ${repr(delay)} of ${repr(name)} is not a non-negative integer`);
  /** @type {TensorSpec} */
  const t = { name, shape, dtype, batch_axis: axis(d, 'batch_axis'), time_axis: axis(d, 'time_axis') };
  if (multiple !== 1) t.frame_multiple = multiple;
  if (delay !== 0) t.delay = delay;
  return t;
}

/**
 * One state pair (Python: `StateSpec.from_json`); its names are checked by `contractFromJson`.
 * @param {Record<string, any>} d @returns {StateSpec}
 */
function stateFromJson(d) {
  requireFields(d, ['name', 'shape', 'dtype', 'input', 'output', 'batch_axis', 'init']);
  const { name, shape, dtype } = common(d);
  const init = d.init;
  const stored = isObject(init) && Object.keys(init).length === 1 && typeof init.initializer === 'string' && init.initializer !== '';
  if (init !== 'zeros' && !stored) throw new Error(`init ${repr(init)} of state ${repr(name)}; expected "zeros" or {"initializer": NAME}`);
  return {
    name, input: d.input, output: d.output, shape, dtype, batch_axis: axis(d, 'batch_axis'),
    init: init === 'zeros' ? 'zeros' : { initializer: init.initializer },
  };
}

/**
 * The name, shape and dtype of an entry, checked.
 * @param {Record<string, any>} d @returns {{name: string, shape: (number|string)[], dtype: string}}
 */
function common(d) {
  const { name, shape, dtype } = d;
  if (typeof name !== 'string' || !name) throw new Error(`name ${repr(name)} is not a non-empty string`);
  const dim = (/** @type {unknown} */ v) => (isInt(v) && v >= 1) || (typeof v === 'string' && v !== '');
  if (!Array.isArray(shape) || !shape.every(dim)) {
    throw new Error(`shape ${repr(shape)} of ${repr(name)} is not a list of sizes (integers >= 1) and symbols (strings)`);
  }
  if (!DTYPES.includes(dtype)) throw new Error(`dtype ${repr(dtype)} of ${repr(name)} is not one of ${DTYPES.join(', ')}`);
  return { name, shape: [...shape], dtype };
}

/**
 * `batch_axis` or `time_axis` of an entry: null, or an index into its shape.
 * @param {Record<string, any>} d @param {string} key @returns {number|null}
 */
function axis(d, key) {
  const v = d[key];
  if (v === null) return null;
  if (!isInt(v) || v < 0 || v >= d.shape.length) {
    throw new Error(`${key} ${repr(v)} of ${repr(d.name)} is not null nor an axis of its shape ${repr(d.shape)}`);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// values as Python writes them

/** @param {unknown} v @returns {v is number} */
const isInt = (v) => typeof v === 'number' && Number.isInteger(v);

/** @param {unknown} v @returns {v is Record<string, any>} */
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/**
 * The name of a JSON value's type in Python (`type(value).__name__` after `json.loads`).
 * @param {unknown} v
 */
function pyType(v) {
  if (v === null) return 'NoneType';
  if (Array.isArray(v)) return 'list';
  if (typeof v === 'object') return 'dict';
  if (typeof v === 'string') return 'str';
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
  return typeof v;
}

/**
 * A JSON value as Python's `repr` writes it after `json.loads`: 'x', True, None, [1, 'batch'], {'a': 1}.
 * @param {unknown} v @returns {string}
 */
export function repr(v) {
  if (v === null || v === undefined) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'string') {
    const quote = v.includes("'") && !v.includes('"') ? '"' : "'";
    const body = v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\t/g, '\\t');
    return quote + (quote === "'" ? body.replace(/'/g, "\\'") : body) + quote;
  }
  if (Array.isArray(v)) return `[${v.map(repr).join(', ')}]`;
  if (typeof v === 'object') return `{${Object.entries(v).map(([k, x]) => `${repr(k)}: ${repr(x)}`).join(', ')}}`;
  return String(v);
}
