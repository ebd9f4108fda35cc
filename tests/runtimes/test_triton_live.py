"""Triton's Python backend route (``triton_repository(..., backend="python")``), on a live server.

The ``tritonserver`` of the nvidia-pytriton wheel (setup.sh installs it into .venv/tritonserver)
is started on loopback with free ports, by :class:`TritonProcess`, and stopped by its process id
(its process group: the Python backend's stubs too) when the module's tests end, failed or not.
It loads the Python-backend models of a GRU (step mode) and an LSTM (chunk mode, 4 frames a
request), each in float32 and int8, their states in PyTorch's layout ``[layers, batch, hidden]``.
64 sequences with staggered starts and ends, some reusing the ids of ended ones, stream through
it over gRPC and over HTTP, and each sequence's outputs must be those of the same frames through
a StreamingSession of its own (1e-5). A second server is killed in the middle of a stream and
restarted. Every client call has a timeout, so nothing waits forever.

Without the wheel (or tritonclient's gRPC and HTTP clients) the live tests are skipped, saying
why; the tests of the model class itself (through a stand-in for the stub's
``triton_python_backend_utils``) and of the written repository run everywhere.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import queue
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgernn
from conftest import invoke
from edgernn.runtimes.session import StreamingSession
from edgernn.runtimes.triton import TritonError, triton_repository
from edgernn.runtimes.triton_python import MODEL_SCRIPT, TritonProcess, couples_streams, find_tritonserver
from edgernn.runtimes.triton_python_model import SequenceModel

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURES, HIDDEN, CLASSES = 8, 24, 3
CHUNK = 4  # frames per request to the chunk-mode LSTM
SEQUENCES = 64
CALL_TIMEOUT = 20.0  # seconds, every client call
#: name -> (architecture, mode, int8 method or None)
MODELS = {"gru": ("GRU", "step", None), "gru_int8": ("GRU", "step", "dynamic"),
          "lstm": ("LSTM", "chunk", None), "lstm_int8": ("LSTM", "chunk", "static")}


class Tagger(nn.Module):
    """A recurrent layer (no state argument: edgernn lifts it) and a linear head, batch first."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(FEATURES, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """The served files, by model name. Made once for all pytest-xdist workers (the first makes
    them, under a lock)."""
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "triton_live_models"
    folder.mkdir(exist_ok=True)
    names = list(MODELS)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").exists():
            make_files(folder)
            (folder / "done").touch()
    return {name: folder / f"{name}.onnx" for name in names}


def make_files(folder: Path) -> None:
    torch.manual_seed(17)
    nets = {"GRU": Tagger("GRU"), "LSTM": Tagger("LSTM")}
    for name, (kind, mode, method) in MODELS.items():
        if method is None:  # parity with PyTorch is tested in tests/converters
            edgernn.export(nets[kind], folder / f"{name}.onnx", mode=mode, verify=False)
    for name, (kind, mode, method) in MODELS.items():
        if method is not None:
            edgernn.quantize(folder / f"{name.removesuffix('_int8')}.onnx", folder / f"{name}.onnx", method=method,
                             steps=400)


@pytest.fixture(scope="module")
def repo(files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("triton_live_repo")
    for name in MODELS:
        triton_repository(files[name], folder, name=name, backend="python")
    # the ONNX Runtime backend's repository; max_batch_size=0 takes PyTorch's state layout
    triton_repository(files["gru"], folder, name="gru_ort", max_batch_size=0)
    return folder


def frames_of(name: str, seed: int, calls: int) -> list[np.ndarray]:
    """One stream's requests: [1, 1, FEATURES] per call (step) or [1, CHUNK, FEATURES] (chunk)."""
    per_call = 1 if MODELS[name][1] == "step" else CHUNK
    rng = np.random.default_rng(seed)
    scale = 0.5 + (seed % 7) / 2  # streams of different loudness: a shared quantization scale would show
    x = (rng.standard_normal((calls, 1, per_call, FEATURES)) * scale).astype(np.float32)
    return list(x)


