// Node path of the JS runtime tests: `node stream-node.mjs CASES.json OUT.json` runs the cases
// (see cases.js) with onnxruntime-node and writes the results as JSON.
import { readFile, writeFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';
import { runCases } from './cases.js';

const [casesPath, outPath] = process.argv.slice(2);
if (!casesPath || !outPath) {
  console.error('usage: node stream-node.mjs CASES.json OUT.json');
  process.exit(2);
}
const cases = JSON.parse(await readFile(casesPath, 'utf8'));
const results = await runCases(ort, cases, { sessionOptions: { intraOpNumThreads: 1, interOpNumThreads: 1 } });
await writeFile(outPath, JSON.stringify({ runtime: `onnxruntime-node ${ort.env.versions?.common ?? ''}`, results }));
