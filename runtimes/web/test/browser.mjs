// Browser path of the JS runtime tests: `node browser.mjs URL CASES.json OUT.json [BACKEND]` opens
// URL (page.html, served with edgernn.runtimes.webserve) in Debian's headless Chromium, driven by
// playwright-core (no downloaded browser), runs the cases there and writes the results as JSON.
import { readFile, writeFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';

const [url, casesPath, outPath, backend = 'wasm', base = ''] = process.argv.slice(2);
if (!url || !casesPath || !outPath) {
  console.error('usage: node browser.mjs URL CASES.json OUT.json [wasm|webgpu] [BASE]');
  process.exit(2);
}
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run', '--disable-quic', ...(backend === 'webgpu'
    ? ['--enable-unsafe-webgpu', '--use-angle=swiftshader', '--enable-features=Vulkan']
    : ['--disable-gpu']),
];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS,
});
try {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.testReady === true, null, { timeout: 30000 });
  const cases = JSON.parse(await readFile(casesPath, 'utf8'));
  const out = await page.evaluate(([c, b, p]) => window.runCases(c, b, p), [cases, backend, base]);
  out.browser = browser.version();
  out.logs = logs;
  await writeFile(outPath, JSON.stringify(out));
} finally {
  await browser.close();
}