def solo(path: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The same frames through a StreamingSession of their own."""
    session = StreamingSession(path)
    return [session.step(f)["y"] for f in frames]


def plan(name: str, base_id: int) -> list[dict]:
    """64 sequences: starts staggered over 23 rounds, 6 to 18 requests each; the last 16 reuse the
    ids of the first 16, starting the round after those ended."""
    seqs: list[dict] = []
    for i in range(SEQUENCES):
        calls = 6 + (i * 7) % 13
        if i < SEQUENCES - 16:
            sid, start = base_id + i, (i * 5) % 23
        else:
            first = seqs[i - (SEQUENCES - 16)]
            sid, start = first["id"], first["start"] + len(first["frames"])
        seqs.append({"id": sid, "start": start, "frames": frames_of(name, base_id + i, calls)})
    return seqs


# ---------------------------------------------------------------- clients


def grpc_round(client, model: str, items: list[tuple]) -> list:
    """Send one request per (sequence id, frame, start, end) at once; the outputs (or the error) in order."""
    import tritonclient.grpc as grpcclient

    done: queue.Queue = queue.Queue()
    for k, (sid, frame, start, end) in enumerate(items):
        x = grpcclient.InferInput("x", list(frame.shape), "FP32")
        x.set_data_from_numpy(frame)
        client.async_infer(model, [x], partial(lambda k, result, error: done.put((k, result, error)), k),
                           sequence_id=sid, sequence_start=start, sequence_end=end, client_timeout=CALL_TIMEOUT)
    out: list = [None] * len(items)
    for _ in items:
        k, result, error = done.get(timeout=CALL_TIMEOUT + 10)  # queue.Empty: a call that never came back
        out[k] = error if error is not None else result.as_numpy("y")
    return out


class HttpClients:
    """A thread per concurrent request, each with its own HTTP client: tritonclient.http's
    async_infer (gevent) took 360 ms for a round of 32 requests here, threads 10 ms."""

    def __init__(self, url: str, threads: int = SEQUENCES) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.url, self.local = url, threading.local()
        self.pool = ThreadPoolExecutor(threads)

    def client(self):
        import tritonclient.http as httpclient

        if not hasattr(self.local, "client"):
            self.local.client = httpclient.InferenceServerClient(self.url, connection_timeout=CALL_TIMEOUT,
                                                                 network_timeout=CALL_TIMEOUT)
        return self.local.client

    def infer(self, model: str, item: tuple):
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        sid, frame, start, end = item
        x = httpclient.InferInput("x", list(frame.shape), "FP32")
        x.set_data_from_numpy(frame)
        try:
            return self.client().infer(model, [x], sequence_id=sid, sequence_start=start,
                                       sequence_end=end).as_numpy("y")
        except InferenceServerException as e:
            return e


def http_round(clients: HttpClients, model: str, items: list[tuple]) -> list:
    futures = [clients.pool.submit(clients.infer, model, item) for item in items]
    return [f.result(timeout=CALL_TIMEOUT + 10) for f in futures]


def stream(send, seqs: list[dict]) -> list[list]:
    """Every sequence of ``seqs``, in rounds: one request of each active sequence per round."""
    rounds = max(s["start"] + len(s["frames"]) for s in seqs)
    got: list[list] = [[] for _ in seqs]
    for r in range(rounds):
        active = [(i, r - s["start"]) for i, s in enumerate(seqs) if 0 <= r - s["start"] < len(s["frames"])]
        items = [(seqs[i]["id"], seqs[i]["frames"][k], k == 0, k == len(seqs[i]["frames"]) - 1) for i, k in active]
        for (i, _), result in zip(active, send(items)):
            got[i].append(result)
    return got


def clients(server):
    import tritonclient.grpc as grpcclient

    return {"grpc": (grpcclient.InferenceServerClient(server.grpc_url), grpc_round),
            "http": (HttpClients(server.http_url), http_round)}


def wait_for(ready, what: str, timeout: float = CALL_TIMEOUT) -> None:
    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except InferenceServerException:
            pass
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server_files():
    for module in ("tritonclient.grpc", "tritonclient.http"):
        try:
            importlib.import_module(module)
        except ImportError as e:
            pytest.skip(f"{module} cannot be imported ({e}): pip install 'tritonclient[grpc,http]'")
    try:
        return find_tritonserver()
    except TritonError as e:
        pytest.skip(str(e))


@pytest.fixture
def server(server_files, repo, tmp_path):
    """A server with every model of ``MODELS`` loaded, stopped by its process id (group) at the
    end, also when the test failed."""
    args = ["--model-control-mode=explicit", *(f"--load-model={name}" for name in MODELS)]
    process = TritonProcess(repo, log=tmp_path / "tritonserver.log", server=server_files, args=args)
    yield process
    process.kill()
    assert process.process.poll() is not None


# ---------------------------------------------------------------- live


def test_64_concurrent_sequences_equal_solo_streams(server, files):
    """Every model over gRPC and over HTTP, one after the other on one server (one test: pytest-xdist
    would start a server on each worker for parametrized cases)."""
    worst: dict[str, float] = {}
    for protocol in ("grpc", "http"):
        client, send = clients(server)[protocol]
        for m, name in enumerate(MODELS):
            seqs = plan(name, base_id=1000 * (1 + m) + (500 if protocol == "http" else 0))
            got = stream(partial(send, client, name), seqs)
            case = f"{name} over {protocol}"
            worst[case] = 0.0
            for s, outputs in zip(seqs, got):
                errors = [o for o in outputs if isinstance(o, Exception)]
                assert not errors, f"{case}, sequence {s['id']}: {errors[0]}"
                want = solo(files[name], s["frames"])
                assert [o.shape for o in outputs] == [w.shape for w in want], case
                worst[case] = max(worst[case], max(float(np.abs(o - w).max()) for o, w in zip(outputs, want)))
    assert max(worst.values()) <= 1e-5, f"outputs differ from solo streams: {worst}"


def test_state_layout_needs_no_batch_major_export(files):
    """The files served above keep PyTorch's [layers, batch, hidden] states, which the ONNX Runtime
    backend refuses: the Python backend route serves them as they are."""
    states = edgernn.ModelFile.open(files["lstm"]).contract.states
    assert all(s.batch_axis == 1 for s in states)
    with pytest.raises(TritonError, match="batch-major"):
        triton_repository(files["lstm"], files["lstm"].parent / "ort_repo")


def test_the_onnxruntime_backend_repository(server_files, repo, files, tmp_path):
    """The nvidia-pytriton wheel ships the Python backend only: Triton refuses to load the ONNX
    Runtime backend's repository for want of the backend (skipped, saying so); should a server
    have it, the same streams must come out of it."""
    from tritonclient.utils import InferenceServerException

    server = TritonProcess(repo, log=tmp_path / "tritonserver.log", server=server_files,
                           args=["--model-control-mode=explicit"])
    try:
        client, send = clients(server)["grpc"]
        try:
            client.load_model("gru_ort", client_timeout=CALL_TIMEOUT)
        except InferenceServerException as e:
            if "onnxruntime" in str(e) and "backend" in str(e):
                pytest.skip(f"this tritonserver has no ONNX Runtime backend: {e}")
            raise
        seqs = plan("gru", base_id=9000)[:16]
        got = stream(partial(send, client, "gru_ort"), seqs)
        for s, outputs in zip(seqs, got):
            for o, w in zip(outputs, solo(files["gru"], s["frames"])):
                np.testing.assert_allclose(o, w, atol=1e-5)
    finally:
        server.kill()


def test_server_killed_mid_stream_then_restarted(server_files, repo, files, tmp_path):
    """Kill -9 while requests are in flight: every broken sequence gets an error (no call hangs),
    sequences continued after the restart are refused with the reason, new ones are correct."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    log = tmp_path / "tritonserver.log"
    args = ["--model-control-mode=explicit", "--load-model=gru"]
    first = TritonProcess(repo, log=log, server=server_files, args=args)
    ports = {"http_port": first.http_port, "grpc_port": first.grpc_port}
    restarted = None
    try:
        client = grpcclient.InferenceServerClient(first.grpc_url)
        send = partial(grpc_round, client, "gru")
        seqs = [{"id": 7000 + i, "frames": frames_of("gru", 7000 + i, 12)} for i in range(16)]
        for k in range(5):
            assert not any(isinstance(o, Exception) for o in
                           send([(s["id"], s["frames"][k], k == 0, False) for s in seqs]))
        # a round in flight when the server dies
        done: queue.Queue = queue.Queue()
        for i, s in enumerate(seqs):
            x = grpcclient.InferInput("x", [1, 1, FEATURES], "FP32")
            x.set_data_from_numpy(s["frames"][5])
            client.async_infer("gru", [x], partial(lambda i, result, error: done.put((i, error)), i),
                               sequence_id=s["id"], client_timeout=CALL_TIMEOUT)
        first.kill()
        began = time.monotonic()
        answered = [done.get(timeout=CALL_TIMEOUT + 10) for _ in seqs]  # every call comes back
        # the rest of the broken sequences: a connection error at once, not a hang
        after = send([(s["id"], s["frames"][6], False, False) for s in seqs])
        assert all(isinstance(e, InferenceServerException) and "UNAVAILABLE" in str(e) for e in after), after[0]
        assert time.monotonic() - began < CALL_TIMEOUT
        # in flight at the kill: answered, or "[StatusCode.UNAVAILABLE] Stream removed (... Connection reset ...)"
        assert all(error is None or "UNAVAILABLE" in str(error) for _, error in answered), answered

        restarted = TritonProcess(repo, log=log, server=server_files, args=args, **ports)
        wait_for(lambda: client.is_server_ready(client_timeout=2), "the gRPC client to reconnect")
        # the old sequences, continued: refused with the reason, over gRPC and HTTP
        after = send([(s["id"], s["frames"][7], False, False) for s in seqs])
        assert all(isinstance(e, InferenceServerException) and "START" in str(e) for e in after), after[0]
        http = httpclient.InferenceServerClient(restarted.http_url, network_timeout=CALL_TIMEOUT)
        x = httpclient.InferInput("x", [1, 1, FEATURES], "FP32")
        x.set_data_from_numpy(seqs[0]["frames"][8])
        with pytest.raises(InferenceServerException, match="START"):
            http.infer("gru", [x], sequence_id=seqs[0]["id"])
        # new sequences (and the old ids, started again) are streamed correctly
        fresh = [{"id": 7000 + i, "start": i % 3, "frames": frames_of("gru", 7100 + i, 8)} for i in range(16)]
        got = stream(send, fresh)
        for s, outputs in zip(fresh, got):
            for o, w in zip(outputs, solo(files["gru"], s["frames"])):
                assert not isinstance(o, Exception), o
                np.testing.assert_allclose(o, w, atol=1e-5)
    finally:
        first.kill()
        if restarted is not None:
            restarted.kill()


# ---------------------------------------------------------------- the repository


def test_python_repository_config_parses_with_tritons_schema(files, tmp_path):
    pb2 = _model_config_pb2()
    from google.protobuf import text_format

    report = triton_repository(files["lstm"], tmp_path, backend="python", max_batch_size=16,
                               max_sequence_idle_microseconds=2_000_000)
    config = text_format.Parse(Path(report.config_path).read_text(), pb2.ModelConfig())
    assert config.backend == "python" and not config.platform and config.max_batch_size == 16
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [-1, FEATURES])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [-1, CLASSES])]
    assert [c.name for c in config.sequence_batching.control_input] == ["START", "END", "READY", "CORRID"]
    assert not config.sequence_batching.state  # the states stay in the model
    assert config.sequence_batching.max_sequence_idle_microseconds == 2_000_000
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["edgernn_capacity"] == "32" and params["edgernn_batch_streams"] == "together"
    assert params["edgernn_python"] == "%d.%d" % sys.version_info[:2]
    folder = Path(report.model_dir) / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", MODEL_SCRIPT]
    assert (folder / "model.onnx").read_bytes() == files["lstm"].read_bytes()  # byte for byte
    assert report.backend == "python" and report.to_json()["backend"] == "python"


