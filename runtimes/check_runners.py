"""The runtimes ``edgernn check`` streams a file through (see :mod:`edgernn.runtimes.check`), each
written as that runtime's users write a streaming loop over an edgernn file: the state inputs and
outputs read from the file's contract, the start states fed to the first call, each call's state
outputs fed back to the next. One small interface, :class:`Loop`, so that the check treats them alike.

``ort``
    ``onnxruntime.InferenceSession`` on the CPU (the reference): ``sess.run(None, feeds)``.
``openvino``
    ``openvino.Core().read_model(path)``, reshaped to the calls' static shapes, compiled for
    ``"CPU"`` with ``INFERENCE_PRECISION_HINT`` ``f32`` (the CPU plugin's default on CPUs with
    bfloat16 units, such as AVX512_BF16 or AMX, is ``bf16``, about 1e-3 off), one stream, the
    latency hint; ``request.infer(feeds)``.
``tract``
    ``tract.onnx().load(path).into_model()``, its ``batch`` and ``time`` symbols bound to the calls'
    sizes with ``SetSymbols`` on the typed model (binding them earlier, as concrete input facts,
    fails on the symbols the file's value_info keeps), then ``into_runnable()``; ``run([...])`` in
    the graph's input order. An int64 output that tract computes from shapes comes back as its
    symbolic dimension type (TDim), which numpy cannot take: converted to int64.
``node`` / ``web``
    the JavaScript runtime (runtimes/web): edgernn-web's ``StreamingSession``, which reads the
    contract from the file itself, under Node with onnxruntime-node, or in headless Chromium with
    onnxruntime-web (WASM), in one long-lived ``node runtimes/web/tools/check.mjs`` process that
    takes one JSON command per line on stdin (the frames in ``.bin`` files) and answers on stdout.
    Its calls are timed there, with ``performance.now()`` around each ``await step()`` (Chromium
    rounds that timer to 5 µs on a cross-origin isolated page).
``pytorch``
    the PyTorch model (``against``) as ``edgernn bench --against`` runs it
    (:func:`edgernn.runtimes.bench_runners.eager_runner`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgernn.contract import BATCH, TIME, Contract
from edgernn.errors import EdgernnError
from edgernn.modelfile import ModelFile

Call = Mapping[str, np.ndarray]  # one call's data inputs by name
Streamed = tuple[list[list[np.ndarray]], dict[str, np.ndarray]]  # outputs of each call (contract order), final states

ORT, OPENVINO, TRACT, NODE, WEB, PYTORCH = "ort", "openvino", "tract", "node", "web", "pytorch"
JS_TIMEOUT = 120.0  # seconds one command to the JavaScript runtime may take


class NotInstalled(EdgernnError):
    """The runtime's package (or program) is not installed here; ``install`` says how to get it."""

    def __init__(self, message: str, install: str) -> None:
        super().__init__(message)
        self.install = install


class Loop:
    """One runtime's streaming loop: ``reset`` starts a fresh stream from the start states,
    ``call`` runs one call and carries the state, ``stream`` runs calls and returns every output and
    the final states, ``time`` appends each call's latency (ns) to ``out``."""

    key: str
    label: str = ""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def reset(self) -> None:
        raise NotImplementedError

    def call(self, inputs: Call) -> list[np.ndarray]:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def stream(self, calls: Sequence[Call]) -> Streamed:
        self.reset()
        outs = [[np.array(v, copy=True) for v in self.call(c)] for c in calls]
        return outs, {k: np.array(v, copy=True) for k, v in self.state().items()}

    def time(self, calls: Sequence[Call], settle: int, out: list[int]) -> None:
        self.reset()
        for c in calls[:settle]:  # the first calls after switching runtimes meet cold caches
            self.call(c)
        self.reset()
        call, clock = self.call, time.perf_counter_ns
        for c in calls:
            t0 = clock()
            call(c)
            out.append(clock() - t0)

    def close(self) -> None:
        pass


