// @ts-check
/**
 * numpy's `.npz` files (a zip of `.npy` arrays): the `<name>.state_init.npz` that `edgernn pack`
 * writes beside an `.ort` file, holding the stored start values of states that onnxruntime drops
 * from the ORT format (docs/state-contract.md, `init: {"initializer": NAME}`).
 *
 * `numpy.savez` stores its entries uncompressed (and marks them zip64); `numpy.savez_compressed`
 * deflates them. Both are read: stored entries as they are, deflated ones with node:zlib under
 * Node and with the `DecompressionStream('deflate-raw')` of browsers (Chrome 103, Firefox 113,
 * Safari 16.4 and later). The `.npy` format is numpy's (format versions 1 to 3), little-endian and
 * C order, of the dtypes edgernn-web feeds.
 */

import { EdgernnError } from './errors.js';
import { TYPED_ARRAYS } from './onnx-file.js';
import { isNode } from './platform.js';

/** `.npy` type strings -> edgernn dtype names. */
const NPY_DTYPES = /** @type {Record<string, string>} */ ({
  '<f4': 'float32', '<f8': 'float64', '<i4': 'int32', '<i8': 'int64', '<i2': 'int16', '<u2': 'uint16', '<u4': 'uint32',
  '|i1': 'int8', '|u1': 'uint8', '|b1': 'bool',
});

const LOCAL = 0x04034b50;
const CENTRAL = 0x02014b50;
const END = 0x06054b50;
const END64 = 0x06064b50;
const END64_LOCATOR = 0x07064b50;
const FULL = 0xffffffff;

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
export async function readNpz(bytes, source) {
  /** @type {Record<string, NpyArray>} */
  const out = {};
  let entries;
  try {
    entries = zipEntries(bytes);
  } catch (e) {
    throw new EdgernnError(`${source} is not a numpy .npz file (${/** @type {Error} */ (e).message})`);
  }
  for (const entry of entries) {
    if (!entry.name.endsWith('.npy')) continue;
    let data = bytes.subarray(entry.start, entry.start + entry.compressed);
    if (entry.method === 8) data = await inflateRaw(data);
    else if (entry.method !== 0) {
      throw new EdgernnError(`${source} holds ${entry.name} compressed by zip method ${entry.method}; expected stored or ` +
        'deflated entries (numpy.savez or numpy.savez_compressed)');
    }
    out[entry.name.slice(0, -4)] = readNpy(data, `${entry.name} in ${source}`);
  }
  return out;
}

/**
 * One `.npy` array.
 * @param {Uint8Array} bytes @param {string} source
 * @returns {NpyArray}
 */
export function readNpy(bytes, source) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 10 || bytes[0] !== 0x93 || new TextDecoder().decode(bytes.subarray(1, 6)) !== 'NUMPY') {
    throw new EdgernnError(`${source} is not a .npy array`);
  }
  const wide = bytes[6] >= 2;
  const headerLength = wide ? view.getUint32(8, true) : view.getUint16(8, true);
  const start = (wide ? 12 : 10) + headerLength;
  const header = new TextDecoder().decode(bytes.subarray(wide ? 12 : 10, start));
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  const dtype = descr === undefined ? undefined : NPY_DTYPES[descr];
  if (!dtype || shape === undefined || fortran) {
    throw new EdgernnError(`${source} is a .npy array of ${fortran ? 'Fortran order' : `type ${descr}`}; expected a ` +
      `C-order array of one of ${Object.keys(NPY_DTYPES).join(', ')}`);
  }
  const dims = shape.split(',').map((d) => d.trim()).filter((d) => d).map(Number);
  const count = dims.reduce((a, b) => a * b, 1);
  const Typed = TYPED_ARRAYS[dtype];
  if (bytes.length - start < count * Typed.BYTES_PER_ELEMENT) {
    throw new EdgernnError(`${source} has ${bytes.length - start} bytes of data; its shape ${JSON.stringify(dims)} needs ` +
      `${count * Typed.BYTES_PER_ELEMENT}`);
  }
  const data = new Typed(count);  // a copy: the zip's bytes are not aligned for a typed-array view
  new Uint8Array(data.buffer).set(bytes.subarray(start, start + count * Typed.BYTES_PER_ELEMENT));
  return { dtype, dims, data };
}

/**
 * The entries of a zip file, from its central directory (zip64 records included).
 * @param {Uint8Array} bytes
 * @returns {{name: string, method: number, compressed: number, start: number}[]}
 */
function zipEntries(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let end = bytes.length - 22;
  while (end >= 0 && view.getUint32(end, true) !== END) end--;
  if (end < 0) throw new Error('no zip directory');
  let count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  if (at === FULL || count === 0xffff) {
    const locator = end - 20;
    if (locator < 0 || view.getUint32(locator, true) !== END64_LOCATOR) throw new Error('no zip64 directory');
    const end64 = Number(view.getBigUint64(locator + 8, true));
    if (view.getUint32(end64, true) !== END64) throw new Error('no zip64 directory');
    count = Number(view.getBigUint64(end64 + 32, true));
    at = Number(view.getBigUint64(end64 + 48, true));
  }
  const out = [];
  for (let i = 0; i < count; i++) {
    if (view.getUint32(at, true) !== CENTRAL) throw new Error('a broken zip directory');
    const method = view.getUint16(at + 10, true);
    let compressed = view.getUint32(at + 20, true);
    const size = view.getUint32(at + 24, true);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    let local = view.getUint32(at + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    // zip64 extra field (id 1): the 8-byte values of the fields that read 0xffffffff, in this order
    for (let x = at + 46 + nameLength; x + 4 <= at + 46 + nameLength + extraLength;) {
      const id = view.getUint16(x, true);
      const length = view.getUint16(x + 2, true);
      if (id === 1) {
        let p = x + 4;
        const next = () => { const v = Number(view.getBigUint64(p, true)); p += 8; return v; };
        if (size === FULL) next();
        if (compressed === FULL) compressed = next();
        if (local === FULL) local = next();
      }
      x += 4 + length;
    }
    if (view.getUint32(local, true) !== LOCAL) throw new Error(`a broken entry ${name}`);
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    if (start + compressed > bytes.length) throw new Error(`entry ${name} runs past the end of the file`);
    out.push({ name, method, compressed, start });
    at += 46 + nameLength + extraLength + commentLength;
  }
  return out;
}

/**
 * Raw deflate data, inflated.
 * @param {Uint8Array} data @returns {Promise<Uint8Array>}
 */
async function inflateRaw(data) {
  if (isNode) {
    const zlib = await import('node:zlib');
    return new Uint8Array(zlib.inflateRawSync(data));
  }
  if (typeof DecompressionStream === 'undefined') {
    throw new EdgernnError('this browser has no DecompressionStream to read a compressed .npz; write it with numpy.savez');
  }
  const stream = new Blob([data.slice()]).stream().pipeThrough(new DecompressionStream('deflate-raw'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
