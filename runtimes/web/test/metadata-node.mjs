// Node path of the shared metadata fixtures: `node metadata-node.mjs [FIXTURES]` runs every case in
// FIXTURES/cases/*.json (default: the repository's tests/fixtures/metadata) through edgernn-web's
// readers with onnxruntime-node (see metadata.js), prints one line per failure and a count, and
// exits 1 when a case did not come out as expected.
import { readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { checkMetadataCases } from './metadata.js';

const folder = resolve(process.argv[2] ?? join(fileURLToPath(import.meta.url), '../../../../tests/fixtures/metadata'));
/** @type {Record<string, any>} */
const cases = {};
for (const f of (await readdir(join(folder, 'cases'))).filter((n) => n.endsWith('.json')).sort()) {
  cases[f.slice(0, -5)] = JSON.parse(await readFile(join(folder, 'cases', f), 'utf8'));
}
const { run, failures } = await checkMetadataCases(ort, cases, join(folder, 'files') + '/');
for (const [name, problem] of Object.entries(failures)) console.log(`FAIL ${name}: ${problem}`);
const failed = Object.keys(failures).length;
console.log(`${run - failed} passed, ${failed} failed (metadata fixtures, onnxruntime-node ${ort.env.versions?.common ?? ''})`);
process.exit(failed || !run ? 1 : 0);