def test_cli_serve_backend_python(files, tmp_path):
    result = invoke("serve", files["gru_int8"], "--triton", tmp_path / "repo", "--backend", "python", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "python"
    assert any("step of its own" in n for n in report["notes"])  # dynamic int8: streams run apart
    result = invoke("serve", files["gru"], "--triton", tmp_path / "repo", "--backend", "python", "--kind", "gpu")
    assert result.exit_code == 1 and "ONNX Runtime backend" in result.output


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": 0}, "at least 1"),
    ({"controls": False}, "control inputs"),
    ({"instance_kind": "auto"}, "on the CPU"),
    ({"backend": "tensorrt"}, "unknown"),
])
def test_python_backend_options_that_cannot_work_are_refused(files, tmp_path, kwargs, message):
    kwargs.setdefault("backend", "python")
    with pytest.raises(TritonError, match=message):
        triton_repository(files["gru"], tmp_path, **kwargs)


def test_model_script_refuses_a_stub_of_another_python(files, tmp_path):
    report = triton_repository(files["gru"], tmp_path, backend="python")
    namespace: dict = {}
    exec(compile((Path(report.model_dir) / "1" / MODEL_SCRIPT).read_text(), MODEL_SCRIPT, "exec"), namespace)
    config = {"parameters": {"edgernn_python": {"string_value": "2.7"}}}
    with pytest.raises(RuntimeError, match="python_backend_stubs/2.7"):
        namespace["TritonPythonModel"]().initialize({"model_config": json.dumps(config)})


