"""onnxruntime's ORT-format converter (``onnxruntime.tools.convert_onnx_models_to_ort``), run for
``edgernn pack`` on a private copy of the model, quietly and with the optimization level asked,
and the reduced-operator config it writes, rewritten to name the packed file."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from edgernn.errors import EdgernnError

_CONVERT_LOCK = threading.Lock()  # the converter reads its optimization level from the environment
_LEVEL_ENV = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"


class ConvertError(EdgernnError):
    """onnxruntime's converter failed on the model."""


def convert(data: bytes, model, stored: Mapping[str, np.ndarray], staging: Path, optimization: str,
             type_reduction: bool, source: str) -> tuple[Path, Path]:
    """Run onnxruntime's converter (Fixed style) on a private copy; return (.ort, config) paths."""
    work = staging / ".convert"
    work.mkdir()
    model_path = work / "model.onnx"
    if stored:  # unused by nodes: onnxruntime would drop them with a warning; they go to the .npz
        import onnx

        trimmed = onnx.ModelProto()
        trimmed.CopyFrom(model)
        keep = [t for t in trimmed.graph.initializer if t.name not in stored]
        del trimmed.graph.initializer[:]
        trimmed.graph.initializer.extend(keep)
        data = trimmed.SerializeToString()
    model_path.write_bytes(data)
    result = work / "out"
    root = logging.getLogger()
    handlers = list(root.handlers)
    tool_logger = logging.getLogger("ort_format_model.utils")
    with _CONVERT_LOCK:
        saved_env = os.environ.get(_LEVEL_ENV)
        saved_level = tool_logger.level
        try:
            from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

            for h in root.handlers[:]:  # the tools' logger module calls logging.basicConfig on import
                if h not in handlers:
                    root.removeHandler(h)
            tool_logger.setLevel(logging.WARNING)
            os.environ[_LEVEL_ENV] = optimization
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(model_path, output_dir=result,
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           enable_type_reduction=type_reduction)
        except Exception as e:
            raise ConvertError(f"onnxruntime cannot convert {source} to ORT format: "
                            f"{str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
        finally:
            if saved_env is None:
                os.environ.pop(_LEVEL_ENV, None)
            else:
                os.environ[_LEVEL_ENV] = saved_env
            tool_logger.setLevel(saved_level)
    orts = list(result.glob("*.ort"))
    configs = list(result.glob("*.config"))
    if len(orts) != 1 or len(configs) != 1:
        raise ConvertError(f"onnxruntime's converter wrote {len(orts)} .ort and {len(configs)} config files for "
                        f"{source}; expected one of each")
    return orts[0], configs[0]


def rewrite_config(tmp: Path, path: Path, ort_name: str, optimization: str,
                    version: str) -> list[tuple[str, int, list[str]]]:
    """Write the converter's config to ``path`` with a header that names the .ort file (not the
    temporary path the converter saw); return its entries."""
    entries = [line.strip() for line in tmp.read_text().splitlines() if line.strip() and not line.startswith("#")]
    header = ["# Generated from model/s:", f"# - {ort_name}",
              f"# by onnxruntime {version} (convert_onnx_models_to_ort, optimization level {optimization}, "
              "style Fixed) through edgernn pack",
              "# Use: ./build.sh --minimal_build --include_ops_by_config <this file> ..."]
    path.write_text("\n".join(header + entries) + "\n")
    ops = []
    for line in entries:
        domain, opset, names = line.split(";", 2)
        ops.append((domain, int(opset), _op_names(names)))
    return ops


def _op_names(text: str) -> list[str]:
    """Operator names of a config entry; with type reduction each is followed by a JSON object."""
    names, depth, current = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0 and ch == ",":
            names.append(current)
            current = ""
        elif depth == 0:
            current += ch
    if current:
        names.append(current)
    return [n.strip() for n in names if n.strip()]


def ort_format_version(data: bytes) -> str:
    try:
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

        return InferenceSession.GetRootAsInferenceSession(data, 0).OrtVersion().decode()
    except Exception:  # the reader moved: the version is informative only
        return "unknown"


__all__ = ["convert", "rewrite_config", "ort_format_version", "ConvertError"]
