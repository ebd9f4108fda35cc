"""Reading model files safely, and edgernn's own checkpoint format.

What ``load`` accepts, in the order it tries:

1. a TorchScript archive (``torch.jit.save``): a scripted ``nn.RNN``/``nn.LSTM``/``nn.GRU`` is rebuilt
   as the eager layer, any other scripted model is returned as its ScriptModule;
2. an edgernn checkpoint (``edgernn.save``): ``{"edgernn_checkpoint": 1, "architecture", "config",
   "state_dict"}``, with the architecture a registered name (``gru``, ``frame_classifier``...);
3. with ``class_path="pkg.module:Name"`` (and ``config``): a state_dict for that class;
4. a bare ``state_dict`` of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: kind, sizes, layers,
   directions and ``proj_size`` are read from key names and shapes;
5. a fully pickled ``nn.Module``, only with ``allow_pickle=True``: unpickling runs code from
   the file. Everything else is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from edgernn.architectures import ARCHITECTURES, RecurrentLayer, describe
from edgernn.errors import CheckpointError, not_a_torch_file
from edgernn.recurrent_kinds import KINDS, LSTM, kind_of_mode, kinds_of

CHECKPOINT_VERSION = 1
_LAYER_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


@dataclass
class LoadedModel:
    """A model read from a file: the module (eval mode), what the file was, and assumptions made."""

    module: nn.Module
    kind: str  # torchscript | edgernn-checkpoint | class | state_dict | pickle
    description: str
    notes: list[str] = field(default_factory=list)


def save(model: nn.Module, path: str | os.PathLike, *, architecture: str | None = None,
         config: Mapping[str, Any] | None = None) -> None:
    """Save ``model`` as an edgernn checkpoint: architecture name + config + weights, no code.

    ``architecture`` and ``config`` default to what :func:`edgernn.architectures.describe`
    finds (bare layers, registered classes with a ``config`` dict).
    """
    found = describe(model)
    if architecture is None:
        if found is None:
            raise CheckpointError(f"{type(model).__name__} is not a registered architecture; register it with "
                                  "edgernn.architectures.register(name) and give it a `config` dict, or save its "
                                  "state_dict and export with --class")
        architecture, found_config = found
        config = config if config is not None else found_config
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"architecture {architecture!r} is not registered (known: {', '.join(ARCHITECTURES)})")
    if isinstance(model, RecurrentLayer):
        model = model.layer
    payload = {"edgernn_checkpoint": CHECKPOINT_VERSION, "architecture": architecture,
               "config": dict(config or {}), "state_dict": model.state_dict()}
    buf = io.BytesIO()
    torch.save(payload, buf)
    from edgernn.modelfile import write_atomic

    target = Path(path)
    if not target.parent.is_dir():
        raise CheckpointError(f"cannot write {target}: folder {target.parent} does not exist")
    write_atomic(target, buf.getvalue())


def load(path: str | os.PathLike, *, class_path: str | None = None, config: Mapping[str, Any] | str | None = None,
         allow_pickle: bool = False, nonlinearity: str | None = None, batch_first: bool | None = None) -> LoadedModel:
    """Read a model file (see the module docstring for what it may be).

    Args:
        class_path: ``pkg.module:Name`` of the model's class, for state_dicts of user models.
        config: constructor keyword arguments for ``class_path`` (a dict or a JSON file path).
        allow_pickle: allow unpickling a full ``nn.Module``; this runs code from the file.
        nonlinearity, batch_first: for bare ``nn.RNN``/``nn.GRU``/``nn.LSTM`` state_dicts, which
            do not record them (defaults ``tanh`` and ``False``).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"{p} is not a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"{p} cannot be read ({e.strerror})") from None
    if _is_torchscript(p):
        if class_path:
            raise CheckpointError(f"{p} is a TorchScript archive, which holds its own code; drop --class")
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:
            raise CheckpointError(f"{p} looks like a TorchScript archive but cannot be loaded ({_line(e)})") from None
        return _from_torchscript(p, module)
    obj = _torch_load(p, allow_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), "pickle", f"pickled {type(obj).__name__} (loaded with --allow-pickle)",
                           ["the file was unpickled: it could run code"])
    if isinstance(obj, Mapping) and "edgernn_checkpoint" in obj:
        return _from_edgernn_checkpoint(p, obj, class_path, config)
    state_dict = _state_dict_of(p, obj)
    if class_path:
        return _from_class(p, state_dict, class_path, config)
    return _from_layer_state_dict(p, state_dict, nonlinearity, batch_first)


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # a refused GLOBAL means a valid pickle that names Python objects (classes, functions);
        # other failures (random bytes, text, a truncated file) mean it is no PyTorch file at all
        if not (isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e)):
            raise not_a_torch_file(path) from None
    if not allow_pickle:
        raise CheckpointError(
            f"{path} holds pickled Python objects (for example a whole nn.Module), and unpickling runs code from "
            "the file; safe alternatives: save a state_dict (torch.save(model.state_dict(), path)) and export with "
            "--class pkg.module:Name, save with edgernn.save(model, path), or save TorchScript (torch.jit.save); "
            "if you trust this file, pass --allow-pickle")
    try:
        with _cwd_on_path():  # a pickle names its classes by module, as `python -m` would find them
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path} could not be unpickled ({_line(e)}); is the model's code importable?") from None
    if not isinstance(obj, (nn.Module, Mapping)):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model or a state_dict")
    return obj


