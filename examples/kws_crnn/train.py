"""Train the CRNN keyword spotter on synthetic 40-band streams and save its state_dict.

    .venv/bin/python examples/kws_crnn/train.py        # well under a minute on CPU

Writes ``examples/kws_crnn/kws_crnn.pt``, a plain ``torch.save(model.state_dict())`` (read with
``torch.load(weights_only=True)``, no pickled code), and ``kws_crnn.json``, the constructor's
keyword arguments. edgernn reads the pair with the model's class:

    edgernn export examples/kws_crnn/kws_crnn.pt --class examples.kws_crnn.model:KwsCRNN \\
        --config examples/kws_crnn/kws_crnn.json -o out/kws_crnn.onnx     # from the repository root

``demo.py`` exports and streams it. Fixed seeds and one thread: the run is reproducible on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples.kws_crnn import kws_data as data  # noqa: E402
from examples.kws_crnn.model import KwsCRNN  # noqa: E402

CHECKPOINT = HERE / "kws_crnn.pt"
CONFIG_FILE = HERE / "kws_crnn.json"
CLASS_PATH = "examples.kws_crnn.model:KwsCRNN"  # importable from the repository root
CONFIG = {"n_mels": data.N_MELS, "channels": 32, "hidden_size": 48, "n_classes": 2, "kernel_size": 3, "dilation": 2}
TRAIN_SEED, EVAL_SEED = 0, 1000


def build_model() -> KwsCRNN:
    return KwsCRNN(**CONFIG)


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits [batch, time, 2] of ``model`` on whole streams ``x`` [batch, 40, time] (PyTorch)."""
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def evaluate(model: torch.nn.Module, n_streams: int = 32, n_frames: int = 1000, seed: int = EVAL_SEED):
    """Frame accuracy and detection F1 on fresh held-out streams (a seed training does not use)."""
    rng = np.random.default_rng(seed)
    streams = [data.make_stream(n_frames, rng) for _ in range(n_streams)]
    logits = predict(model.eval(), np.stack([s.x for s in streams]))
    return data.score(data.keyword_probability(logits) > data.THRESHOLD, streams)


def train(steps: int = 150, batch: int = 32, n_frames: int = 200, lr: float = 5e-3, log=print) -> KwsCRNN:
    """Adam with a one-cycle rate from seed ``TRAIN_SEED``, fresh synthetic batches every step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches of small ops: more threads only contend (and 1 is reproducible)
    try:
        return _train(steps, batch, n_frames, lr, log)
    finally:
        torch.set_num_threads(threads)


def _train(steps: int, batch: int, n_frames: int, lr: float, log) -> KwsCRNN:
    torch.manual_seed(TRAIN_SEED)
    rng = np.random.default_rng(TRAIN_SEED)
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    # keyword frames are ~5% of all frames: weigh them up so the detector does not learn "never"
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))
    model.train()
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
        if step % 50 == 0 or step == steps:
            log(f"step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.1f} s)")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps (batches of 32 x 200 frames)")
    parser.add_argument("-o", "--output", type=Path, default=CHECKPOINT, help="state_dict file to write "
                        "(the config goes next to it, same name with .json)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = train(args.steps)
    seconds = time.perf_counter() - t0
    s = evaluate(model)
    print(f"trained in {seconds:.1f} s on 1 thread")
    print(f"held-out ({s.frames} frames, {s.tp + s.fn} keywords): frame accuracy {s.accuracy:.4f}, "
          f"detection precision {s.precision:.3f} recall {s.recall:.3f} F1 {s.f1:.3f}")
    torch.save(model.state_dict(), args.output)
    args.output.with_suffix(".json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    print(f"saved {args.output} ({args.output.stat().st_size / 1024:.1f} KiB) and {args.output.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
