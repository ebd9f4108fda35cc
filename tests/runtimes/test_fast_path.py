"""The StreamingSession fast path (states in bound OrtValues, buffers per call shape) gives the
numbers of a plain onnxruntime loop and of PyTorch, whatever the calls look like; providers are
checked by name; with CUDA the state stays on the device (run only where a CUDA device is)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import edgernn
from edgernn.runtimes import StreamingSession
from edgernn.runtimes import providers as eps
from edgernn.runtimes.providers import ProviderError

ATOL = 1e-5


@pytest.fixture(scope="module")
def lstm(tmp_path_factory):
    """A 2-layer batch-first LSTM in chunk mode: (module, path)."""
    torch.manual_seed(3)
    module = nn.LSTM(6, 9, num_layers=2, batch_first=True).eval()
    path = tmp_path_factory.mktemp("fast") / "lstm.onnx"
    assert edgernn.export(module, path).passed
    return module, path


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _plain_loop(path, x: np.ndarray, sizes) -> tuple[np.ndarray, dict]:
    """What a user writes without edgernn: InferenceSession.run, states fed back by name."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    states = json.loads(meta["edgernn.states"])
    feeds = {s["input"]: np.zeros([x.shape[0] if d == "batch" else d for d in s["shape"]], np.float32)
             for s in states}
    ys, start = [], 0
    for n in sizes:
        outs = sess.run(None, {"x": x[:, start:start + n], **feeds})
        named = dict(zip([o.name for o in sess.get_outputs()], outs))
        ys.append(named["y"])
        feeds = {s["input"]: named[s["output"]] for s in states}
        start += n
    return np.concatenate(ys, axis=1), {s["name"]: feeds[s["input"]] for s in states}


def test_calls_of_many_shapes_match_a_plain_loop_and_pytorch(lstm):
    """More distinct call shapes than the buffer cache holds (8), repeated, in a shuffled order."""
    module, path = lstm
    sizes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1, 3, 3, 10, 2] * 2
    x = _x((2, sum(sizes), 6), seed=1)
    session = StreamingSession(path)
    ys, start = [], 0
    for n in sizes:
        ys.append(session.step(x[:, start:start + n])["y"])
        start += n
    y = np.concatenate(ys, axis=1)
    y_plain, state_plain = _plain_loop(path, x, sizes)
    with torch.no_grad():
        y_ref, (h_ref, c_ref) = module(torch.from_numpy(x))
    np.testing.assert_allclose(y, y_ref.numpy(), atol=ATOL)
    np.testing.assert_allclose(y, y_plain, atol=ATOL)
    state = session.state
    np.testing.assert_allclose(state["lstm.h"], h_ref.numpy(), atol=ATOL)
    np.testing.assert_allclose(state["lstm.c"], c_ref.numpy(), atol=ATOL)
    np.testing.assert_allclose(state["lstm.c"], state_plain["lstm.c"], atol=ATOL)


def test_returned_outputs_are_not_overwritten_by_later_calls(lstm):
    _, path = lstm
    session = StreamingSession(path)
    x = _x((1, 6, 6), seed=2)
    first = session.step(x[:, :3])["y"]
    kept = first.copy()
    for _ in range(4):  # same shape: the same bound buffers are reused
        session.step(x[:, 3:])
    np.testing.assert_array_equal(first, kept)


def test_non_contiguous_inputs_are_taken(lstm):
    module, path = lstm
    wide = _x((1, 10, 12), seed=3)
    x = wide[:, :, ::2]  # a strided view
    assert not x.flags.c_contiguous
    session = StreamingSession(path)
    y = session.stream(x, chunk=4)["y"]
    with torch.no_grad():
        y_ref, _ = module(torch.from_numpy(np.ascontiguousarray(x)))
    np.testing.assert_allclose(y, y_ref.numpy(), atol=ATOL)
    session.reset()
    y_first = session.step(x[:, :1])["y"]  # a view again, after a contiguous call of the same shape
    np.testing.assert_allclose(y_first, y_ref.numpy()[:, :1], atol=ATOL)


def test_set_state_mid_stream_and_state_copies(lstm):
    module, path = lstm
    x = _x((3, 8, 6), seed=4)
    session = StreamingSession(path)
    session.step(x[:, :5])
    saved = session.state
    saved_copy = {k: v.copy() for k, v in saved.items()}
    saved["lstm.h"][:] = 99.0  # a copy: the session's state is untouched
    session.set_state(saved_copy)
    tail = session.step(x[:, 5:])["y"]
    with torch.no_grad():
        y_ref, _ = module(torch.from_numpy(x))
    np.testing.assert_allclose(tail, y_ref.numpy()[:, 5:], atol=ATOL)