# ---------------------------------------------------------------- the model class, through a stand-in stub


class FakeTensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name, self.value = name, value

    def __dlpack__(self, *args, **kwargs):
        return self.value.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.value.__dlpack_device__()

    @classmethod
    def from_dlpack(cls, name: str, capsule) -> FakeTensor:
        class Holder:
            def __dlpack__(self, *args, **kwargs):
                return capsule

            def __dlpack_device__(self):
                return (1, 0)

        return cls(name, np.from_dlpack(Holder()).copy())


class FakeStub:
    """What SequenceModel uses of triton_python_backend_utils."""

    Tensor = FakeTensor

    class InferenceResponse:
        def __init__(self, output_tensors, error=None) -> None:
            self.outputs = {t.name: t.value for t in output_tensors}
            self.error = error

    class TritonError(Exception):
        pass

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str):
        return request.get(name)


def fake_request(corrid: int, frame: np.ndarray | None, *, start=False, end=False, ready=True) -> dict:
    tensors = {"START": np.array([[int(start)]], np.int32), "END": np.array([[int(end)]], np.int32),
               "READY": np.array([[int(ready)]], np.int32), "CORRID": np.array([[corrid]], np.uint64)}
    if frame is not None:
        tensors["x"] = frame
    return {name: FakeTensor(name, value) for name, value in tensors.items()}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sequence_model(tmp_path: Path, path: Path, *, idle_us: int = 1_000_000, capacity: int = 8,
                   batch_streams: str = "together", clock=None) -> SequenceModel:
    folder = tmp_path / "m"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(path.read_bytes())
    config = {"name": "m", "sequence_batching": {"max_sequence_idle_microseconds": str(idle_us)}}
    params = {"edgernn_capacity": str(capacity), "edgernn_batch_streams": batch_streams}
    return SequenceModel({"model_repository": str(folder), "model_version": "1"}, config, params, pb=FakeStub,
                         clock=clock or Clock())


