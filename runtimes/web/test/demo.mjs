// Drives the demo page: `node demo.mjs URL OUT.json BACKEND LABEL...` opens URL (demo/index.html,
// served by examples/wakeword/web.py or the tests), streams every frame through each model LABEL
// with window.demo.run, and writes {label: result} (logits per frame, maxDiff, stepUs) as JSON.
import { writeFile } from 'node:fs/promises';
import { openPage } from './launch.js';

const [url, outPath, backend = 'wasm', ...labels] = process.argv.slice(2);
if (!url || !outPath || !labels.length) {
  console.error('usage: node demo.mjs URL OUT.json wasm|webgpu LABEL...');
  process.exit(2);
}
const { browser, page, logs } = await openPage(url, backend);
try {
  await page.evaluate(() => window.demo.ready);
  /** @type {Record<string, any>} */
  const out = { browser: browser.version(), logs, runs: {} };
  for (const label of labels) {
    out.runs[label] = await page.evaluate(([m, b]) => window.demo.run({ model: m, backend: b, fast: true }).catch((e) => ({ error: String(e.message ?? e) })), [label, backend]);
  }
  out.screenshot = (await page.screenshot({ fullPage: true })).toString('base64');
  await writeFile(outPath, JSON.stringify(out));
} finally {
  await browser.close();
}
