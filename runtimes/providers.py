"""onnxruntime execution providers by short name, checked before and after a session opens.

onnxruntime takes provider names such as ``CUDAExecutionProvider``; users type ``cuda``. When a
provider cannot start (a missing CUDA library, no device), onnxruntime logs a warning and
quietly runs on the CPU. Here that is an error unless the caller allowed a fallback, and then
it is said in the session's notes.
"""

from __future__ import annotations

from typing import Sequence

from edgernn.errors import EdgernnError

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "azure": "AzureExecutionProvider",
}
# where a provider keeps its tensors: OrtValues of the state live there between calls
DEVICES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


class ProviderError(EdgernnError):
    """An execution provider is unknown, not installed, or could not start."""


def available() -> list[str]:
    """onnxruntime's names of the providers this installation has, in its preference order."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (the name itself when it has no alias)."""
    return next((k for k, v in ALIASES.items() if v == provider), provider)


def describe(providers: Sequence[str]) -> str:
    """``cpu (CPUExecutionProvider), ...``: each provider by short name and onnxruntime's name."""
    return ", ".join(p if short_name(p) == p else f"{short_name(p)} ({p})" for p in providers)


def _installed_text() -> str:
    return describe(available())


def resolve(providers: str | Sequence[str] | None) -> list[str]:
    """onnxruntime provider names for ``providers`` (short names, onnxruntime names, or ``auto``:
    every installed provider in onnxruntime's order; ``None``: the CPU). The CPU provider is
    appended when absent, as the place nodes that other providers do not take run."""
    if providers is None:
        return ["CPUExecutionProvider"]
    wanted = [providers] if isinstance(providers, str) else list(providers)
    installed = available()
    out: list[str] = []
    for p in wanted:
        if p == "auto":
            out += [q for q in installed if q not in out]
            continue
        name = ALIASES.get(p.lower(), p)
        if name not in ALIASES.values() and name not in installed:
            raise ProviderError(f"provider {p!r} is unknown; the installed ones are {_installed_text()}")
        if name not in installed:
            hint = " (pip install onnxruntime-gpu)" if name in DEVICES else ""
            raise ProviderError(f"provider {p!r} ({name}) is not installed in this onnxruntime{hint}; the installed "
                                f"ones are {_installed_text()}")
        if name not in out:
            out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def check_started(session, requested: Sequence[str], allow_fallback: bool, source: str) -> list[str]:
    """Raise if the first requested provider did not start for ``session`` (onnxruntime fell back),
    unless ``allow_fallback``; return notes saying what runs where."""
    running = session.get_providers()
    first = requested[0]
    if first in running:
        return []
    note = (f"provider {short_name(first)} ({first}) could not start for {source}; onnxruntime runs it on "
            f"{', '.join(short_name(p) for p in running)}")
    if not allow_fallback:
        raise ProviderError(note + "; allow the fallback (--fallback, allow_fallback=True) or pick another provider")
    return [note + " (fallback allowed)"]


def device_of(session) -> str:
    """``cuda`` when the session's first provider keeps tensors on a CUDA device, else ``cpu``."""
    return DEVICES.get(session.get_providers()[0], "cpu")
