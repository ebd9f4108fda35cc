"""Train the keyword spotter on synthetic streams and save it as an edgernn checkpoint.

    .venv/bin/python examples/wakeword/train.py        # ~15 s on 2 CPU cores

Writes ``examples/wakeword/wakeword_gru.pt`` (``edgernn.save``: architecture name, config and
weights; no pickled code), which ``demo.py`` exports and streams. The model is edgernn's
``FrameClassifier``: Linear+ReLU frontend, a GRU core (batch_first), a Linear head with two
logits per frame (background, keyword).
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

import data  # noqa: E402  (examples/wakeword/data.py)

import edgernn  # noqa: E402
from edgernn.architectures import FrameClassifier  # noqa: E402

CHECKPOINT = HERE / "wakeword_gru.pt"
CONFIG = {"n_features": data.N_BANDS, "hidden_size": 48, "n_classes": 2, "num_layers": 1, "cell": "gru",
          "frontend_size": 32}
TRAIN_SEED, EVAL_SEED = 0, 1000


def build_model() -> FrameClassifier:
    return FrameClassifier(**CONFIG)


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of ``model`` on a batch of whole streams [batch, time, bands] (PyTorch, from zero state)."""
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def evaluate(model: torch.nn.Module, n_streams: int = 32, n_frames: int = 1000, seed: int = EVAL_SEED) -> data.Score:
    """Frame accuracy and detection F1 on fresh held-out streams (``seed`` differs from training's)."""
    rng = np.random.default_rng(seed)
    streams = [data.make_stream(n_frames, rng) for _ in range(n_streams)]
    logits = predict(model.eval(), np.stack([s.x for s in streams]))
    return data.score(data.keyword_probability(logits) > data.THRESHOLD, streams)


def train(steps: int = 300, batch: int = 32, n_frames: int = 200, lr: float = 4e-3, log=print) -> FrameClassifier:
    """Train from seed ``TRAIN_SEED`` on fresh synthetic batches (no example is seen twice)."""
    torch.manual_seed(TRAIN_SEED)
    rng = np.random.default_rng(TRAIN_SEED)
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    # keyword frames are ~5% of all frames: weigh them up so the detector does not learn "never"
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = data.make_batch(batch, n_frames, rng)
        logits = model(torch.from_numpy(x))
        loss = loss_fn(logits.reshape(-1, 2), torch.from_numpy(y).reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(f"step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.1f} s)")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (batches of 32 x 200 frames)")
    parser.add_argument("-o", "--output", type=Path, default=CHECKPOINT, help="checkpoint to write")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = train(args.steps)
    seconds = time.perf_counter() - t0
    s = evaluate(model)
    print(f"trained in {seconds:.1f} s on {torch.get_num_threads()} threads")
    print(f"held-out ({s.frames} frames, {s.tp + s.fn} keywords): frame accuracy {s.accuracy:.4f}, "
          f"detection precision {s.precision:.3f} recall {s.recall:.3f} F1 {s.f1:.3f}")
    edgernn.save(model, args.output)
    print(f"saved {args.output} ({args.output.stat().st_size / 1024:.1f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
