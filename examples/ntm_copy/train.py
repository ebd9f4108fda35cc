"""Train a Neural Turing Machine on the copy task and save it as an edgernn checkpoint.

    .venv/bin/python examples/ntm_copy/train.py        # a few minutes on one CPU core

Writes ``examples/ntm_copy/ntm_copy.pt`` (``edgernn.save``: architecture ``ntm``, config and
weights; no pickled code), which ``evaluate.py`` exports, quantizes and streams. Training follows
the paper's copy task (Graves et al. 2014, section 4.1): sequences of 1 to ``TRAIN_LENGTH`` vectors
of 8 random bits, lengths drawn uniformly (one length per batch of 32), no curriculum; Adam, its
rate cut by 5 for the last ``FINE_TUNE`` batches; gradients clipped to [-10, 10] as in the paper.
At the end, bit errors per sequence are reported at training lengths and at longer ones (the
paper's generalization test).

One thread, fixed seeds: the run is reproducible, and a step of this model is dozens of tiny ops,
which more threads only slow down. (A curriculum from short lengths and a cosine learning-rate
decay from the start were both tried and ended with more bit errors after the same time.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import copy_data as data  # noqa: E402  (examples/ntm_copy/copy_data.py: a unique module name)

import edgernn  # noqa: E402
from edgernn.architectures import NTM  # noqa: E402

CHECKPOINT = HERE / "ntm_copy.pt"
CONFIG = {"input_size": data.CHANNELS, "output_size": data.BITS, "controller": "lstm", "controller_size": 100,
          "memory_size": 64, "memory_width": 20, "read_heads": 1, "write_heads": 1, "shift_range": 3,
          "learn_init": True}
TRAIN_LENGTH = 20  # longest sequence in training; longer ones test generalization
EVAL_LENGTHS = (10, 20, 30, 40, 50)
TRAIN_SEED, EVAL_SEED = 0, 1000
BATCH = 32
STEPS, FINE_TUNE = 4000, 1000  # batches in all; of them, the last ones at a fifth of the rate


def build_model() -> NTM:
    return NTM(**CONFIG)


def run(model: NTM, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[time, batch, bits]`` for inputs ``[time, batch, channels]``, from the initial state."""
    state = model.initial_state(x.shape[1])
    ys = []
    for frame in x:
        y, state = model(frame, state)
        ys.append(y)
    return torch.stack(ys)


def evaluate(model: NTM, lengths=EVAL_LENGTHS, n: int = 64, seed: int = EVAL_SEED) -> dict[int, float]:
    """Mean bit errors per sequence at each length, on ``n`` fresh sequences (PyTorch)."""
    rng = np.random.default_rng(seed)
    out = {}
    with torch.inference_mode():
        for length in lengths:
            x, target, mask = data.make_batch(n, length, rng)
            logits = run(model.eval(), torch.from_numpy(x)).numpy()
            out[length] = float(data.bit_errors(logits, target, mask).mean())
    return out


def train(steps: int = STEPS, lr: float = 1e-3, fine_tune: int = FINE_TUNE, log=print) -> NTM:
    """Train from seed ``TRAIN_SEED`` on fresh batches (each batch one length, drawn from
    1..TRAIN_LENGTH); the last ``fine_tune`` batches at ``lr / 5``."""
    torch.manual_seed(TRAIN_SEED)
    rng = np.random.default_rng(TRAIN_SEED)
    model = build_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    recent, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        if step == steps - fine_tune + 1:
            for group in opt.param_groups:
                group["lr"] = lr / 5
        length = int(rng.integers(1, TRAIN_LENGTH + 1))
        x, target, mask = (torch.from_numpy(a) for a in data.make_batch(BATCH, length, rng))
        logits = run(model, x)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        loss = (bce * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 10.0)  # as the paper: gradients clipped to [-10, 10]
        opt.step()
        errors = data.bit_errors(logits.detach().numpy(), target.numpy(), mask.numpy())
        recent = (recent + [errors.mean() / length])[-100:]
        if step % 250 == 0 or step == steps:
            log(f"step {step:5d}  loss {loss.item():.4f}  bit errors per vector (last 100 batches) "
                f"{np.mean(recent):.3f}  ({time.perf_counter() - t0:.0f} s)")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training batches of {BATCH} sequences")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--fine-tune", type=int, default=FINE_TUNE, help="last batches at a fifth of the rate")
    parser.add_argument("-o", "--output", type=Path, default=CHECKPOINT, help="checkpoint to write")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        model = train(args.steps, args.lr, fine_tune=args.fine_tune)
        seconds = time.perf_counter() - t0
        print(f"trained in {seconds:.1f} s on 1 thread")
        errors = evaluate(model)
    finally:
        torch.set_num_threads(threads)
    print(f"bit errors per sequence (64 fresh sequences each; trained on lengths 1..{TRAIN_LENGTH}):")
    for length, e in errors.items():
        print(f"  length {length:3d}: {e:6.2f} of {length * data.BITS} bits"
              f"{'' if length <= TRAIN_LENGTH else '  (longer than training)'}")
    edgernn.save(model, args.output)
    print(f"saved {args.output} ({args.output.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