def test_sequence_model_keeps_one_state_per_correlation_id(files, tmp_path):
    model = sequence_model(tmp_path, files["lstm"])
    a, b = frames_of("lstm", 1, 5), frames_of("lstm", 2, 5)
    want_a, want_b = solo(files["lstm"], a), solo(files["lstm"], b)
    for k in range(5):  # both in each call; 11 ends at k = 4
        reqs = [fake_request(11, a[k], start=k == 0, end=k == 4), fake_request(22, b[k], start=k == 0)]
        replies = model.execute(reqs)
        for reply in replies:
            assert reply.error is None, reply.error
        np.testing.assert_allclose(replies[0].outputs["y"], want_a[k], atol=1e-6)
        np.testing.assert_allclose(replies[1].outputs["y"], want_b[k], atol=1e-6)
    assert set(model.sequences) == {22}  # END freed 11
    # a sequence without START that the model does not know: refused with the fix
    reply = model.execute([fake_request(11, a[0])])[0]
    assert "sequence_start=True" in str(reply.error)
    # START on a live id starts it afresh
    reply = model.execute([fake_request(22, b[0], start=True)])[0]
    np.testing.assert_allclose(reply.outputs["y"], want_b[0], atol=1e-6)


def test_two_requests_of_one_sequence_in_one_call_run_in_order(files, tmp_path):
    model = sequence_model(tmp_path, files["gru"])
    a = frames_of("gru", 3, 3)
    replies = model.execute([fake_request(5, a[0], start=True), fake_request(5, a[1]), fake_request(5, a[2], end=True)])
    for reply, want in zip(replies, solo(files["gru"], a)):
        np.testing.assert_allclose(reply.outputs["y"], want, atol=1e-6)
    assert not model.sequences


