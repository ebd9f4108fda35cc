"""The copy-task NTM end to end: export -> stream -> quantize -> count bit errors against PyTorch.

    .venv/bin/python examples/ntm_copy/evaluate.py [--sequences 32] [--out out/ntm_copy]

1. Export the shipped checkpoint (``ntm_copy.pt``, trained by ``train.py``) with
   ``edgernn.export(model, path, mode="step")``: one frame per call; the memory, both weightings,
   the read vectors and the controller's h and c are state pairs, and the initial memory and read
   vectors are stored in the file. edgernn checks the export against PyTorch as it writes it.
   Then try ``mode="chunk"`` (the step graph in a Scan over time); if this edgernn cannot export
   it, the chunk column is skipped with a sentence saying why.
2. Quantize the step file with ``edgernn.quantize`` (``dynamic`` int8 and ``fp16``); their
   accuracy check streams copy-task sequences (written to ``OUT/copy_streams.npy``). A method
   that fails is skipped with a sentence, like the chunk column.
3. Run fresh copy sequences at each length through PyTorch and through every file with
   ``edgernn.open``: a fresh session starts from the file's stored init (``reset()`` without a
   state) and carries the state itself, one frame per call (the chunk file: ``CHUNK`` frames per call).
4. Print bit errors per sequence for each, at the training lengths and longer (the paper's
   generalization test), and write ``OUT/report.json``. Exits 1 if an fp32 file's output bits
   differ from PyTorch's anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import copy_data as data  # noqa: E402  (examples/ntm_copy/copy_data.py: a unique module name)
import train  # noqa: E402  (examples/ntm_copy/train.py)

import edgernn  # noqa: E402
from edgernn.errors import EdgernnError, ExportError  # noqa: E402

CHECKPOINT = HERE / "ntm_copy.pt"
LENGTHS = (10, 20, 30, 40, 50, 60)  # trained on 1..20; the memory has 64 rows
CHUNK = 8  # frames per call for the chunk file
TEST_SEED = 2024  # differs from train.py's training (0) and evaluation (1000) seeds

console = Console()


def export_files(model: torch.nn.Module, out: Path) -> tuple[dict[str, Path], dict[str, Any], list[str]]:
    """Export step (and, if this edgernn can, chunk) files and quantize the step file.
    Returns the files by column, their export/quantize reports (JSON) and sentences about skips."""
    files, reports, skipped = {}, {}, []
    for mode in ("step", "chunk"):
        path = out / f"ntm_copy_{mode}.onnx"
        t0 = time.perf_counter()
        try:
            report = edgernn.export(model, path, mode=mode)
        except ExportError as e:
            if mode == "step":
                raise
            skipped.append(f"chunk mode was skipped: edgernn.export(mode=\"chunk\") raised ExportError: {e}")
            continue
        files[mode] = path
        reports[mode] = {**report.to_json(), "seconds": time.perf_counter() - t0}
    # the quantizers' accuracy check streams copy sequences of the training length
    x, _, _ = data.make_batch(16, train.TRAIN_LENGTH, np.random.default_rng(TEST_SEED + 1))
    streams = out / "copy_streams.npy"
    np.save(streams, x)
    for method, column in (("dynamic", "int8"), ("fp16", "fp16")):
        t0 = time.perf_counter()
        try:
            q = edgernn.quantize(files["step"], method=method, data=streams)
        except EdgernnError as e:
            skipped.append(f"the {column} column was skipped: edgernn.quantize(method=\"{method}\") raised "
                           f"{type(e).__name__}: {e}")
            continue
        files[column] = Path(q.path)
        reports[column] = {**q.to_json(), "seconds": time.perf_counter() - t0}
    return files, reports, skipped


def stream_file(path: Path, x: np.ndarray, chunk: int) -> np.ndarray:
    """Logits ``[time, batch, bits]`` of ``x`` ``[time, batch, channels]`` through an ONNX file,
    ``chunk`` frames per call, from the file's own initial state (the session carries the state)."""
    session = edgernn.open(path)
    session.reset()  # the stored init: initial memory, weightings on row 0, read vectors
    return session.stream(x, chunk=chunk)["y"]


def evaluate(model: torch.nn.Module, files: dict[str, Path], lengths, n: int, seed: int) -> dict[str, Any]:
    """Bit errors per sequence for PyTorch and each file at each length, and how each file's
    output bits and logits compare with PyTorch's."""
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for length in lengths:
        x, target, mask = data.make_batch(n, length, rng)
        with torch.inference_mode():
            ref = train.run(model, torch.from_numpy(x)).numpy()
        row = {"pytorch": {"bit_errors": data.bit_errors(ref, target, mask).tolist()}}
        for column, path in files.items():
            logits = stream_file(path, x, CHUNK if column == "chunk" else 1)
            errors = data.bit_errors(logits, target, mask)
            row[column] = {
                "bit_errors": errors.tolist(),
                # output bits (where the copy is expected) that differ from PyTorch's
                "bits_differing_from_pytorch": int((((logits > 0) != (ref > 0)).sum(-1) * mask).sum()),
                "max_abs_logit_error": float(np.max(np.abs(logits - ref))),
            }
        results[str(length)] = row
    return results


