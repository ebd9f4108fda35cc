"""The demo page (runtimes/web/demo) streams the wakeword GRU in headless Chromium as Python does.

examples/wakeword/web.py builds the page's assets (the step file, its int8 quantization, a stream
and the Python runtime's logits for it); the page is served as web.py serves it and driven with
runtimes/web/test/demo.mjs, which calls ``window.demo.run`` for each model: every frame through
edgernn-web on onnxruntime-web (WASM), plotted as it goes.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgernn.runtimes.webserve import WEB_ROOT, serve

ROOT = Path(__file__).resolve().parents[2]
WAKEWORD = ROOT / "examples" / "wakeword"
TOL = 1e-5  # fp32: max |js - python| / max(1, max |python|), as in tests/runtimes/test_web.py

INT8_MIN_AGREEMENT = 0.99  # int8 is judged on the task, as demo.py judges it


def _web_module():
    sys.path.insert(0, str(WAKEWORD))
    try:
        spec = importlib.util.spec_from_file_location("wakeword_web", WAKEWORD / "web.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(WAKEWORD))


def test_demo_page_streams_both_models_as_python(tmp_path, chromium):
    web = _web_module()
    content = web.build(tmp_path, 300)
    assert len(content["frames"]) == 300 and content["keywords"], "the stream should hold keywords"
    server = serve({"/assets/": tmp_path})
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/demo/"
        out = tmp_path / "demo-run.json"
        done = subprocess.run(["node", str(WEB_ROOT / "test" / "demo.mjs"), url, str(out), "wasm", "GRU fp32",
                               "GRU int8"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        server.shutdown()
    got = json.loads(out.read_text())
    runs = got["runs"]
    python = {m["label"]: np.asarray(m["python"]) for m in content["models"]}
    for label in ("GRU fp32", "GRU int8"):
        assert "error" not in runs[label], f"{label}: {runs[label]['error']} (page log: {got['logs'][-5:]})"
        assert runs[label]["backend"] == "wasm"
        js = np.asarray(runs[label]["logits"])
        assert js.shape == python[label].shape == (300, 2)
        err = float(np.max(np.abs(js - python[label]))) / max(1.0, float(np.max(np.abs(python[label]))))
        assert abs(runs[label]["maxDiff"] - float(np.max(np.abs(js - python[label])))) < 1e-9  # the page's figure
        if label == "GRU fp32":
            assert err <= TOL, f"fp32 logits differ from Python by {err:.2e} relative"
        else:
            threshold = content["threshold"]
            p_js, p_py = (1 / (1 + np.exp(z[:, 0] - z[:, 1])) for z in (js, python[label]))
            agreement = float(np.mean((p_js > threshold) == (p_py > threshold)))
            assert agreement >= INT8_MIN_AGREEMENT, f"int8 frame decisions agree on {agreement:.3f}"
            assert err <= 1e-2, f"int8 logits differ from Python by {err:.2e} relative"
        assert runs[label]["stepUs"]["p50"] > 0
    assert len(base64.b64decode(got["screenshot"])) > 10_000  # the plot was drawn
