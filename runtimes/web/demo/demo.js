// The demo page: streams demo.json's frames (written by examples/wakeword/web.py) through an
// edgernn step model with edgernn-web's StreamingSession, one frame per call, and plots the bands
// and the keyword probability live, next to the Python runtime's logits for the same frames.
//
// For automated tests: window.demo = { ready, run({model, backend, fast}) } (see the end).
import * as ort from 'onnxruntime-web';
import { StreamingSession } from 'edgernn-web';

// A streaming step is one frame through a small GRU, far too small to split across threads.
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;

const params = new URLSearchParams(location.search);
const DATA_URL = new URL(params.get('data') ?? '/assets/demo.json', location.href);
const VIEW = 500; // frames shown at once (5 s of 10 ms frames)
const WINDOW = 500; // steps in the p50 / p90 shown
const WARMUP = 20; // steps run (then reset) when a session is made, so the first timings are not its setup

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
const ui = {
  model: $('model'), backend: $('backend'), speed: $('speed'), start: $('start'), reset: $('reset'),
  error: $('error'), canvas: $('plot'), backendOut: $('s-backend'), frames: $('s-frames'), p50: $('s-p50'),
  p90: $('s-p90'), diff: $('s-diff'), py: $('s-py'),
};

/** what demo.json holds, and the state of the stream being played */
const st = {
  data: /** @type {any} */ (null),
  frames: /** @type {Float32Array[]} */ ([]),
  spectrogram: /** @type {HTMLCanvasElement|null} */ (null),
  sessions: new Map(), // "label|backend" -> Promise<StreamingSession>
  session: /** @type {any} */ (null),
  model: /** @type {any} */ (null), // the entry of data.models in use
  backend: 'wasm',
  pos: 0, // frames done
  logits: /** @type {number[][]} */ ([]),
  prob: new Float32Array(0),
  probPy: new Float32Array(0),
  recent: new Float64Array(WINDOW), // last step times, ms (a ring)
  recentCount: 0,
  maxDiff: 0,
  playing: /** @type {Promise<void>|null} */ (null),
  stopRequested: false,
};

const sigmoid = (/** @type {number} */ z) => 1 / (1 + Math.exp(-z));
const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

function showError(/** @type {any} */ e) {
  const message = e instanceof Error ? e.message : String(e);
  ui.error.textContent = message;
  ui.error.hidden = false;
  console.error(e);
}
const clearError = () => { ui.error.hidden = true; ui.error.textContent = ''; };

/** Percentiles of `values` (linear between ranks, as numpy's default). */
function percentile(/** @type {ArrayLike<number>} */ values, /** @type {number} */ q) {
  const a = Float64Array.from(values).sort();
  if (!a.length) return NaN;
  const r = (q / 100) * (a.length - 1);
  const lo = Math.floor(r);
  return a[lo] + (a[Math.min(lo + 1, a.length - 1)] - a[lo]) * (r - lo);
}

// --- data and sessions ---------------------------------------------------------------------------

async function loadData() {
  let response;
  try {
    response = await fetch(DATA_URL);
  } catch (e) {
    throw new Error(`cannot fetch ${DATA_URL}: ${/** @type {Error} */ (e).message}`);
  }
  if (!response.ok) {
    throw new Error(`cannot fetch ${DATA_URL}: HTTP ${response.status} ${response.statusText} (run examples/wakeword/web.py, which writes it)`);
  }
  const data = await response.json();
  if (!Array.isArray(data.frames) || !Array.isArray(data.models) || !data.models.length) {
    throw new Error(`${DATA_URL} has no frames or no models; write it with examples/wakeword/web.py`);
  }
  st.data = data;
  st.frames = data.frames.map((/** @type {number[]} */ f) => Float32Array.from(f));
  st.spectrogram = spectrogramImage(st.frames);
  for (const m of data.models) {
    m.href = new URL(m.url, DATA_URL).href;
    m.probPy = Float32Array.from(m.python, (/** @type {number[]} */ z) => sigmoid(z[1] - z[0]));
    ui.model.add(new Option(m.label, m.label));
  }
  const gpu = /** @type {any} */ (navigator).gpu;
  if (gpu) {
    // offered where the browser has WebGPU; greyed out when it finds no adapter (e.g. no GPU)
    const adapter = await gpu.requestAdapter().catch(() => null);
    const option = new Option(adapter ? 'webgpu' : 'webgpu (no adapter)', 'webgpu');
    option.disabled = !adapter;
    ui.backend.add(option);
  }
}

