// The process `edgernn check` talks to for its `node` and `web` runtimes (runtimes/check_runners.py):
//   node check.mjs node              edgernn-web with onnxruntime-node, in this process
//   node check.mjs wasm PAGE_URL     edgernn-web with onnxruntime-web (WASM) in headless Chromium (check.html)
// It reads one JSON command per line on stdin (check-core.js) and writes one JSON answer per line
// on stdout: {ok: true, ...} or {ok: false, error, errorName}. The first line says it is ready.
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';

const [backend = 'node', url] = process.argv.slice(2);
/** @param {object} obj */
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
/** @param {any} e */
const failed = (e) => ({ ok: false, error: String(e?.message ?? e).split('\n')[0], errorName: e?.name ?? 'Error' });

let handle;
let close = async () => {};
let runtime;
try {
  if (backend === 'node') {
    const ort = await import('onnxruntime-node');
    const { Checker } = await import('./check-core.js');
    const checker = new Checker(ort, async (p) => {
      const b = await readFile(p);
      return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
    }, (threads) => ({ intraOpNumThreads: threads, interOpNumThreads: 1 }));
    handle = (cmd) => checker.handle(cmd);
    runtime = `onnxruntime-node ${ort.env?.versions?.node ?? ort.env?.versions?.common ?? ''} under Node ${process.versions.node}`;
  } else if (backend === 'wasm' && url) {
    const { openPage } = await import('../test/launch.js');
    const { browser, page } = await openPage(url, 'wasm');
    close = () => browser.close();
    await page.waitForFunction(() => window.checkReady === true, null, { timeout: 60000 });
    handle = (cmd) => page.evaluate((c) => window.check(c), cmd);
    const version = await page.evaluate(() => window.ortVersion);
    runtime = `onnxruntime-web ${version} (wasm) in Chromium ${browser.version()}`;
  } else {
    throw new Error('usage: node check.mjs node | node check.mjs wasm PAGE_URL');
  }
  say({ ok: true, ready: true, runtime });
} catch (e) {
  say(failed(e));
  await close();
  process.exit(1);
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    const cmd = JSON.parse(line);
    const answer = await handle(cmd);
    say(answer && answer.ok === false ? answer : { ok: true, runtime, ...answer });
  } catch (e) {
    say(failed(e));
  }
}
await close();
