/**
 * Whether `bytes` is an ORT-format (flatbuffers) model: its file identifier, bytes 4 to 8, is "ORTM".
 * @param {Uint8Array} bytes
 */
export function isOrtFormat(bytes: Uint8Array): boolean;
/**
 * The `metadata_props` of an ORT-format model, as a plain object (key -> value).
 * @param {Uint8Array} bytes the .ort file
 * @param {string} [source] how the message names the file
 * @returns {Record<string, string>}
 */
export function readOrtMetadata(bytes: Uint8Array, source?: string): Record<string, string>;
