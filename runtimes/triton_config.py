"""The ``config.pbtxt`` of a Triton model that streams an edgernn file with implicit state, and
its entries (inputs, outputs, ``sequence_batching.state``), for :mod:`edgernn.runtimes.triton`.

Written as protobuf text by hand: Triton's ``ModelConfig`` schema ships in ``tritonclient``,
which would pull gRPC and its protobuf runtime into every install for one text file; the tests
parse what is written here with that schema (tests/runtimes/test_triton.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgernn.contract import StateSpec, TensorSpec

PLATFORM = "onnxruntime_onnx"
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU", "auto": "KIND_AUTO"}
#: numpy dtype name -> Triton model-config data type (those the ONNX Runtime backend accepts)
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}


def graph_dims(value_info: Any, rank: int) -> list[int] | None:
    """The graph's declared dims (-1 where not fixed), or None when it declares no shape of ``rank``."""
    if value_info is None or not value_info.type.HasField("tensor_type"):
        return None
    tt = value_info.type.tensor_type
    if not tt.HasField("shape") or len(tt.shape.dim) != rank:
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]


def tensor_entry(t: TensorSpec, value_info: Any, batched: bool, is_input: bool) -> dict[str, Any]:
    """A config ``input`` / ``output`` entry. Dims are the graph's (what the backend compares,
    exactly for outputs) with ``time`` and other symbols -1; the batch axis is left out when
    batching, else fixed at 1 for inputs (one sequence per execution) and -1 for outputs."""
    declared = graph_dims(value_info, len(t.shape))
    dims = []
    for k, d in enumerate(t.shape):
        if k == t.batch_axis:
            if batched:
                continue
            dims.append(1 if is_input else -1)
        elif declared is not None:
            dims.append(declared[k])
        else:
            dims.append(int(d) if isinstance(d, (int, np.integer)) else -1)
    entry = {"name": t.name, "data_type": TRITON_TYPES[t.dtype], "dims": dims,
             "time_axis": t.time_axis, "batch_axis": t.batch_axis}
    if is_input and t.frame_multiple != 1:
        entry["frame_multiple"] = t.frame_multiple
    if not is_input and t.delay:
        entry["delay"] = t.delay
    return entry