def _state_dict_of(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise CheckpointError(f"{path} is a PyTorch file but not a model checkpoint: expected a state_dict (names -> "
                          f"tensors), an edgernn checkpoint or TorchScript; found a {type(obj).__name__}")


def _from_edgernn_checkpoint(path: Path, obj: Mapping, class_path: str | None, config: Any) -> LoadedModel:
    if obj.get("edgernn_checkpoint") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is an edgernn checkpoint of version {obj.get('edgernn_checkpoint')!r}; "
                              f"this edgernn reads version {CHECKPOINT_VERSION}")
    arch = obj.get("architecture")
    cfg = dict(obj.get("config") or {})
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path} names architecture {arch!r}, which is not registered "
                              f"(known: {', '.join(ARCHITECTURES)})")
    try:
        module = ARCHITECTURES[arch](**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config {cfg} does not fit architecture {arch!r} ({_line(e)})") from None
    _load_weights(path, module, obj.get("state_dict") or {})
    if isinstance(module, nn.RNNBase):
        module = RecurrentLayer(module)
    return LoadedModel(module.eval(), "edgernn-checkpoint", f"edgernn checkpoint: {arch} {cfg}")


def _load_weights(path: Path, module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    want = module.state_dict()
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: the weights do not match {type(module).__name__} ({what})")
    for k, v in want.items():
        if tuple(state_dict[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: weight {k!r} has shape {list(state_dict[k].shape)} but "
                                  f"{type(module).__name__} expects {list(v.shape)}")
    module.load_state_dict(state_dict, strict=True)


def import_class(class_path: str) -> type:
    """Import ``pkg.module:Name`` (the current folder is on the path) and check it is an nn.Module."""
    if ":" not in class_path:
        raise CheckpointError(f"--class {class_path!r} is not pkg.module:Name")
    mod_name, _, attr = class_path.partition(":")
    try:
        with _cwd_on_path():
            mod = importlib.import_module(mod_name)
    except Exception as e:
        raise CheckpointError(f"--class {class_path!r}: cannot import module {mod_name!r} ({_line(e)})") from None
    cls = mod
    for part in attr.split("."):
        cls = getattr(cls, part, None)
        if cls is None:
            raise CheckpointError(f"--class {class_path!r}: module {mod_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"--class {class_path!r} is not an nn.Module class")
    return cls


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Let imports find modules in the current folder (as ``python -m`` does), for this call only."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def read_config(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    p = Path(config)
    try:
        value = json.loads(p.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"config file {p} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"config file {p} is not valid JSON ({_line(e)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"config file {p} must hold a JSON object of constructor arguments")
    return value


def _from_class(path: Path, state_dict: Mapping[str, torch.Tensor], class_path: str, config: Any) -> LoadedModel:
    cls = import_class(class_path)
    cfg = read_config(config)
    try:
        module = cls(**cfg)
    except Exception as e:
        raise CheckpointError(f"{class_path}(**{cfg}) failed: {_line(e)}") from None
    _load_weights(path, module, state_dict)
    return LoadedModel(module.eval(), "class", f"{class_path} with config {cfg}")


def _from_layer_state_dict(path: Path, sd: Mapping[str, torch.Tensor], nonlinearity: str | None,
                           batch_first: bool | None) -> LoadedModel:
    prefixes = {k.rsplit(".", 1)[0] if "." in k else "" for k in sd}
    bare = {k.rsplit(".", 1)[-1]: v for k, v in sd.items()}
    matches = [_LAYER_KEY.match(k) for k in bare]
    if len(prefixes) != 1 or not all(matches) or "weight_ih_l0" not in bare or "weight_hh_l0" not in bare:
        sample = ", ".join(list(sd)[:4])
        raise CheckpointError(f"{path} is a state_dict of an unknown architecture (keys {sample}...); bare "
                              "nn.RNN/nn.LSTM/nn.GRU state_dicts are recognised, for other models pass "
                              "--class pkg.module:Name (and --config)")
    layers = 1 + max(int(m.group(2)) for m in matches if m)
    bidirectional = any(m.group(3) for m in matches if m)
    has_bias = "bias_ih_l0" in bare
    w_ih, w_hh = bare["weight_ih_l0"], bare["weight_hh_l0"]
    proj = bare.get("weight_hr_l0")
    hidden = proj.shape[1] if proj is not None else w_hh.shape[1]
    gates, rem = divmod(w_hh.shape[0], hidden)
    kinds = () if rem else kinds_of(gates=gates)
    if not kinds or (proj is not None and kinds[0] is not LSTM):  # proj_size: LSTM only
        fits = [f"nn.{m} ({g if g > 1 else ''}H x H)" for m, g in dict.fromkeys(
            (k.torch_module, k.gates) for k in KINDS.values())]
        raise CheckpointError(f"{path}: weight_hh_l0 has shape {list(w_hh.shape)}, which fits none of "
                              f"{', '.join(fits[:-1])} or {fits[-1]}")
    cls = kinds[0].torch_class
    kwargs: dict[str, Any] = dict(input_size=w_ih.shape[1], hidden_size=hidden, num_layers=layers, bias=has_bias,
                                  batch_first=bool(batch_first), bidirectional=bidirectional)
    notes = []
    if batch_first is None:
        notes.append("a state_dict does not record batch_first; assumed False (time-major input), "
                     "pass --batch-first otherwise")
    if kinds[0].nonlinearity:  # nn.RNN: tanh or relu, which the weights do not tell
        kwargs["nonlinearity"] = nonlinearity or "tanh"
        if nonlinearity is None:
            notes.append("a state_dict does not record the RNN's nonlinearity; assumed tanh, "
                         "pass --nonlinearity relu otherwise")
    elif nonlinearity is not None:
        raise CheckpointError(f"--nonlinearity applies to nn.RNN, but {path} holds an {cls.__name__}")
    if proj is not None:
        kwargs["proj_size"] = proj.shape[0]
    layer = cls(**kwargs)
    _load_weights(path, layer, bare)
    desc = f"state_dict of nn.{cls.__name__}(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return LoadedModel(RecurrentLayer(layer).eval(), "state_dict", desc, notes)


def _from_torchscript(path: Path, module: Any) -> LoadedModel:
    """Rebuild a scripted ``nn.RNN``/``nn.LSTM``/``nn.GRU`` as an eager layer (exact: same weights and
    constants). Other scripted models stay the ScriptModule: export captures their compiled forward
    with torch.onnx's TorchScript exporter and checks it against that module (``converters/torchscript.py``)."""
    name = getattr(module, "original_name", type(module).__name__)
    kinds = kinds_of(torch_module=name)
    if not kinds:
        return LoadedModel(module.eval(), "torchscript", f"TorchScript archive of {name}",
                           ["its compiled forward is exported with torch.onnx's TorchScript exporter"])
    kwargs: dict[str, Any] = {k: getattr(module, k) for k in
                              ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional")}
    kind = kind_of_mode(getattr(module, "mode", kinds[0].torch_mode))
    if kind.nonlinearity:
        kwargs["nonlinearity"] = kind.nonlinearity
    if kind is LSTM and getattr(module, "proj_size", 0):
        kwargs["proj_size"] = module.proj_size
    layer = kind.torch_class(**kwargs)
    _load_weights(path, layer, module.state_dict())
    return LoadedModel(RecurrentLayer(layer).eval(), "torchscript", f"TorchScript archive of nn.{name}({kwargs})")
