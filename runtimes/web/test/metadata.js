// @ts-check
/**
 * Runs the shared metadata fixtures (tests/fixtures/metadata/cases/*.json, the same cases that
 * tests/test_metadata_fixtures.py runs through Python) through the JavaScript readers: under Node
 * (metadata-node.mjs) and in the browser (page.html, files fetched over HTTP).
 *
 * A case is metadata_props (`props`: `contractFromMetadata`), a contract sidecar (`sidecar` or
 * `sidecar_text`: `contractFromJson`), or a model file (`file`, opened by
 * `StreamingSession.create` with `{states: state_pairs}`), and says what must come of it
 * (`js_expect` where this runtime differs from Python on purpose, else `expect`): the contract
 * (`contract`, `contract_from`, `start_values` by state) or an error containing `error`.
 */

import { contractFromJson, contractFromMetadata, StreamingSession } from '../src/index.js';
import { contractFromJsonText } from '../src/contract.js';

/**
 * Keys sorted, so that two JSON values compare by their text.
 * @param {any} v @returns {any}
 */
function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]));
  return v;
}

/** @param {any} a @param {any} b */
const same = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));

/**
 * What the JS runtime makes of one case: {contract, contract_from, start_values}.
 * @param {any} ort @param {any} c @param {string} base where the model files are (a folder path or URL, with its /)
 */
async function open(ort, c, base) {
  if (c.props) return { contract: contractFromMetadata(c.props, 'model.onnx'), contract_from: 'metadata' };
  if ('sidecar_text' in c) return { contract: contractFromJsonText(c.sidecar_text, 'model.edgernn.json') };
  if ('sidecar' in c) return { contract: contractFromJson(c.sidecar, 'model.edgernn.json') };
  const s = await StreamingSession.create(base + c.file, { ort, states: c.state_pairs, sessionOptions: { logSeverityLevel: 3 } });
  try {
    /** @type {Record<string, {shape: number[], data: number[]}>} */
    const starts = {};
    for (const spec of s.states) {
      if (spec.init === 'zeros') continue;
      const t = s.state[spec.name];
      starts[spec.name] = { shape: Array.from(t.dims), data: Array.from(/** @type {any} */ (t.data), Number) };
    }
    return { contract: s.contract, contract_from: s.contractFrom, start_values: starts };
  } finally {
    await s.release();
  }
}

/**
 * What is wrong with one case's outcome, or '' when it came out as expected.
 * @param {any} ort @param {any} c @param {string} base @returns {Promise<string>}
 */
async function check(ort, c, base) {
  const expect = c.js_expect ?? c.expect;
  const text = JSON.stringify;
  let got;
  try {
    got = await open(ort, c, base);
  } catch (e) {
    const err = /** @type {Error} */ (e);
    if (!('error' in expect)) return `threw ${err.name}: ${err.message}`;
    if (err.name !== 'EdgernnError') return `threw ${err.name}, not EdgernnError: ${err.message}`;
    if (!err.message.includes(expect.error)) return `the error ${text(err.message)} does not say ${text(expect.error)}`;
    const about = c.props ? 'model.onnx ' : 'model.edgernn.json ';
    if (!c.file && !err.message.includes(about)) return `the error ${text(err.message)} does not name ${about}`;
    return '';
  }
  if ('error' in expect) return `gave a contract (${text(got.contract).slice(0, 200)}); expected an error saying ${text(expect.error)}`;
  if (!same(got.contract, expect.contract)) return `contract ${text(got.contract)}; expected ${text(expect.contract)}`;
  if (expect.contract_from && got.contract_from !== expect.contract_from) {
    return `contract from ${got.contract_from}; expected ${expect.contract_from}`;
  }
  const starts = expect.start_values ?? {};
  if (!same(got.start_values ?? {}, starts)) return `start values ${text(got.start_values)}; expected ${text(starts)}`;
  return '';
}

/**
 * Runs `cases` ({name: case}); resolves to {name: problem} for the cases that did not come out as
 * expected (empty when all did) and the number run.
 * @param {any} ort @param {Record<string, any>} cases @param {string} base
 * @returns {Promise<{run: number, failures: Record<string, string>}>}
 */
export async function checkMetadataCases(ort, cases, base) {
  /** @type {Record<string, string>} */
  const failures = {};
  for (const [name, c] of Object.entries(cases)) {
    const problem = await check(ort, c, base);
    if (problem) failures[name] = problem;
  }
  return { run: Object.keys(cases).length, failures };
}
