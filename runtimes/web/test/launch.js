// @ts-check
/**
 * Debian's headless Chromium, driven by playwright-core (no browser is downloaded). The flags keep
 * it off the network (this project's machines have none) and, for WebGPU, give it SwiftShader's
 * software Vulkan adapter (there is no GPU in CI); `--disable-gpu` otherwise.
 */
import { chromium } from 'playwright-core';

/** @param {string} backend "wasm" or "webgpu" */
export function chromiumArgs(backend) {
  return [
    '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--no-first-run', '--disable-quic',
    ...(backend === 'webgpu' ? ['--enable-unsafe-webgpu', '--use-angle=swiftshader', '--enable-features=Vulkan'] : ['--disable-gpu']),
  ];
}

/**
 * Opens `url` in a new headless Chromium; resolves to {browser, page, logs} (console lines of the page).
 * @param {string} url @param {string} backend
 */
export async function openPage(url, backend) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args: chromiumArgs(backend),
  });
  const page = await browser.newPage();
  /** @type {string[]} */
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  return { browser, page, logs };
}
