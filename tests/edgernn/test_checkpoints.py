"""Every kind of model file `edgernn export MODEL.pt` accepts: loaded safely, rebuilt with the
original's architecture, and exported with outputs equal to the original PyTorch module's."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgernn
from edgernn.architectures import FrameClassifier, RecurrentLayer, layer_config
from edgernn.checkpoints import load
from edgernn.errors import CheckpointError

ATOL = 1e-5


def _x(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_out(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = module(torch.from_numpy(x))
    return (y[0] if isinstance(y, tuple) else y).numpy()


def _export_and_compare(module: nn.Module, original: nn.Module, x: np.ndarray, tmp_path: Path,
                        mode: str = "chunk") -> edgernn.ExportReport:
    """Export the loaded ``module``, stream ``x`` through the file in calls of 3 frames (whole
    sequence in sequence mode) and compare with the *original* PyTorch module on the whole sequence."""
    path = tmp_path / "model.onnx"
    report = edgernn.export(module, path, mode=mode)
    assert report.passed, report.parity.summary()
    session = edgernn.open(path)
    chunk = x.shape[session.inputs[0].time_axis] if mode == "sequence" else 3
    got = session.stream(x, chunk=chunk)[session.outputs[0].name]
    np.testing.assert_allclose(got, _torch_out(original, x), atol=ATOL, rtol=0)
    return report


# ---------------------------------------------------------------- edgernn checkpoints


def test_edgernn_checkpoint_of_a_gru(tmp_path):
    torch.manual_seed(0)
    gru = nn.GRU(5, 7, num_layers=2, batch_first=True).eval()
    edgernn.save(gru, tmp_path / "gru.pt")
    loaded = load(tmp_path / "gru.pt")
    assert loaded.kind == "edgernn-checkpoint"
    assert isinstance(loaded.module, RecurrentLayer) and layer_config(loaded.module.layer) == layer_config(gru)
    assert not loaded.module.training
    report = _export_and_compare(loaded.module, gru, _x((3, 9, 5)), tmp_path)
    assert [s.name for s in report.contract.states] == ["gru.h"]


def test_edgernn_checkpoint_of_a_frame_classifier(tmp_path):
    torch.manual_seed(1)
    model = FrameClassifier(n_features=6, hidden_size=8, n_classes=4, num_layers=2, cell="lstm").eval()
    edgernn.save(model, tmp_path / "fc.pt")
    loaded = load(tmp_path / "fc.pt")
    assert loaded.kind == "edgernn-checkpoint"
    assert type(loaded.module) is FrameClassifier and loaded.module.config == model.config
    x = _x((2, 10, 6))
    np.testing.assert_array_equal(_torch_out(loaded.module, x), _torch_out(model, x))
    report = _export_and_compare(loaded.module, model, x, tmp_path)
    assert [s.name for s in report.contract.states] == ["core.c", "core.h"]


def test_edgernn_checkpoint_holds_no_code(tmp_path):
    edgernn.save(nn.GRU(3, 4), tmp_path / "gru.pt")
    payload = torch.load(tmp_path / "gru.pt", weights_only=True)  # loads without unpickling any class
    assert payload["architecture"] == "gru" and payload["edgernn_checkpoint"] == 1


def test_saving_an_unregistered_model_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="is not a registered architecture"):
        edgernn.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "m.pt")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- bare layer state_dicts


def _rnn_tanh():
    return nn.RNN(5, 7, num_layers=2)


def _rnn_relu():
    return nn.RNN(5, 7, nonlinearity="relu")


def _lstm_proj_bidirectional():
    return nn.LSTM(5, 8, num_layers=2, proj_size=3, bidirectional=True)


def _gru_3_layers_no_bias():
    return nn.GRU(5, 7, num_layers=3, bias=False, batch_first=True)


LAYERS = {  # name -> (constructor, load kwargs, export mode, state names)
    "rnn_tanh": (_rnn_tanh, {}, "chunk", ["rnn.h"]),
    "rnn_relu": (_rnn_relu, {"nonlinearity": "relu"}, "chunk", ["rnn.h"]),
    "lstm_proj_bidirectional": (_lstm_proj_bidirectional, {}, "sequence", ["lstm.c", "lstm.h"]),
    "gru_3_layers_no_bias": (_gru_3_layers_no_bias, {"batch_first": True}, "chunk", ["gru.h"]),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_bare_state_dict_is_rebuilt_and_exported(tmp_path, name):
    make, kwargs, mode, states = LAYERS[name]
    torch.manual_seed(2)
    original = make().eval()
    torch.save(original.state_dict(), tmp_path / "layer.pt")
    loaded = load(tmp_path / "layer.pt", **kwargs)
    assert loaded.kind == "state_dict"
    assert layer_config(loaded.module.layer) == layer_config(original)
    assert type(loaded.module.layer) is type(original)
    x = _x((6, 2, 5) if not original.batch_first else (2, 6, 5), seed=4)
    np.testing.assert_array_equal(_torch_out(loaded.module, x), _torch_out(original, x))
    report = _export_and_compare(loaded.module, original, x, tmp_path, mode=mode)
    assert [s.name for s in report.contract.states] == states
    lstm_h = [s for s in report.contract.states if s.name == "lstm.h"]
    if lstm_h:  # proj_size shapes h, hidden_size shapes c
        assert lstm_h[0].shape == (4, "batch", 3)


def test_state_dict_notes_say_what_was_assumed(tmp_path):
    torch.save(nn.RNN(3, 4).state_dict(), tmp_path / "rnn.pt")
    notes = " ".join(load(tmp_path / "rnn.pt").notes)
    assert "assumed tanh" in notes and "--nonlinearity relu" in notes
    assert "assumed False (time-major input)" in notes and "--batch-first" in notes
    assert load(tmp_path / "rnn.pt", nonlinearity="tanh", batch_first=False).notes == []


def test_state_dict_inside_a_training_checkpoint(tmp_path):
    torch.manual_seed(3)
    gru = nn.GRU(4, 6).eval()
    prefixed = {f"encoder.gru.{k}": v for k, v in gru.state_dict().items()}
    torch.save({"epoch": 12, "lr": 1e-3, "model_state_dict": prefixed}, tmp_path / "ckpt.pt")
    loaded = load(tmp_path / "ckpt.pt")
    assert layer_config(loaded.module.layer) == layer_config(gru)
    x = _x((5, 2, 4))
    np.testing.assert_array_equal(_torch_out(loaded.module, x), _torch_out(gru, x))


def test_nonlinearity_for_a_gru_is_refused(tmp_path):
    torch.save(nn.GRU(3, 4).state_dict(), tmp_path / "gru.pt")
    with pytest.raises(CheckpointError, match=r"--nonlinearity applies to nn.RNN, but .* holds an GRU"):
        load(tmp_path / "gru.pt", nonlinearity="relu")


# ---------------------------------------------------------------- a user class (--class)

USER_MODULE = '''
import torch
from torch import nn


class Tagger(nn.Module):
    """A frontend, an LSTM core that keeps its state inside, a head."""

    def __init__(self, n_features, hidden, n_tags):
        super().__init__()
        self.frontend = nn.Linear(n_features, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_tags)

    def forward(self, x):
        y, _ = self.encoder(torch.tanh(self.frontend(x)))
        return self.head(y)


NOT_A_MODULE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """A module file in tmp_path (the current folder), importable by a unique name."""
    name = f"usermodels_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_class puts the current folder on it
    request.addfinalizer(lambda: sys.modules.pop(name, None))
    return name


def test_user_class_with_config_file(tmp_path, user_module):
    import importlib

    cfg = {"n_features": 6, "hidden": 9, "n_tags": 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sys.path.insert(0, str(tmp_path))
    torch.manual_seed(5)
    original = importlib.import_module(user_module).Tagger(**cfg).eval()
    torch.save(original.state_dict(), tmp_path / "tagger.pt")
    loaded = load(tmp_path / "tagger.pt", class_path=f"{user_module}:Tagger", config=tmp_path / "config.json")
    assert loaded.kind == "class" and type(loaded.module).__name__ == "Tagger"
    report = _export_and_compare(loaded.module, original, _x((2, 8, 6)), tmp_path)
    assert [s.name for s in report.contract.states] == ["encoder.c", "encoder.h"]
    # the config may also be given as a dict
    again = load(tmp_path / "tagger.pt", class_path=f"{user_module}:Tagger", config=cfg)
    x = _x((1, 4, 6))
    np.testing.assert_array_equal(_torch_out(again.module, x), _torch_out(original, x))


@pytest.mark.parametrize("class_path, config, message", [
    ("{m}.Tagger", {}, "is not pkg.module:Name"),
    ("no_such_module_xyz:Tagger", {}, "cannot import module 'no_such_module_xyz'"),
    ("{m}:Missing", {}, "has no 'Missing'"),
    ("{m}:NOT_A_MODULE", {}, "is not an nn.Module class"),
    ("{m}:Tagger", {"n_features": 6}, "failed: "),
    ("{m}:Tagger", {"n_features": 6, "hidden": 5, "n_tags": 4}, "weight 'frontend.weight' has shape [9, 6] but "
                                                                "Tagger expects [5, 6]"),
    ("{m}:Tagger", "missing.json", "config file missing.json does not exist"),
])
def test_user_class_errors_are_sentences(tmp_path, user_module, class_path, config, message):
    import importlib

    sys.path.insert(0, str(tmp_path))
    model = importlib.import_module(user_module).Tagger(6, 9, 4)
    torch.save(model.state_dict(), tmp_path / "tagger.pt")
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "tagger.pt", class_path=class_path.format(m=user_module), config=config)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- TorchScript


def test_torchscript_gru_is_rebuilt_exactly(tmp_path):
    torch.manual_seed(6)
    original = nn.GRU(5, 7, num_layers=2, batch_first=True).eval()
    torch.jit.save(torch.jit.script(original), str(tmp_path / "gru.ts.pt"))
    loaded = load(tmp_path / "gru.ts.pt")
    assert loaded.kind == "torchscript"
    assert layer_config(loaded.module.layer) == layer_config(original)
    _export_and_compare(loaded.module, original, _x((2, 7, 5)), tmp_path)


def test_torchscript_relu_rnn_keeps_its_nonlinearity(tmp_path):
    original = nn.RNN(3, 4, nonlinearity="relu").eval()
    torch.jit.save(torch.jit.script(original), str(tmp_path / "rnn.ts.pt"))
    loaded = load(tmp_path / "rnn.ts.pt")
    assert layer_config(loaded.module.layer) == layer_config(original)
    x = _x((5, 2, 3))
    np.testing.assert_array_equal(_torch_out(loaded.module, x), _torch_out(original, x))


def test_torchscript_of_another_model_stays_scripted(tmp_path):
    """Exported by the TorchScript exporter (tests/converters/test_torchscript.py), not rebuilt."""
    torch.jit.save(torch.jit.script(FrameClassifier(4, 5, 2)), str(tmp_path / "fc.ts.pt"))
    loaded = load(tmp_path / "fc.ts.pt")
    assert loaded.kind == "torchscript" and isinstance(loaded.module, torch.jit.ScriptModule)
    assert loaded.description == "TorchScript archive of FrameClassifier" and not loaded.module.training
    with pytest.raises(CheckpointError, match="drop --class"):
        load(tmp_path / "fc.ts.pt", class_path="pkg:Model")


# ---------------------------------------------------------------- pickles


def test_pickled_module_needs_allow_pickle(tmp_path):
    torch.manual_seed(7)
    original = nn.GRU(4, 6).eval()
    torch.save(original, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "whole.pt")
    text = str(info.value)
    for part in ("--allow-pickle", "runs code", "torch.save(model.state_dict(), path)", "--class pkg.module:Name",
                 "edgernn.save(model, path)", "torch.jit.save"):
        assert part in text, part
    loaded = load(tmp_path / "whole.pt", allow_pickle=True)
    assert loaded.kind == "pickle" and "could run code" in loaded.notes[0]
    _export_and_compare(loaded.module, original, _x((6, 2, 4)), tmp_path)


class _Payload:
    """Unpickling this creates a folder: proof of whether a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_no_code_runs_without_allow_pickle(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load(tmp_path / "evil.pt")
    assert not marker.exists()
    # the same file with the opt-in does run it (so the check above can fail)
    with pytest.raises(CheckpointError):
        load(tmp_path / "evil.pt", allow_pickle=True)
    assert marker.exists()


def test_weights_only_everywhere_but_the_pickle_opt_in(tmp_path, monkeypatch):
    calls: list[bool] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    edgernn.save(nn.GRU(3, 4), tmp_path / "ckpt.pt")
    torch.save(nn.LSTM(3, 4).state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": nn.RNN(3, 4).state_dict()}, tmp_path / "dict.pt")
    torch.save(nn.GRU(3, 4), tmp_path / "whole.pt")
    for name in ("ckpt.pt", "sd.pt", "dict.pt"):
        load(tmp_path / name)
    with pytest.raises(CheckpointError):
        load(tmp_path / "whole.pt")
    assert calls == [True, True, True, True]
    load(tmp_path / "whole.pt", allow_pickle=True)
    assert calls[4:] == [True, False]


# ---------------------------------------------------------------- files that are no model


@pytest.mark.parametrize("content, message", [
    (b"\x80\x03\x00\x99" + bytes(range(256)) * 4, "is not a PyTorch model file (torch.load cannot read it)"),
    (b"hello, this is a text file\n", "is not a PyTorch model file"),
    (b"", "is not a PyTorch model file"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    (tmp_path / "m.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load(tmp_path / "m.pt")


def test_unknown_architecture_and_wrong_payloads(tmp_path):
    torch.save({"a.weight": torch.zeros(3, 3)}, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="state_dict of an unknown architecture .* pass --class"):
        load(tmp_path / "sd.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="is a PyTorch file but not a model checkpoint"):
        load(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load(tmp_path)