/** The session for a model and a backend, made once (and warmed up) and kept. */
function sessionFor(/** @type {any} */ model, /** @type {string} */ backend) {
  const key = `${model.label}|${backend}`;
  if (!st.sessions.has(key)) {
    const made = (async () => {
      if (backend === 'webgpu') {
        const gpu = /** @type {any} */ (navigator).gpu;
        if (!gpu) throw new Error('the webgpu backend is not available: this browser has no navigator.gpu (use wasm)');
        if (!(await gpu.requestAdapter())) throw new Error('the webgpu backend is not available: navigator.gpu.requestAdapter() found no adapter (use wasm)');
      } else if (backend !== 'wasm') {
        throw new Error(`unknown backend '${backend}'; expected wasm or webgpu`);
      }
      const s = await StreamingSession.create(model.href, { ort, batch: 1, name: model.url, sessionOptions: { executionProviders: [backend] } });
      for (let t = 0; t < Math.min(WARMUP, st.frames.length); t++) await s.step(st.frames[t]);
      s.reset();
      return s;
    })();
    st.sessions.set(key, made);
    made.catch(() => st.sessions.delete(key)); // a failure is not kept: the next try tries again
  }
  return st.sessions.get(key);
}

/** Switches to a model and backend: the stream starts over. */
async function use(/** @type {string} */ label, /** @type {string} */ backend) {
  const model = st.data.models.find((/** @type {any} */ m) => m.label === label);
  if (!model) {
    throw new Error(`no model '${label}' in ${DATA_URL}; its models are ${st.data.models.map((/** @type {any} */ m) => `'${m.label}'`).join(', ')}`);
  }
  let session;
  try {
    session = await sessionFor(model, backend);
  } catch (e) {
    if (st.model) { ui.model.value = st.model.label; ui.backend.value = st.backend; } // keep what runs
    throw e;
  }
  ui.model.value = label;
  ui.backend.value = backend;
  st.session = session;
  st.model = model;
  st.backend = backend;
  restart();
}

/** Back to the first frame, from the start state. */
function restart() {
  if (st.session) st.session.reset();
  st.pos = 0;
  st.logits = [];
  st.prob = new Float32Array(st.frames.length);
  st.probPy = st.model ? st.model.probPy : new Float32Array(st.frames.length);
  st.recentCount = 0;
  st.maxDiff = 0;
  draw();
}

// --- streaming -----------------------------------------------------------------------------------

/** Streams from the current frame to the end (or until stopped); `times` collects every step's ms. */
function play(/** @type {boolean} */ fast, /** @type {number[]} */ times = []) {
  if (st.playing) return st.playing;
  st.stopRequested = false;
  const session = st.session;
  const frameMs = st.data.frame_ms;
  const py = st.model.python;
  const output = session.outputs[0].name;
  st.playing = (async () => {
    const t0 = performance.now();
    const first = st.pos;
    let lastYield = t0;
    while (st.pos < st.frames.length && !st.stopRequested) {
      const i = st.pos;
      const wait = fast ? 0 : t0 + (i - first) * frameMs - performance.now();
      if (wait > 1) {
        await sleep(wait);
        lastYield = performance.now();
      } else if (performance.now() - lastYield > 30) {
        await sleep(0); // let the page draw
        lastYield = performance.now();
      }
      if (st.stopRequested) break;
      const a = performance.now();
      const out = await session.step(st.frames[i]);
      const dt = performance.now() - a;
      const z = Array.from(out[output].data, Number);
      st.logits.push(z);
      st.prob[i] = sigmoid(z[1] - z[0]);
      st.maxDiff = Math.max(st.maxDiff, Math.abs(z[0] - py[i][0]), Math.abs(z[1] - py[i][1]));
      st.recent[st.recentCount++ % WINDOW] = dt;
      times.push(dt);
      st.pos = i + 1;
      scheduleDraw();
    }
  })().finally(() => {
    st.playing = null;
    buttons();
    draw();
  });
  buttons();
  return st.playing;
}

async function stop() {
  st.stopRequested = true;
  if (st.playing) await st.playing.catch(() => {});
}

function buttons() {
  const loaded = !!st.session;
  ui.start.disabled = !loaded;
  ui.reset.disabled = !loaded;
  ui.start.textContent = st.playing ? 'Stop' : st.pos >= st.frames.length && st.pos > 0 ? 'Replay' : 'Start';
}

// --- drawing -------------------------------------------------------------------------------------

const HEAT = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];

/** The whole stream as an image, one pixel per frame and band (low bands at the bottom); each band
 *  is shown against its median over the stream, so events stand out from the spectral tilt. */
