// @ts-check
/**
 * The two things a streaming runtime needs from an ONNX file that onnxruntime's JavaScript API
 * does not give: the model's `metadata_props` (where edgernn writes its state contract) and the
 * values of a few named initializers (states that start from stored values, not zeros).
 *
 * onnxruntime-web and onnxruntime-node expose input/output names and shapes but not custom
 * metadata, and pulling in a full protobuf library (protobufjs + onnx-proto, about 2 MB) to read
 * two fields would outweigh the rest of this package. So this is a minimal reader of the
 * protobuf wire format that walks only the top-level fields of ModelProto and GraphProto,
 * skipping everything else (weights included) by length, without copying.
 *
 * (ORT-format files are read by ort-file.js; contract.js reads the edgernn entries of the metadata.)
 *
 * Field numbers are those of onnx/onnx.proto (IR version 3 and later):
 * ModelProto: graph = 7, metadata_props = 14. GraphProto: initializer = 5.
 * StringStringEntryProto: key = 1, value = 2.
 * TensorProto: dims = 1, data_type = 2, float_data = 4, int32_data = 5, int64_data = 7,
 * name = 8, raw_data = 9, double_data = 10, data_location = 14.
 */

import { EdgernnError } from './errors.js';

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

/** The typed array that holds each dtype's values (onnxruntime-web's Tensor takes the same ones). */
export const TYPED_ARRAYS = /** @type {Record<string, any>} */ ({
  float32: Float32Array, float64: Float64Array, int32: Int32Array, int64: BigInt64Array, int8: Int8Array,
  uint8: Uint8Array, int16: Int16Array, uint16: Uint16Array, uint32: Uint32Array, bool: Uint8Array,
});

/** onnx TensorProto.DataType numbers -> the dtype names used in edgernn metadata. */
export const ONNX_DTYPES = /** @type {Record<number, string>} */ ({
  1: 'float32', 2: 'uint8', 3: 'int8', 4: 'uint16', 5: 'int16', 6: 'int32', 7: 'int64', 9: 'bool',
  10: 'float16', 11: 'float64', 12: 'uint32', 13: 'uint64',
});

/**
 * A cursor over protobuf bytes.
 */
class Reader {
  /** @param {Uint8Array} bytes @param {number} [start] @param {number} [end] */
  constructor(bytes, start = 0, end = bytes.length) {
    this.bytes = bytes;
    this.pos = start;
    this.end = end;
  }

  /** Reads a varint as a Number (exact up to 2^53, which covers every length and size here). */
  varint() {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new EdgernnError('truncated protobuf varint');
      const b = this.bytes[this.pos++];
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 128;
    }
    throw new EdgernnError('malformed protobuf varint');
  }

  /** Reads a varint as a signed 64-bit BigInt (two's complement, as int64 fields are stored). */
  varint64() {
    let result = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new EdgernnError('truncated protobuf varint');
      const b = this.bytes[this.pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asIntN(64, result);
      shift += 7n;
    }
    throw new EdgernnError('malformed protobuf varint');
  }

  /**
   * The next field: its number, wire type, and for length-delimited fields the [start, end) of its bytes.
   * @returns {{field: number, wire: number, start: number, end: number}}
   */
  next() {
    const key = this.varint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    const start = this.pos;
    if (wire === VARINT) this.varint();
    else if (wire === I64) this.pos += 8;
    else if (wire === I32) this.pos += 4;
    else if (wire === LEN) {
      const n = this.varint();
      const s = this.pos;
      this.pos += n;
      if (this.pos > this.end) throw new EdgernnError('truncated protobuf field');
      return { field, wire, start: s, end: this.pos };
    } else throw new EdgernnError(`unsupported protobuf wire type ${wire}`);
    if (this.pos > this.end) throw new EdgernnError('truncated protobuf field');
    return { field, wire, start, end: this.pos };
  }

  done() {
    return this.pos >= this.end;
  }
}

const utf8 = new TextDecoder('utf-8');

/** @param {Uint8Array} bytes @param {number} start @param {number} end */
function text(bytes, start, end) {
  return utf8.decode(bytes.subarray(start, end));
}

/**
 * The `metadata_props` of an ONNX model, as a plain object (key -> value).
 * @param {Uint8Array} bytes the .onnx file
 * @returns {Record<string, string>}
 */
