// @ts-check
/**
 * The `metadata_props` of an ORT-format model (the flatbuffers file that `edgernn pack` and
 * onnxruntime's converter write), which onnxruntime's JavaScript API does not give.
 *
 * A minimal reader of the flatbuffers layout that walks only the tables on the way: the root
 * `InferenceSession`, its `model`, the model's `metadata_props` and each entry's key and value.
 * Field slots are those of onnxruntime's ort.fbs (the Python package reads the same file through
 * onnxruntime's generated reader, `onnxruntime.tools.ort_format_model`):
 * InferenceSession: ort_version = 0, model = 1. Model: metadata_props = 9.
 * StringStringEntry: key = 0, value = 1.
 */

import { EdgernnError } from './errors.js';

const SESSION_MODEL = 1;
const MODEL_METADATA_PROPS = 9;

const utf8 = new TextDecoder('utf-8');

/**
 * Whether `bytes` is an ORT-format (flatbuffers) model: its file identifier, bytes 4 to 8, is "ORTM".
 * @param {Uint8Array} bytes
 */
export function isOrtFormat(bytes) {
  return bytes.length >= 8 && utf8.decode(bytes.subarray(4, 8)) === 'ORTM';
}

/**
 * The `metadata_props` of an ORT-format model, as a plain object (key -> value).
 * @param {Uint8Array} bytes the .ort file
 * @param {string} [source] how the message names the file
 * @returns {Record<string, string>}
 */
export function readOrtMetadata(bytes, source = 'the model') {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  /** @param {number} at a uoffset field: where it points */
  const follow = (at) => at + view.getUint32(at, true);
  /**
   * Where field `slot` of the table at `table` is, or 0 when the table does not have it.
   * @param {number} table @param {number} slot
   */
  const field = (table, slot) => {
    const vtable = table - view.getInt32(table, true);
    const entry = 4 + 2 * slot;
    if (entry >= view.getUint16(vtable, true)) return 0;
    const offset = view.getUint16(vtable + entry, true);
    return offset ? table + offset : 0;
  };
  /** @param {number} at a string field */
  const string = (at) => {
    if (!at) return '';
    const start = follow(at);
    const length = view.getUint32(start, true);
    if (start + 4 + length > bytes.length) throw new RangeError('string past the end');
    return utf8.decode(bytes.subarray(start + 4, start + 4 + length));
  };
  /** @type {Record<string, string>} */
  const out = {};
  try {
    const model = field(follow(0), SESSION_MODEL);
    if (!model) return out;
    const props = field(follow(model), MODEL_METADATA_PROPS);
    if (!props) return out;
    const vector = follow(props);
    const count = view.getUint32(vector, true);
    for (let i = 0; i < count; i++) {
      const entry = follow(vector + 4 + 4 * i);
      out[string(field(entry, 0))] = string(field(entry, 1));
    }
  } catch (e) {
    throw new EdgernnError(`${source} is not a readable ORT-format model (${/** @type {Error} */ (e).message})`);
  }
  return out;
}