function spectrogramImage(/** @type {Float32Array[]} */ frames) {
  const bands = frames.length ? frames[0].length : 0;
  const median = Array.from({ length: bands }, (_, b) => percentile(frames.map((f) => f[b]), 50));
  const all = Float64Array.from(frames.flatMap((f) => Array.from(f, (v, b) => v - median[b]))).sort();
  const lo = all[Math.floor(all.length * 0.05)] ?? 0;
  const hi = all[Math.floor(all.length * 0.998)] ?? 1;
  const c = document.createElement('canvas');
  c.width = Math.max(frames.length, 1);
  c.height = Math.max(bands, 1);
  const ctx = /** @type {CanvasRenderingContext2D} */ (c.getContext('2d'));
  const img = ctx.createImageData(c.width, c.height);
  frames.forEach((f, t) => {
    for (let b = 0; b < bands; b++) {
      const v = Math.min(1, Math.max(0, (f[b] - median[b] - lo) / (hi - lo || 1))) * (HEAT.length - 1);
      const k = Math.min(Math.floor(v), HEAT.length - 2);
      const w = v - k;
      const p = ((bands - 1 - b) * c.width + t) * 4;
      for (let ch = 0; ch < 3; ch++) img.data[p + ch] = HEAT[k][ch] + (HEAT[k + 1][ch] - HEAT[k][ch]) * w;
      img.data[p + 3] = 255;
    }
  });
  ctx.putImageData(img, 0, 0);
  return c;
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    draw();
  });
}

function draw() {
  const canvas = ui.canvas;
  const dpr = window.devicePixelRatio || 1;
  const W = canvas.clientWidth;
  const H = canvas.clientHeight;
  if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
    canvas.width = Math.round(W * dpr);
    canvas.height = Math.round(H * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  ctx.font = '12px system-ui, sans-serif';
  ctx.textBaseline = 'middle';
  if (!st.data) return;

  const left = 52, right = 14, plotW = W - left - right;
  const spec = { y: 26, h: 150 }, prob = { y: 232, h: 170 };
  const pxf = plotW / VIEW;
  const done = st.pos;
  const from = Math.max(0, done - VIEW);
  const xOf = (/** @type {number} */ t) => left + (t - from) * pxf;
  const frameMs = st.data.frame_ms;
  const bands = st.data.bands;

  // titles
  ctx.fillStyle = '#1f2328';
  ctx.textAlign = 'left';
  ctx.fillText(`Input: ${bands} bands of log energy, one column per ${frameMs} ms frame`, left, spec.y - 13);
  ctx.fillText('Keyword probability  sigmoid(z1 − z0)', left, prob.y - 28);

  // spectrogram
  ctx.fillStyle = '#0b0b12';
  ctx.fillRect(left, spec.y, plotW, spec.h);
  if (done > from && st.spectrogram) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(st.spectrogram, from, 0, done - from, bands, left, spec.y, (done - from) * pxf, spec.h);
  }
  ctx.fillStyle = '#656d76';
  ctx.textAlign = 'right';
  ctx.fillText('band 0', left - 6, spec.y + spec.h - 6);
  ctx.fillText(`${bands - 1}`, left - 6, spec.y + 6);

  // probability panel: truth spans, grid, threshold, Python, JS
  ctx.fillStyle = '#f6f8fa';
  ctx.fillRect(left, prob.y, plotW, prob.h);
  ctx.fillStyle = 'rgba(31, 136, 61, 0.22)';
  for (const [a, b] of st.data.keywords) {
    if (b + 1 <= from || a >= done) continue;
    const x0 = xOf(Math.max(a, from)), x1 = xOf(Math.min(b + 1, done));
    ctx.fillRect(x0, prob.y, x1 - x0, prob.h);
    ctx.fillRect(x0, spec.y + spec.h + 2, x1 - x0, 4); // and a mark under the bands
  }
  const yOf = (/** @type {number} */ p) => prob.y + (1 - p) * prob.h;
  ctx.textAlign = 'right';
  ctx.fillStyle = '#656d76';
  ctx.strokeStyle = '#d0d7de';
  ctx.lineWidth = 1;
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    ctx.beginPath();
    ctx.moveTo(left, Math.round(yOf(p)) + 0.5);
    ctx.lineTo(left + plotW, Math.round(yOf(p)) + 0.5);
    ctx.stroke();
    ctx.fillText(p.toFixed(2).replace(/0$/, ''), left - 6, yOf(p));
  }
  ctx.setLineDash([6, 4]);
  ctx.strokeStyle = '#cf222e';
  ctx.beginPath();
  ctx.moveTo(left, yOf(st.data.threshold));
  ctx.lineTo(left + plotW, yOf(st.data.threshold));
  ctx.stroke();
  ctx.setLineDash([]);
  const line = (/** @type {ArrayLike<number>} */ p, /** @type {string} */ colour, /** @type {number} */ width) => {
    if (done <= from) return;
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.lineJoin = 'round';
    ctx.beginPath();
    for (let t = from; t < done; t++) {
      const x = xOf(t + 0.5), y = yOf(p[t]);
      if (t === from) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    }
    ctx.stroke();
  };
  line(st.prob, '#d9480f', 2.5);
  line(st.probPy, '#1f2328', 1);

  // time axis (seconds)
  ctx.fillStyle = '#656d76';
  ctx.textAlign = 'center';
  const perSecond = Math.round(1000 / frameMs);
  for (let t = Math.ceil(from / perSecond) * perSecond; t <= from + VIEW; t += perSecond) {
    const x = xOf(t);
    ctx.fillRect(x, prob.y + prob.h, 1, 4);
    ctx.fillText(`${t / perSecond} s`, x, prob.y + prob.h + 13);
  }

  // legend
  const items = [
    ['#d9480f', 3, `edgernn-web (${st.backend})`], ['#1f2328', 1, 'Python runtime'],
    ['#cf222e', 1, `threshold ${st.data.threshold}`], ['rgba(31, 136, 61, 0.35)', 10, 'keyword (truth)'],
  ];
  ctx.textAlign = 'left';
  let lx = left + plotW;
  for (const [, , label] of items) lx -= ctx.measureText(String(label)).width + 34;
  for (const [colour, width, label] of items) {
    ctx.fillStyle = String(colour);
    ctx.fillRect(lx, prob.y - 12 - Number(width) / 2, 20, Number(width));
    ctx.fillStyle = '#1f2328';
    ctx.fillText(String(label), lx + 24, prob.y - 12);
    lx += ctx.measureText(String(label)).width + 34;
  }

  // numbers
  const n = Math.min(st.recentCount, WINDOW);
  const recent = st.recent.subarray(0, n);
  const us = (/** @type {number} */ ms) => (Number.isFinite(ms) ? `${(ms * 1000).toFixed(1)} µs` : '–');
  ui.backendOut.textContent = st.session ? st.backend : '–';
  ui.frames.textContent = `${done} / ${st.frames.length}`;
  ui.p50.textContent = us(percentile(recent, 50));
  ui.p90.textContent = us(percentile(recent, 90));
  ui.diff.textContent = done ? st.maxDiff.toExponential(2) : '–';
  const pyUs = st.model && st.data.python_step_us ? st.data.python_step_us[st.model.label] : undefined;
  ui.py.textContent = pyUs === undefined ? '–' : `${pyUs.toFixed(1)} µs`;
}