export function readMetadata(bytes) {
  /** @type {Record<string, string>} */
  const out = {};
  const r = new Reader(bytes);
  while (!r.done()) {
    const f = r.next();
    if (f.field !== 14 || f.wire !== LEN) continue;
    const e = new Reader(bytes, f.start, f.end);
    let key = '';
    let value = '';
    while (!e.done()) {
      const g = e.next();
      if (g.wire !== LEN) continue;
      if (g.field === 1) key = text(bytes, g.start, g.end);
      else if (g.field === 2) value = text(bytes, g.start, g.end);
    }
    out[key] = value;
  }
  return out;
}

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
export function readInitializers(bytes, names) {
  const wanted = new Set(names);
  /** @type {Record<string, StoredTensor>} */
  const out = {};
  if (wanted.size === 0) return out;
  const model = new Reader(bytes);
  while (!model.done()) {
    const f = model.next();
    if (f.field !== 7 || f.wire !== LEN) continue;
    const graph = new Reader(bytes, f.start, f.end);
    while (!graph.done()) {
      const g = graph.next();
      if (g.field !== 5 || g.wire !== LEN) continue;
      const t = readTensor(bytes, g.start, g.end, wanted);
      if (t) out[t.name] = t;
    }
  }
  return out;
}

/**
 * One TensorProto, or null when its name is not wanted.
 * @param {Uint8Array} bytes @param {number} start @param {number} end @param {Set<string>} wanted
 * @returns {StoredTensor | null}
 */
function readTensor(bytes, start, end, wanted) {
  const r = new Reader(bytes, start, end);
  /** @type {number[]} */
  const dims = [];
  let type = 0;
  let name = '';
  let external = false;
  /** @type {{field: number, wire: number, start: number, end: number}[]} */
  const payload = [];
  while (!r.done()) {
    const f = r.next();
    if (f.field === 1) {
      if (f.wire === LEN) {
        const p = new Reader(bytes, f.start, f.end);
        while (!p.done()) dims.push(Number(p.varint64()));
      } else dims.push(Number(new Reader(bytes, f.start, f.end).varint64()));
    } else if (f.field === 2) type = new Reader(bytes, f.start, f.end).varint();
    else if (f.field === 8) name = text(bytes, f.start, f.end);
    else if (f.field === 14) external = new Reader(bytes, f.start, f.end).varint() === 1;
    else if ([4, 5, 7, 9, 10].includes(f.field)) payload.push(f);
  }
  if (!wanted.has(name)) return null;
  const dtype = ONNX_DTYPES[type];
  if (!dtype || dtype === 'float16' || dtype === 'uint16' || dtype === 'int16' || dtype === 'uint32' || dtype === 'uint64') {
    throw new EdgernnError(`initializer '${name}' has ONNX data type ${type}, which this reader does not decode`);
  }
  if (external) {
    throw new EdgernnError(`initializer '${name}' is stored in an external data file; save the model with its data inside`);
  }
  const count = dims.reduce((a, b) => a * b, 1);
  const data = decode(bytes, dtype, count, payload, name);
  return { name, dtype, dims, data };
}


/**
 * Decodes a tensor's values from raw_data (little-endian bytes) or from the typed repeated fields.
 * @param {Uint8Array} bytes @param {string} dtype @param {number} count
 * @param {{field: number, wire: number, start: number, end: number}[]} payload @param {string} name
 */
function decode(bytes, dtype, count, payload, name) {
  const Array_ = TYPED_ARRAYS[dtype];
  const out = new Array_(count);
  const raw = payload.find((f) => f.field === 9);
  if (raw) {
    if (raw.end - raw.start !== count * Array_.BYTES_PER_ELEMENT) {
      throw new EdgernnError(`initializer '${name}' has ${raw.end - raw.start} bytes of data; expected ${count * Array_.BYTES_PER_ELEMENT}`);
    }
    // copy: the file's bytes are not aligned for a typed-array view (and stay little-endian, as on every target)
    new Uint8Array(out.buffer).set(bytes.subarray(raw.start, raw.end));
    return out;
  }
  let i = 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const f of payload) {
    if (f.wire === LEN) {
      if (f.field === 4) for (let p = f.start; p < f.end; p += 4) out[i++] = view.getFloat32(p, true);
      else if (f.field === 10) for (let p = f.start; p < f.end; p += 8) out[i++] = view.getFloat64(p, true);
      else {
        const r = new Reader(bytes, f.start, f.end);
        while (!r.done()) out[i++] = dtype === 'int64' ? r.varint64() : Number(r.varint64());
      }
    } else if (f.wire === I32) out[i++] = view.getFloat32(f.start, true);
    else if (f.wire === I64) out[i++] = view.getFloat64(f.start, true);
    else {
      const v = new Reader(bytes, f.start, f.end).varint64();
      out[i++] = dtype === 'int64' ? v : Number(v);
    }
  }
  if (i !== count) {
    throw new EdgernnError(`initializer '${name}' has ${i} values; its dims need ${count}`);
  }
  return out;
}
