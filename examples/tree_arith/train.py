"""Train a Child-Sum Tree-LSTM and a binary TreeRNN to evaluate arithmetic expression trees.

    .venv/bin/python examples/tree_arith/train.py          # ~1-2 min on 2 CPU cores, both models

Each model reads an expression tree of digits and ``+``/``*`` (mod 10) as token ids, one cell per
node, children before parents, and classifies the root's value mod 10 (see ``arith_data.py``). Training
trees have 1-8 leaves; accuracy is reported on fresh held-out trees per size bucket, up to 32
leaves (63 nodes), next to the majority-class baseline of each bucket. Writes
``examples/tree_arith/tree_lstm.pt`` and ``tree_rnn.pt`` (``edgernn.save``: architecture name,
config and weights; no pickled code), which ``edgernn export`` turns into one ONNX graph each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import arith_data as data  # noqa: E402  (examples/tree_arith/arith_data.py: a unique module name)

import edgernn  # noqa: E402
from edgernn.architectures import ChildSumTreeLSTM, TreeRNN  # noqa: E402

MODELS = {
    "tree_lstm": (ChildSumTreeLSTM, {"input_size": None, "hidden_size": 64, "output_size": data.N_CLASSES,
                                     "vocab_size": len(data.VOCAB), "embed_size": 32}),
    "tree_rnn": (TreeRNN, {"input_size": None, "hidden_size": 128, "output_size": data.N_CLASSES,
                           "vocab_size": len(data.VOCAB), "embed_size": 32}),
}
STEPS = {"tree_lstm": 2000, "tree_rnn": 2000}
TRAIN_SEED, EVAL_SEED = 0, 1000


def build_model(name: str) -> torch.nn.Module:
    cls, config = MODELS[name]
    return cls(**config)


def accuracy_by_bucket(model: torch.nn.Module, n_per_bucket: int = 1000, seed: int = EVAL_SEED
                       ) -> dict[str, dict[str, float]]:
    """Accuracy on ``n_per_bucket`` fresh trees per size bucket (``data.BUCKETS``), with the
    bucket's majority-class baseline (the frequency of its commonest label)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (lo, hi) in data.BUCKETS.items():
        b = data.make_batch(n_per_bucket, rng, lo, hi)
        with torch.inference_mode():
            logits, _ = model.eval()(*b.forest.torch())
        correct = logits.argmax(1).numpy() == b.labels
        out[name] = {"accuracy": float(correct.mean()), "majority": float(np.bincount(b.labels).max() / len(b.labels)),
                     "trees": n_per_bucket}
    return out


def train(name: str, steps: int | None = None, batch: int = 256, lr: float = 3e-3, log=print) -> torch.nn.Module:
    """Train model ``name`` from seed ``TRAIN_SEED`` on fresh random trees (no tree batch repeats)."""
    steps = steps or STEPS[name]
    torch.manual_seed(TRAIN_SEED)
    rng = np.random.default_rng(TRAIN_SEED)
    model = build_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        b = data.make_batch(batch, rng)
        # the generator builds valid forests: skip the per-batch structure check
        logits, _ = model(*b.forest.torch(), validate=False)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(b.labels))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 500 == 0 or step == steps:
            log(f"  step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.1f} s)")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODELS, "both"], default="both")
    parser.add_argument("--steps", type=int, default=None, help="training steps (batches of 256 trees)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the checkpoints")
    args = parser.parse_args(argv)

    for name in MODELS if args.model == "both" else [args.model]:
        print(f"{name}: {MODELS[name][0].__name__} {MODELS[name][1]}")
        t0 = time.perf_counter()
        model = train(name, args.steps)
        print(f"  trained in {time.perf_counter() - t0:.1f} s on {torch.get_num_threads()} threads")
        for bucket, r in accuracy_by_bucket(model).items():
            print(f"  {bucket:28s} accuracy {r['accuracy']:.3f}  (majority class {r['majority']:.3f}, "
                  f"{r['trees']} trees)")
        path = args.out / f"{name}.pt"
        edgernn.save(model, path)
        print(f"  saved {path} ({path.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