// --- controls and the test API -------------------------------------------------------------------

/** Runs `fn` with errors shown on the page (and rethrown). */
async function shown(/** @type {() => Promise<any>} */ fn) {
  try {
    clearError();
    return await fn();
  } catch (e) {
    showError(e);
    throw e;
  }
}
const quiet = (/** @type {Promise<any>} */ p) => p.catch(() => {}); // (already shown)

const loaded = shown(async () => {
  await loadData();
  draw();
});
const ready = loaded.then(() => shown(async () => {
  await use(st.data.models[0].label, 'wasm');
  buttons();
}));
quiet(ready);

ui.start.addEventListener('click', () => quiet(shown(async () => {
  if (st.playing) return stop();
  if (st.pos >= st.frames.length) restart();
  return play(ui.speed.value === 'fast');
})));
ui.reset.addEventListener('click', () => quiet(shown(async () => {
  await stop();
  restart();
  buttons();
})));
for (const select of [ui.model, ui.backend]) {
  select.addEventListener('change', () => quiet(shown(async () => {
    await stop();
    ui.start.disabled = true;
    try {
      await use(ui.model.value, ui.backend.value);
    } finally {
      buttons();
    }
  })));
}
window.addEventListener('resize', () => scheduleDraw());

/**
 * Streams every frame, from the start state, through `model` on `backend`; plots as it goes.
 * @param {{model?: string, backend?: 'wasm'|'webgpu', fast?: boolean}} [options]
 */
async function run({ model, backend = 'wasm', fast = true } = {}) {
  await loaded; // (not ready: another model may load where the first did not)
  return shown(async () => {
    await stop();
    await use(model ?? st.data.models[0].label, backend);
    buttons();
    /** @type {number[]} */
    const times = [];
    await play(fast, times);
    if (st.pos < st.frames.length) throw new Error(`the run was stopped at frame ${st.pos} of ${st.frames.length}`);
    const ms = Float64Array.from(times);
    const mean = ms.reduce((a, b) => a + b, 0) / ms.length;
    return {
      backend: st.backend,
      logits: st.logits.map((z) => [...z]),
      maxDiff: st.maxDiff,
      stepUs: { p50: percentile(ms, 50) * 1000, p90: percentile(ms, 90) * 1000, mean: mean * 1000 },
    };
  });
}

/** @type {any} */ (window).demo = { ready, run };

if (params.get('autostart') === '1') {
  ready.then(() => {
    ui.speed.value = 'realtime';
    return play(false);
  }).catch(() => {});
}