def _nonzero_model() -> bytes:
    """y = NonZero(x): its shape depends on the values, not only on the input's shape; h' = h + x."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    h = helper.make_tensor_value_info("state_in.h", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, "n"])
    h2 = helper.make_tensor_value_info("state_out.h", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"]),
                               helper.make_node("Add", ["state_in.h", "x"], ["state_out.h"])],
                              "nz", [x, h], [y, h2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_outputs_whose_shape_varies_with_the_values_fall_back_to_allocation():
    session = StreamingSession(_nonzero_model(), state_pairs={"state_in.h": "state_out.h"})
    frames = [np.array([[1, 0, 0, 0]], np.float32), np.array([[1, 1, 0, 1]], np.float32),
              np.array([[0, 0, 0, 2]], np.float32)] * 2
    total = np.zeros((1, 4), np.float32)
    for f in frames:
        y = session.step(f)["y"]
        np.testing.assert_array_equal(y, np.stack(np.nonzero(f)))
        total += f
    np.testing.assert_array_equal(session.state["h"], total)


# ---------------------------------------------------------------- providers


def test_provider_names_resolve_to_onnxruntime_names():
    assert eps.resolve(None) == ["CPUExecutionProvider"]
    assert eps.resolve("cpu") == ["CPUExecutionProvider"]
    assert eps.resolve(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert eps.resolve("auto")[-1] == "CPUExecutionProvider"
    assert set(eps.resolve("auto")) == set(ort.get_available_providers())


def test_unknown_provider_names_the_installed_ones(lstm):
    _, path = lstm
    with pytest.raises(ProviderError, match=r"provider 'warp' is unknown; the installed ones are .*cpu "
                                            r"\(CPUExecutionProvider\)"):
        StreamingSession(path, providers="warp")


@pytest.mark.skipif("CoreMLExecutionProvider" in ort.get_available_providers(), reason="CoreML is installed")
def test_known_provider_that_is_not_installed_is_refused(lstm):
    _, path = lstm
    with pytest.raises(ProviderError, match=r"provider 'coreml' \(CoreMLExecutionProvider\) is not installed"):
        StreamingSession(path, providers="coreml")


class _FellBack:
    """An InferenceSession stand-in whose requested provider did not start."""

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_provider_that_did_not_start_is_an_error_unless_fallback_is_allowed():
    requested = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="provider cuda .* could not start for m.onnx; onnxruntime runs it on "
                                            "cpu; allow the fallback"):
        eps.check_started(_FellBack(), requested, False, "m.onnx")
    notes = eps.check_started(_FellBack(), requested, True, "m.onnx")
    assert notes == ["provider cuda (CUDAExecutionProvider) could not start for m.onnx; onnxruntime runs it on "
                     "cpu (fallback allowed)"]


def test_cpu_session_reports_its_provider_and_device(lstm):
    _, path = lstm
    session = StreamingSession(path, providers="cpu")
    assert (session.provider, session.device, session.notes) == ("CPUExecutionProvider", "cpu", [])


# ---------------------------------------------------------------- CUDA: state stays on the device


def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        probe = ort.InferenceSession(_nonzero_model(), providers=["CUDAExecutionProvider"])
        return probe.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:
        return False


CUDA = _cuda_works()


@pytest.mark.skipif(not CUDA, reason="no CUDA device with onnxruntime-gpu here: the GPU state path is not checked")
def test_cuda_keeps_the_state_on_the_device_and_matches_the_cpu(lstm, tmp_path):
    module, path = lstm
    x = _x((2, 12, 6), seed=5)
    cpu = StreamingSession(path)
    gpu = StreamingSession(path, providers="cuda")
    assert gpu.device == "cuda" and gpu.provider == "CUDAExecutionProvider"
    bound_before = {k: v.data_ptr() for k, v in gpu_values(gpu).items()}
    for start in range(0, 12, 3):
        y_cpu = cpu.step(x[:, start:start + 3])["y"]
        y_gpu = gpu.step(x[:, start:start + 3])["y"]
        np.testing.assert_allclose(y_gpu, y_cpu, atol=1e-4)
        for name, value in gpu_values(gpu).items():
            assert value.device_name().lower() == "cuda", name
    # the same two device buffers carry the state all along: nothing was reallocated or moved
    assert {k: v.data_ptr() for k, v in gpu_values(gpu).items()} == bound_before
    for name, want in cpu.state.items():
        np.testing.assert_allclose(gpu.state[name], want, atol=1e-4)

    # profiled: the only device-to-host copies are the data output's, none for the 2 states
    opts = edgernn.runtimes.session_options(1)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    profiled = StreamingSession(path, providers="cuda", options=opts)
    for start in range(0, 12, 3):
        profiled.step(x[:, start:start + 3])
    events = json.load(open(profiled.session.end_profiling()))
    copies = [e for e in events if e.get("cat") == "Node" and "MemcpyToHost" in e.get("args", {}).get("op_name", "")]
    runs = sum(1 for e in events if e.get("name") == "model_run")
    assert runs >= 4 and len(copies) <= runs, f"{len(copies)} device-to-host copies in {runs} runs"


def gpu_values(session: StreamingSession) -> dict:
    """Both OrtValue sets of the session's bound state (the fast path's buffers)."""
    bound = session._bound
    assert bound is not None
    return {f"{k}:{name}": v for k in (0, 1) for name, v in bound.values[k].items()}