class StateLoop(Loop):
    """A Python loop over a runtime whose ``_run(feeds)`` returns every graph output by name: the
    data inputs and the carried states go in by name, the state outputs are fed back."""

    def __init__(self, contract: Contract, init: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.data_names = [t.name for t in contract.inputs]
        self.out_names = [t.name for t in contract.outputs]
        self.pairs = [(s.name, s.input, s.output) for s in contract.states]
        self.init = dict(init)
        self.feeds: dict[str, Any] = {}

    def _run(self, feeds: dict[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def reset(self) -> None:
        self.feeds = {i: self.init[s].copy() for s, i, _ in self.pairs}

    def call(self, inputs: Call) -> list[np.ndarray]:
        feeds = self.feeds
        feeds.update(inputs)
        res = self._run(feeds)
        for _, i, o in self.pairs:
            feeds[i] = res[o]
        return [res[n] for n in self.out_names]

    def state(self) -> dict[str, np.ndarray]:
        return {s: np.asarray(self.feeds[i]) for s, i, _ in self.pairs}


# ---------------------------------------------------------------- onnxruntime


class OrtLoop(StateLoop):
    key = ORT

    def __init__(self, mf: ModelFile, contract: Contract, init: Mapping[str, np.ndarray], threads: int) -> None:
        import onnxruntime as ort

        super().__init__(contract, init)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(_load_path(mf), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgernnError(f"onnxruntime cannot load {mf.source}: {first_line(e)}") from None
        self.names = [o.name for o in self.sess.get_outputs()]
        self.label = f"onnxruntime {ort.__version__} CPU"

    def _run(self, feeds):
        return dict(zip(self.names, self.sess.run(None, feeds)))


# ---------------------------------------------------------------- OpenVINO


class OpenVinoLoop(StateLoop):
    key = OPENVINO

    def __init__(self, mf: ModelFile, contract: Contract, init: Mapping[str, np.ndarray], threads: int,
                 shapes: Mapping[str, tuple[int, ...]]) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise NotInstalled("openvino is not installed", "pip install openvino  (or pip install "
                               "'edgernn[openvino]')") from None
        super().__init__(contract, init)
        core = ov.Core()
        try:
            model = core.read_model(_load_path(mf))
        except Exception as e:
            raise EdgernnError(f"OpenVINO cannot read {mf.source}: {first_line(e)}") from None
        try:  # static shapes, as a deployment with fixed calls sets them (dynamic ones stay dynamic otherwise)
            model.reshape({p: ov.PartialShape(list(shapes[n])) for p in model.inputs for n in _names(p) if n in shapes})
            self.notes.append("reshaped to the calls' static input shapes (model.reshape)")
        except Exception as e:
            self.notes.append(f"kept dynamic input shapes: model.reshape to the calls' shapes failed ({first_line(e)})")
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                  "PERFORMANCE_HINT": "LATENCY"}
        try:
            default = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
            name = default.get_type_name() if hasattr(default, "get_type_name") else str(default)
            if name not in ("f32", "float32"):
                self.notes.append(f"OpenVINO's CPU plugin defaults to {name} inference on this CPU; compiled with "
                                  "INFERENCE_PRECISION_HINT f32, which fp32 parity needs")
        except Exception:
            pass
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise EdgernnError(f"OpenVINO cannot compile {mf.source} for the CPU: {first_line(e)}") from None
        self.request = self.compiled.create_infer_request()
        wanted = [t.name for t in contract.outputs] + [s.output for s in contract.states]
        self.ports = [(n, p) for p in self.compiled.outputs for n in _names(p) if n in wanted]
        missing = sorted(set(wanted) - {n for n, _ in self.ports})
        if missing:
            raise EdgernnError(f"OpenVINO's compiled model has no output {missing[0]!r}")
        self.dtypes = {t.name: np.dtype(t.dtype) for t in contract.outputs}
        self.dtypes.update({s.output: np.dtype(s.dtype) for s in contract.states})
        self.label = f"OpenVINO {ov.__version__.split('-')[0]} CPU"

    def _run(self, feeds):
        res = self.request.infer(feeds)
        return {n: _as(res[p], self.dtypes.get(n)) for n, p in self.ports}


# ---------------------------------------------------------------- tract


class TractLoop(StateLoop):
    key = TRACT

    def __init__(self, mf: ModelFile, contract: Contract, init: Mapping[str, np.ndarray], batch: int,
                 frames: int) -> None:
        try:
            import tract
        except ImportError:
            raise NotInstalled("tract is not installed", "pip install tract  (or pip install 'edgernn[tract]')") from None
        from tract.transform import SetSymbols

        super().__init__(contract, init)
        if mf.path is None:
            raise EdgernnError("tract reads a model file by path; give the file's path")
        try:
            model = tract.onnx().load(str(mf.path)).into_model()
        except Exception as e:
            raise EdgernnError(f"tract cannot load {mf.source}: {tract_error(e)}") from None
        used = {d for spec in [*contract.inputs, *contract.outputs, *contract.states] for d in spec.shape
                if isinstance(d, str)}
        symbols = {k: v for k, v in ((BATCH, batch), (TIME, frames)) if k in used}
        if symbols:
            try:
                model.transform(SetSymbols(symbols))
                self.notes.append("symbols bound with SetSymbols(" + ", ".join(f"{k}={v}" for k, v in symbols.items())
                                  + ") on the typed model")
            except Exception as e:
                self.notes.append(f"symbols left free: SetSymbols failed ({tract_error(e)})")
        try:
            self.runnable = model.into_runnable()
        except Exception as e:
            raise EdgernnError(f"tract cannot optimize {mf.source} into a runnable model: {tract_error(e)}") from None
        graph_in, graph_out = mf.graph_io()
        if self.runnable.input_count() != len(graph_in) or self.runnable.output_count() != len(graph_out):
            raise EdgernnError(f"tract sees {self.runnable.input_count()} input(s) and {self.runnable.output_count()} "
                               f"output(s) in {mf.source}, whose graph has {len(graph_in)} and {len(graph_out)}")
        self.in_names, self.out_names_graph = graph_in, graph_out  # tract keeps the graph's order
        self.dtypes = {t.name: np.dtype(t.dtype) for t in contract.outputs}
        self.dtypes.update({s.output: np.dtype(s.dtype) for s in contract.states})
        self.int64 = tract.DatumType.I64
        self.label = f"tract {tract.version()}"

        self.symbolic: set[str] = set()  # outputs that come as TDim (found on the first call)

    def _run(self, feeds):
        res = self.runnable.run([feeds[n] for n in self.in_names])
        return {n: self._numpy(t, n) for n, t in zip(self.out_names_graph, res)}

    def _numpy(self, tensor, name: str) -> np.ndarray:
        if name in self.symbolic:
            return _as(tensor.convert_to(self.int64).to_numpy(), self.dtypes.get(name))
        try:
            return _as(tensor.to_numpy(), self.dtypes.get(name))
        except Exception:  # a value tract computed from shapes comes as TDim, which the numpy API refuses
            # (each refusal costs tens of milliseconds: tract captures a backtrace), so remembered
            self.symbolic.add(name)
            return _as(tensor.convert_to(self.int64).to_numpy(), self.dtypes.get(name))


def _names(port) -> list[str]:
    """Every tensor name of an OpenVINO port (``get_any_name`` may give another one than the graph's)."""
    return sorted(port.get_names()) or [port.get_any_name()]


def tract_error(e: Exception) -> str:
    """tract's message without its Rust backtrace, its causes joined: ``A: B: C``."""
    text = str(e).split("Stack backtrace:")[0]
    parts = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "Caused by:"]
    parts = [p.split(": ", 1)[1] if p[:1].isdigit() and ": " in p else p for p in parts]
    return "; ".join(parts)[:500]


# ---------------------------------------------------------------- PyTorch


class TorchLoop(Loop):
    """The PyTorch model as ``edgernn bench --against`` runs it (a bench :class:`Runner`)."""

    key = PYTORCH

    def __init__(self, runner, contract: Contract, notes: list[str]) -> None:
        import torch

        super().__init__()
        self.runner = runner
        self.names = [t.name for t in contract.inputs]
        self.notes += notes
        self.final: dict[str, np.ndarray] = {}
        self.label = f"PyTorch {torch.__version__} eager"

    def reset(self) -> None:
        self.runner.reset()
        self.final = {}

    def call(self, inputs: Call) -> list[np.ndarray]:
        outputs, self.final = self.runner.forward(tuple(inputs[n] for n in self.names))
        return outputs

    def state(self) -> dict[str, np.ndarray]:
        return self.final

    def time(self, calls, settle, out) -> None:
        pool = self.runner.pool([tuple(c[n] for n in self.names) for c in calls])
        self.runner.reset()
        self.runner.run(pool, 0, min(settle, len(pool)), [])
        self.runner.reset()
        self.runner.run(pool, 0, len(pool), out)


# ---------------------------------------------------------------- JavaScript (node, web)


def web_root() -> Path:
    from edgernn.runtimes.webserve import WEB_ROOT

    return WEB_ROOT


def check_js(key: str) -> str:
    """The ``node`` program, or :class:`NotInstalled` saying what is missing for ``key``."""
    root = web_root()
    node = shutil.which("node")
    if node is None:
        raise NotInstalled("node is not installed", "install Node.js 18 or newer, then `npm ci` in runtimes/web "
                           "(bash setup.sh)")
    package = "onnxruntime-node" if key == NODE else "onnxruntime-web"
    if not (root / "node_modules" / package).is_dir():
        raise NotInstalled(f"runtimes/web has no {package} package", f"cd {root} && npm ci  (bash setup.sh does it)")
    if key == WEB:
        if not (root / "node_modules" / "playwright-core").is_dir():
            raise NotInstalled("runtimes/web has no playwright-core package", f"cd {root} && npm ci")
        chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        if not Path(chromium).is_file():
            raise NotInstalled(f"Chromium is not installed ({chromium} is missing)",
                               "apt-get install chromium (bash setup.sh does it as root), or set CHROMIUM")
    return node


class JsLoop(Loop):
    """edgernn-web's StreamingSession in a ``node runtimes/web/tools/check.mjs`` process (``node``:
    onnxruntime-node; ``web``: onnxruntime-web in headless Chromium, its page served on loopback)."""

    def __init__(self, key: str, mf: ModelFile, contract: Contract, calls: Sequence[Call], batch: int,
                 threads: int) -> None:
        super().__init__()
        self.key = key
        node = check_js(key)
        if mf.path is None:
            raise EdgernnError("the JavaScript runtime reads a model file; give the file's path")
        self.contract = contract
        self.folder = Path(tempfile.mkdtemp(prefix="edgernn-check-"))
        self.server = None
        self.proc: subprocess.Popen | None = None
        self.err: list[str] = []
        try:
            files = []
            for t in contract.inputs:
                data = np.concatenate([np.ascontiguousarray(c[t.name]).reshape(-1) for c in calls])
                path = self.folder / f"input{len(files)}.bin"
                data.astype(data.dtype.newbyteorder("<"), copy=False).tofile(path)
                files.append({"name": t.name, "dtype": t.dtype, "file": path.name, "size": int(calls[0][t.name].size)})
            script = web_root() / "tools" / "check.mjs"
            if key == NODE:
                args, model, base = ["node"], str(mf.path.resolve()), str(self.folder) + os.sep
            else:
                from edgernn.runtimes.webserve import serve

                self.server = serve({"/check-model/": mf.path.resolve().parent, "/check-frames/": self.folder})
                url = f"http://127.0.0.1:{self.server.server_address[1]}"
                args, model, base = ["wasm", f"{url}/tools/check.html"], f"/check-model/{mf.path.name}", "/check-frames/"
            self.proc = subprocess.Popen([node, str(script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
            self.lines: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
            threading.Thread(target=self._drain, daemon=True).start()
            ready = self._answer("start")
            # a file without edgernn metadata: its state pairs, as edgernn-web's users give them ({states})
            pairs = {s.input: s.output for s in contract.states} if mf.contract_from != "metadata" else None
            opened = self._send({"op": "open", "model": model, "batch": batch, "threads": threads, "base": base,
                                 "inputs": files, "calls": len(calls), "states": pairs,
                                 "method": "step" if contract.mode == "step" else "chunk"}, "open the file")
            self.label = f"edgernn-web on {opened.get('runtime') or ready.get('runtime')}"
        except BaseException:
            self.close()
            raise
        self.calls = len(calls)
        self._stream: Streamed | None = None

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.rstrip())
            del self.err[:-20]

    def _answer(self, what: str) -> dict:
        try:
            line = self.lines.get(timeout=JS_TIMEOUT)
        except queue.Empty:
            raise EdgernnError(f"the {self.key} runtime did not answer within {JS_TIMEOUT:.0f} s ({what})") from None
        if line is None:
            tail = "; ".join(e for e in self.err if e)[-400:]
            raise EdgernnError(f"the {self.key} runtime stopped ({what})" + (f": {tail}" if tail else ""))
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            raise EdgernnError(f"the {self.key} runtime answered {line[:200]!r}, not JSON ({what})") from None
        if not answer.get("ok"):
            raise EdgernnError(f"{answer.get('error', 'failed')} ({self.key} runtime, {what})")
        return answer

    def _send(self, command: dict, what: str) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # the process is gone: _answer says why
        return self._answer(what)

    def stream(self, calls: Sequence[Call]) -> Streamed:
        got = self._send({"op": "stream"}, "stream the frames")
        outs = [[_from_js(got["calls"][k][t.name], t.dtype) for t in self.contract.outputs] for k in range(self.calls)]
        state = {s.name: _from_js(got["state"][s.name], s.dtype) for s in self.contract.states}
        return outs, state

    def time(self, calls, settle, out) -> None:
        got = self._send({"op": "time", "settle": settle}, "time the calls")
        out.extend(int(round(us * 1000)) for us in got["us"])

    def close(self) -> None:
        if self.proc is not None:
            try:
                if self.proc.poll() is None and self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _from_js(value: Mapping[str, Any], dtype: str) -> np.ndarray:
    return np.asarray(value["data"], dtype=np.float64).astype(np.dtype(dtype)).reshape(value["dims"])


# ---------------------------------------------------------------- helpers


def _load_path(mf: ModelFile) -> str:
    if mf.path is None:
        raise EdgernnError("edgernn check runs a model file; give the file's path")
    return str(mf.path)


def _as(value: Any, dtype: np.dtype | None) -> np.ndarray:
    arr = np.asarray(value)
    return arr.astype(dtype) if dtype is not None and arr.dtype != dtype else arr


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


__all__ = ["Loop", "StateLoop", "OrtLoop", "OpenVinoLoop", "TractLoop", "TorchLoop", "JsLoop", "NotInstalled",
           "check_js", "tract_error", "first_line", "ORT", "OPENVINO", "TRACT", "NODE", "WEB", "PYTORCH"]
