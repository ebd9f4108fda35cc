"""Every supported architecture x mode has a parity test.

The supported kinds come from the converter itself (``edgernn.recurrent_kinds.KINDS``, plus LSTM with
``proj_size`` which ``RecurrentLayerSpec`` carries, plus PyTorch's recurrent cells); the covered
ones from the case lists that parametrize ``tests/converters/test_parity.py`` (its ``COVERED``,
computed from the built modules). Adding a kind to the converter without a parity case fails here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import sys
from pathlib import Path

from torch import nn

from edgernn.converters.recurrent import RecurrentLayerSpec
from edgernn.recurrent_kinds import KINDS

STREAMING_MODES = ("chunk", "step")  # unidirectional layers
BIDIRECTIONAL_MODES = ("sequence",)  # bidirectional layers need the whole sequence


@functools.lru_cache(maxsize=None)
def _parity_module():
    """The parity test module, loaded by path (it runs no export on import)."""
    name = "_edgernn_parity_cases"
    path = Path(__file__).parent / "converters" / "test_parity.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def supported() -> set[tuple[str, str, bool]]:
    kinds = set(KINDS)
    if "proj_size" in {f.name for f in dataclasses.fields(RecurrentLayerSpec)}:
        kinds.add("lstm+proj")
    want = {(k, m, False) for k in kinds for m in STREAMING_MODES}
    want |= {(k, m, True) for k in kinds for m in BIDIRECTIONAL_MODES}
    cells = [c for c in nn.RNNCellBase.__subclasses__() if getattr(nn, c.__name__, None) is c]  # torch.nn's own
    want |= {(cell.__name__, "step", False) for cell in cells}
    return want


def test_every_architecture_and_mode_has_a_parity_test() -> None:
    want = supported()
    assert {"rnn_tanh", "rnn_relu", "lstm", "lstm+proj", "gru", "LSTMCell", "GRUCell", "RNNCell"} <= {
        k for k, _, _ in want}
    missing = want - _parity_module().COVERED
    assert not missing, "no parity test for " + ", ".join(
        f"{k} in {m} mode{' (bidirectional)' if bi else ''}" for k, m, bi in sorted(missing))


def test_layer_features_appear_in_every_streaming_mode() -> None:
    """Pairwise matrix: each of 1-3 layers, batch_first on/off and bias on/off is exercised in
    both chunk and step mode, and no case uses a power-of-two hidden size."""
    cases = _parity_module().LAYER_CASES
    for mode in STREAMING_MODES:
        mine = [c for c in cases if c.mode == mode]
        assert {c.layers for c in mine} >= {1, 2, 3}, mode
        assert {c.batch_first for c in mine} == {True, False}, mode
        assert {c.bias for c in mine} == {True, False}, mode
    assert not [c.id for c in cases if c.hidden & (c.hidden - 1) == 0]
    assert len({c.id for c in cases}) == len(cases), "two parity cases share an id"