def print_report(r: dict[str, Any]) -> None:
    columns = [c for c in ("pytorch", "step", "chunk", "int8", "fp16") if c in r["files"] or c == "pytorch"]
    heads = {"pytorch": "PyTorch", "step": "ONNX step", "chunk": f"ONNX chunk\n{CHUNK} frames/call",
             "int8": "ONNX int8", "fp16": "ONNX fp16"}
    t = Table(title=f"NTM copy task: bit errors per sequence (mean over {r['sequences']} fresh sequences; "
                    f"trained on lengths 1..{train.TRAIN_LENGTH})", title_justify="left")
    t.add_column("length")
    for c in columns:
        t.add_column(heads[c], justify="right")
    for length, row in r["lengths"].items():
        longer = int(length) > train.TRAIN_LENGTH
        t.add_row(f"{length}{' *' if longer else ''}", *(f"{np.mean(row[c]['bit_errors']):.2f}" for c in columns))
    t.add_section()
    rows = r["lengths"].values()
    t.add_row("output bits != PyTorch", "", *(str(sum(row[c]["bits_differing_from_pytorch"] for row in rows))
                                            for c in columns[1:]))
    t.add_row("max |logit - PyTorch|", "", *(f"{max(row[c]['max_abs_logit_error'] for row in rows):.1e}"
                                             for c in columns[1:]))
    t.add_row("export check", "", *(f"{r['exports'][c]['parity']['max_error']:.1e}"
                                    if c in r["exports"] else "" for c in columns[1:]))
    t.add_row("file size", f"{r['checkpoint_bytes'] / 1024:.0f} KiB",
              *(f"{r['file_bytes'][c] / 1024:.0f} KiB" for c in columns[1:]))
    console.print(t)
    console.print("* longer than any training sequence (the paper's generalization test). Output bits != PyTorch: "
                  "bits of the copy, over all lengths, that a file decides otherwise than PyTorch. File size: the "
                  "PyTorch column is the checkpoint (.pt). int8 (dynamic) and fp16 are quantized from the step file "
                  "and take one frame per call, as it does.", highlight=False)
    for sentence in r["skipped"]:
        console.print(sentence, highlight=False)


def run_evaluation(out: Path, checkpoint: Path = CHECKPOINT, n: int = 32, lengths=LENGTHS, seed: int = TEST_SEED
                   ) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    model = edgernn.load(checkpoint).module.eval()
    files, reports, skipped = export_files(model, out)
    lengths_out = evaluate(model, files, lengths, n, seed)
    fp32 = [c for c in ("step", "chunk") if c in files]
    passed = all(row[c]["bits_differing_from_pytorch"] == 0 for row in lengths_out.values() for c in fp32)
    results = {
        "checkpoint": str(checkpoint), "checkpoint_bytes": checkpoint.stat().st_size, "sequences": n,
        "files": {c: str(p) for c, p in files.items()}, "file_bytes": {c: p.stat().st_size for c, p in files.items()},
        "exports": {c: reports[c] for c in fp32},
        "quantize": {c: {k: reports[c][k] for k in ("size_ratio", "accuracy", "quantized", "kept_float", "seconds")}
                     for c in ("int8", "fp16") if c in files},
        "lengths": lengths_out, "skipped": skipped, "passed": passed,
    }
    print_report(results)
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export, stream and quantize the copy-task NTM; count bit errors.")
    parser.add_argument("--sequences", type=int, default=32, help="fresh sequences per length (default 32)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="sequence lengths to test")
    parser.add_argument("--out", type=Path, default=Path("out/ntm_copy"), help="folder for the ONNX files and "
                        "report.json (default out/ntm_copy, created)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="NTM checkpoint (default: the shipped "
                        "ntm_copy.pt)")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="seed of the test sequences")
    args = parser.parse_args(argv)
    if args.sequences < 1 or min(args.lengths) < 1:
        parser.error("--sequences and --lengths must be at least 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a step of the NTM is dozens of tiny ops: more threads only wait
    try:
        results = run_evaluation(args.out, args.checkpoint, args.sequences, tuple(args.lengths), args.seed)
    finally:
        torch.set_num_threads(threads)
    if results["passed"]:
        console.print("[green]ONNX (fp32) output bits equal PyTorch's on every sequence[/]")
    else:
        console.print("[bold red]ONNX (fp32) output bits differ from PyTorch's[/]")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