def test_idle_sequences_are_freed_and_capacity_is_said(files, tmp_path):
    clock = Clock()
    model = sequence_model(tmp_path, files["gru"], idle_us=2_000_000, capacity=2, clock=clock)
    f = frames_of("gru", 4, 1)[0]
    assert all(r.error is None for r in model.execute([fake_request(1, f, start=True), fake_request(2, f, start=True)]))
    reply = model.execute([fake_request(3, f, start=True)])[0]
    assert "all 2 sequence slots" in str(reply.error)
    clock.now += 1.0
    model.execute([fake_request(2, f)])  # 2 stays alive
    clock.now += 1.5  # 1 idle for 2.5 s > 2 s
    assert model.execute([fake_request(3, f, start=True)])[0].error is None
    assert set(model.sequences) == {2, 3}
    assert "idled out" in str(model.execute([fake_request(1, f)])[0].error)


def test_a_bad_request_fails_alone(files, tmp_path):
    model = sequence_model(tmp_path, files["gru"])
    good = frames_of("gru", 5, 1)[0]
    bad = np.zeros((1, 1, FEATURES + 1), np.float32)
    replies = model.execute([fake_request(1, good, start=True), fake_request(2, bad, start=True),
                             fake_request(3, good, start=True), fake_request(4, None, start=True),
                             fake_request(0, None, ready=False)])
    np.testing.assert_allclose(replies[0].outputs["y"], solo(files["gru"], [good])[0], atol=1e-6)
    assert "axis 2" in str(replies[1].error)
    assert replies[2].error is None
    assert "no input 'x'" in str(replies[3].error)
    assert replies[4].error is None and replies[4].outputs == {}  # a null request (READY=0)


def test_dynamic_int8_streams_run_apart_because_batching_couples_them(files, tmp_path):
    """onnxruntime quantizes a batch's activations with one scale: batched, a stream's int8 outputs
    depend on its neighbours. The repository says apart for such a file, and then each stream
    gets exactly its solo outputs."""
    assert couples_streams(onnx.load(files["gru_int8"])) and not couples_streams(onnx.load(files["lstm_int8"]))
    streams = [frames_of("gru_int8", 20 + i, 6) for i in range(8)]
    wants = [solo(files["gru_int8"], s) for s in streams]
    worst = {}
    for mode in ("together", "apart"):
        model = sequence_model(tmp_path / mode, files["gru_int8"], batch_streams=mode)
        worst[mode] = 0.0
        for k in range(6):
            replies = model.execute([fake_request(i + 1, s[k], start=k == 0) for i, s in enumerate(streams)])
            for reply, want in zip(replies, wants):
                worst[mode] = max(worst[mode], float(np.abs(reply.outputs["y"] - want[k]).max()))
    assert worst["apart"] <= 1e-6
    assert worst["together"] > 1e-4, worst  # what the default avoids


def _model_config_pb2():
    tritonclient = pytest.importorskip("tritonclient")
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2_live", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
