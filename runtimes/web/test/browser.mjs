// Browser path of the JS runtime tests: `node browser.mjs URL CASES.json OUT.json [BACKEND] [BASE] [RUNNER]`
// opens URL (page.html, served by edgernn.runtimes.webserve) in Debian's headless Chromium, runs
// the cases there (RUNNER: runCases, cases.js, the default; or checkMetadataCases, metadata.js;
// model URLs prefixed with BASE) and writes the results as JSON.
import { readFile, writeFile } from 'node:fs/promises';
import { openPage } from './launch.js';

const [url, casesPath, outPath, backend = 'wasm', base = '', runner = 'runCases'] = process.argv.slice(2);
if (!url || !casesPath || !outPath || !['runCases', 'checkMetadataCases'].includes(runner)) {
  console.error('usage: node browser.mjs URL CASES.json OUT.json [wasm|webgpu] [BASE] [runCases|checkMetadataCases]');
  process.exit(2);
}
const { browser, page, logs } = await openPage(url, backend);
try {
  await page.waitForFunction(() => window.testReady === true, null, { timeout: 30000 });
  const cases = JSON.parse(await readFile(casesPath, 'utf8'));
  const out = await page.evaluate(([c, b, p, r]) => window[r](c, b, p), [cases, backend, base, runner]);
  out.browser = browser.version();
  out.logs = logs;
  await writeFile(outPath, JSON.stringify(out));
} finally {
  await browser.close();
}
