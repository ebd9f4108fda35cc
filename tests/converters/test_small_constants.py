"""An export keeps the model's small constants: epsilons that only matter near zero survive capture
and optimisation (onnxscript's no-op rules took ``x + 1e-8`` for ``x + 0``; converters/optimize.py),
checked on the inputs where they matter (all zeros) against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

import edgernn
from edgernn.architectures import NTM


class Normalised(nn.Module):
    """A GRU cell whose output goes through one near-zero-sensitive expression (``kind``)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.cell = kind, nn.GRUCell(4, 4)

    def forward(self, x, h):
        h = self.cell(x, h)
        if self.kind == "cosine":  # F.cosine_similarity's own eps (1e-8)
            y = F.cosine_similarity(h, x, dim=-1, eps=1e-8).unsqueeze(-1) * h
        elif self.kind == "divide":
            y = h / (h.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True) + 1e-8)
        elif self.kind == "log":
            y = torch.log(h.abs() + 1e-10)
        elif self.kind == "sqrt":
            y = torch.sqrt(h * h + 1e-12) + torch.rsqrt(x * x + 1e-12) * 1e-9
        else:  # a normalisation layer's epsilon
            y = F.layer_norm(h - h.mean(), (4,), eps=1e-12)
        return y, h


def _zero_cell(module: Normalised) -> Normalised:
    with torch.no_grad():  # h' = 0 from a zero state: every expression above meets 0 / 0 or log 0 without its eps
        for p in module.cell.parameters():
            p.zero_()
        module.cell.bias_hh[4:8] = 50.0  # update gate z = 1: h' = h = 0
    return module.eval()


@pytest.mark.parametrize("kind", ["cosine", "divide", "log", "sqrt", "layer_norm"])
def test_epsilons_survive_and_zeros_give_what_pytorch_gives(kind, tmp_path):
    torch.manual_seed(0)
    module = _zero_cell(Normalised(kind))
    path = tmp_path / f"{kind}.onnx"
    assert edgernn.export(module, path, mode="step", inputs=["x:float32:B,4"]).passed
    session = edgernn.open(path)
    for x in (np.zeros((2, 4), np.float32), np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)):
        session.reset()
        got = session.step(x)["y"]
        with torch.no_grad():
            want = module(torch.from_numpy(x), torch.zeros(2, 4))[0].numpy()
        assert np.all(np.isfinite(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    graph = onnx.load(str(path)).graph
    scalars = [numpy_helper.to_array(t).item() for t in graph.initializer if numpy_helper.to_array(t).size == 1]
    scalars += [a.f for n in graph.node for a in n.attribute if a.name == "epsilon"]  # LayerNormalization's
    assert any(0 < abs(v) < 1e-5 for v in scalars), f"the epsilon is not in the file: {scalars}"


def test_exact_zeros_and_ones_are_still_folded(tmp_path):
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 3)

        def forward(self, x, h):
            h = self.cell(x, h)
            return (h + 0.0) * 1.0, h

    path = tmp_path / "plain.onnx"
    assert edgernn.export(Plain().eval(), path, mode="step", inputs=["x:float32:B,3"]).passed
    (last,) = [n for n in onnx.load(str(path)).graph.node if "y" in n.output]
    assert (last.op_type, list(last.input)) == ("Identity", ["state_out.h"])  # y is h: + 0.0 and * 1.0 are gone


def test_ntm_from_an_all_zero_state_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = NTM(5, 3, controller_size=16, memory_size=8, memory_width=6).eval()
    path = tmp_path / "ntm.onnx"
    assert edgernn.export(model, path, mode="step").passed
    session = edgernn.open(path)
    state = {k: v.detach().numpy() for k, v in model.initial_state(2).items()}
    zeros = {k: np.zeros_like(v) for k, v in state.items()}  # zero memory, zero weightings: zero keys and rows
    x = np.zeros((2, 5), np.float32)
    session.reset(state={f"state.{k}": v for k, v in zeros.items()})  # the forward argument's name, then the key
    got = session.step(x)
    with torch.no_grad():
        y, new = model(torch.from_numpy(x), {k: torch.from_numpy(v) for k, v in zeros.items()})
    assert np.all(np.isfinite(y.numpy()))
    np.testing.assert_allclose(got["y"], y.numpy(), rtol=1e-5, atol=1e-5)
    for name, value in new.items():
        np.testing.assert_allclose(session.state[f"state.{name}"], value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