def timing_notes(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> list[str]:
    """What a client must know about strides and lookahead over time (config comments and notes)."""
    lines = [f"input {e['name']!r}: each request carries a multiple of {e['frame_multiple']} frames (the model "
             "strides over time)" for e in inputs if e.get("frame_multiple", 1) != 1]
    lines += [f"output {e['name']!r}: {e['delay']} frame{'s' if e['delay'] > 1 else ''} of lookahead (delay): frame t "
              f"of a sequence's output is the model's frame t - {e['delay']}" for e in outputs if e.get("delay")]
    return lines


def state_entry(s: StateSpec, batched: bool, start: np.ndarray | None) -> dict[str, Any]:
    dims = [1 if k == s.batch_axis else int(d) for k, d in enumerate(s.shape) if not (batched and k == s.batch_axis)]
    initial: dict[str, Any] = {"name": s.name, "data_type": TRITON_TYPES[s.dtype], "dims": list(dims)}
    if start is None:
        initial["zero_data"] = True
    else:
        initial["data_file"] = state_file_name(s.name)
    return {"state": s.name, "input_name": s.input, "output_name": s.output, "data_type": TRITON_TYPES[s.dtype],
            "dims": dims, "initial_state": initial}


def state_file_name(state: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", state) + ".bin"


def raw_bytes(value: np.ndarray) -> bytes:
    """Row-major little-endian bytes, as Triton reads an initial_state data_file."""
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def quote(text: str) -> str:
    """A protobuf text-format string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out.replace("\t", "\\t") + '"'


def _dims(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def config_text(name: str, max_batch_size: int, inputs: list[dict], outputs: list[dict], states: list[dict],
                 controls: list[dict], strategy: str, idle: int, delay: int, candidates: int | None,
                 instance_count: int, instance_kind: str, source: str) -> str:
    from edgernn import __version__

    lines = [f"# Triton model configuration written by edgernn {__version__} from {Path(source).name}.",
             "# Each sequence's recurrent state stays in Triton (sequence_batching.state: implicit state).",
             *(f"# {line}" for line in timing_notes(inputs, outputs)),
             f"name: {quote(name)}", f"platform: {quote(PLATFORM)}", f"max_batch_size: {max_batch_size}"]

    lines += tensor_lines("input", inputs) + tensor_lines("output", outputs)
    lines += batcher_lines(max_batch_size, strategy, idle, delay, candidates) + control_lines(controls)
    lines.append("  state [")
    for k, s in enumerate(states):
        init = s["initial_state"]
        lines.append("    {")
        lines.append(f"      input_name: {quote(s['input_name'])}")
        lines.append(f"      output_name: {quote(s['output_name'])}")
        lines.append(f"      data_type: {s['data_type']}")
        lines.append(f"      dims: {_dims(s['dims'])}")
        lines.append("      initial_state: {")
        lines.append(f"        data_type: {init['data_type']}")
        lines.append(f"        dims: {_dims(init['dims'])}")
        if init.get("zero_data"):
            lines.append("        zero_data: true")
        else:
            lines.append(f"        data_file: {quote(init['data_file'])}")
        lines.append(f"        name: {quote(init['name'])}")
        lines.append("      }")
        lines.append("    }" + ("," if k < len(states) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    lines += instance_lines(instance_count, instance_kind)
    return "\n".join(lines) + "\n"


def tensor_lines(key: str, entries: list[dict]) -> list[str]:
    """The ``input`` or ``output`` list of a config."""
    lines = [f"{key} ["]
    for k, e in enumerate(entries):
        lines += ["  {", f"    name: {quote(e['name'])}", f"    data_type: {e['data_type']}",
                  f"    dims: {_dims(e['dims'])}", "  }" + ("," if k < len(entries) - 1 else "")]
    return lines + ["]"]


def batcher_lines(max_batch_size: int, strategy: str, idle: int, delay: int, candidates: int | None) -> list[str]:
    """The opening of ``sequence_batching``: idle time and strategy (the caller closes the block)."""
    lines = ["sequence_batching {", f"  max_sequence_idle_microseconds: {idle}"]
    if strategy == "oldest":
        lines += ["  oldest {", f"    max_candidate_sequences: {candidates or max(1, max_batch_size)}"]
    else:
        lines.append("  direct {")
    return lines + [f"    max_queue_delay_microseconds: {delay}", "  }"]


def control_lines(controls: list[dict]) -> list[str]:
    """``sequence_batching.control_input``: START, END, READY (int32 0/1) and CORRID (its type)."""
    if not controls:
        return []
    lines = ["  control_input ["]
    for k, c in enumerate(controls):
        lines += ["    {", f"      name: {quote(c['name'])}", "      control [", "        {", f"          kind: {c['kind']}"]
        if c["kind"] == "CONTROL_SEQUENCE_CORRID":
            lines.append(f"          data_type: {c['data_type']}")
        else:
            lines.append("          int32_false_true: [ 0, 1 ]")
        lines += ["        }", "      ]", "    }" + ("," if k < len(controls) - 1 else "")]
    return lines + ["  ]"]


def instance_lines(instance_count: int, instance_kind: str) -> list[str]:
    return ["instance_group [", "  {", f"    count: {instance_count}", f"    kind: {INSTANCE_KINDS[instance_kind]}", "  }",
            "]"]


__all__ = ["PLATFORM", "INSTANCE_KINDS", "TRITON_TYPES", "config_text", "tensor_entry", "state_entry", "timing_notes", "raw_bytes",
           "tensor_lines", "batcher_lines", "control_lines", "instance_lines", "quote"]
