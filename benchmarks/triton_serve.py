"""Streams through Triton's Python backend (gRPC and HTTP) against StreamBatcher in one process.

    .venv/bin/python benchmarks/triton_serve.py [--rounds 5] [--frames 1600] [--json out.json]

Model: ``nn.GRU(64, 256, num_layers=2, batch_first=True)`` (random weights, seed 0) exported in
step mode (one frame per call), as in benchmarks/batcher.py; its state stays in PyTorch's layout
[layers, batch, hidden]. ``edgernn serve --backend python`` writes its repository (one instance,
one onnxruntime thread), and the nvidia-pytriton wheel's ``tritonserver`` serves it on loopback
(``TritonProcess``). For 1, 16 and 64 concurrent streams, interleaved round by round:

- ``triton grpc``: each stream a sequence that sends its next frame when the answer to the last
  one is back (``async_infer`` with a callback; one client);
- ``triton http``: the same with a thread per stream, each with its own HTTP client, ``infer``
  (tritonclient.http's gevent ``async_infer`` was 36x slower here: 360 ms for 32 requests);
- ``batcher``: a ``StreamBatcher`` stepping all the streams in one call, in this process.

Each round sends ``--frames`` frames per case (spread over its streams). Latency is one frame's
round trip (for the batcher: one call, which answers every stream at once); p50 and p99 over all
frames of all rounds; frames/s is the median over rounds. ``batch`` is the mean number of requests
Triton handed one execute call (its statistics). Client, server and batcher share the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

STREAMS = (1, 16, 64)
POOL = 16  # distinct frames cycled through, per stream
TIMEOUT = 60.0


def export_model(path: Path) -> Path:
    import torch

    from edgernn.converters.export import export

    torch.manual_seed(0)
    export(torch.nn.GRU(64, 256, 2, batch_first=True).eval(), path, mode="step")
    return path


def grpc_case(client, model: str, ids: list[int], frames: np.ndarray, per_stream: int) -> tuple[float, list[float]]:
    """Closed loop per stream: (seconds, latencies)."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list = []
    left = [len(ids)]
    lock, done = threading.Lock(), threading.Event()

    def send(i: int, k: int) -> None:
        x = grpcclient.InferInput("x", [1, 1, 64], "FP32")
        x.set_data_from_numpy(frames[k % POOL, i])
        client.async_infer(model, [x], partial(back, i, k, time.perf_counter()), sequence_id=ids[i],
                           client_timeout=TIMEOUT)

    def back(i: int, k: int, sent: float, result, error) -> None:
        latencies.append(time.perf_counter() - sent)
        if error is not None:
            errors.append(error)
        if k + 1 < per_stream and error is None:
            send(i, k + 1)
            return
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    began = time.perf_counter()
    for i in range(len(ids)):
        send(i, 0)
    if not done.wait(TIMEOUT):
        raise RuntimeError("gRPC streams did not finish in time")
    took = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"gRPC: {errors[0]}")
    return took, latencies


def http_case(pool, url: str, local: threading.local, model: str, ids: list[int], frames: np.ndarray,
              per_stream: int) -> tuple[float, list[float]]:
    """A thread per stream, each with its own client (gevent's clients stay in their thread)."""
    import tritonclient.http as httpclient

    def one_stream(i: int) -> list[float]:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(url, connection_timeout=TIMEOUT, network_timeout=TIMEOUT)
        out = []
        for k in range(per_stream):
            x = httpclient.InferInput("x", [1, 1, 64], "FP32")
            x.set_data_from_numpy(frames[k % POOL, i])
            sent = time.perf_counter()
            local.client.infer(model, [x], sequence_id=ids[i])
            out.append(time.perf_counter() - sent)
        return out

    began = time.perf_counter()
    results = [f.result(timeout=TIMEOUT) for f in [pool.submit(one_stream, i) for i in range(len(ids))]]
    return time.perf_counter() - began, [t for r in results for t in r]


def batcher_case(batcher, sids: list[int], frames: np.ndarray, calls: int) -> tuple[float, list[float]]:
    feeds = [{sid: frames[p, i] for i, sid in enumerate(sids)} for p in range(POOL)]
    latencies = []
    began = time.perf_counter()
    for k in range(calls):
        t = time.perf_counter()
        batcher.step(feeds[k % POOL])
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - began, latencies


def executions(client, model: str) -> tuple[int, int]:
    """Triton's (inference count, execution count) of ``model`` so far."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def measure(rounds: int = 5, frames: int = 1600, streams: tuple[int, ...] = STREAMS, log: Path | None = None) -> dict:
    """Frames/s, p50/p99 latency (ms) and Triton's mean batch per case and stream count."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient

    from edgernn.runtimes.batcher import StreamBatcher
    from edgernn.runtimes.triton import triton_repository
    from edgernn.runtimes.triton_python import TritonProcess

    most = max(streams)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(Path(tmp) / "gru_step.onnx")
        repo = Path(tmp) / "repo"
        # every case's sequences stay open through the run: room for all of them in one instance
        triton_repository(path, repo, name="gru", backend="python", max_batch_size=most,
                          max_candidate_sequences=2 * sum(streams), max_sequence_idle_microseconds=600_000_000)
        server = TritonProcess(repo, log=log or Path(tmp) / "tritonserver.log",
                               args=["--model-control-mode=explicit", "--load-model=gru"])
        try:
            rng = np.random.default_rng(0)
            data = rng.standard_normal((POOL, most, 1, 1, 64)).astype(np.float32)
            grpc = grpcclient.InferenceServerClient(server.grpc_url)
            pool, local = ThreadPoolExecutor(most), threading.local()
            batchers = {n: StreamBatcher(path, capacity=n, threads=1) for n in streams}
            sids = {n: [b.open() for _ in range(n)] for n, b in batchers.items()}
            ids = {(proto, n): [(1 if proto == "grpc" else 2) * 100_000 + n * 1000 + i for i in range(n)]
                   for proto in ("grpc", "http") for n in streams}
            for (proto, n), seq_ids in ids.items():  # open every sequence (and warm up)
                for sid in seq_ids:
                    x = grpcclient.InferInput("x", [1, 1, 64], "FP32")
                    x.set_data_from_numpy(data[0, 0])
                    grpc.infer("gru", [x], sequence_id=sid, sequence_start=True, client_timeout=TIMEOUT)
            samples: dict = {}
            for _ in range(rounds):
                for n in streams:
                    per_stream = max(1, frames // n)
                    for case in ("triton grpc", "triton http", "batcher"):
                        before = executions(grpc, "gru") if case != "batcher" else None
                        if case == "triton grpc":
                            took, lat = grpc_case(grpc, "gru", ids[("grpc", n)], data, per_stream)
                        elif case == "triton http":
                            took, lat = http_case(pool, server.http_url, local, "gru", ids[("http", n)], data,
                                                  per_stream)
                        else:
                            took, lat = batcher_case(batchers[n], sids[n], data, per_stream)
                        entry = samples.setdefault((case, n), {"fps": [], "lat": [], "batch": []})
                        entry["fps"].append(n * per_stream / took)
                        entry["lat"].extend(lat)
                        if before is not None:
                            after = executions(grpc, "gru")
                            entry["batch"].append((after[0] - before[0]) / max(1, after[1] - before[1]))
            for (proto, n), seq_ids in ids.items():
                for sid in seq_ids:
                    x = grpcclient.InferInput("x", [1, 1, 64], "FP32")
                    x.set_data_from_numpy(data[0, 0])
                    grpc.infer("gru", [x], sequence_id=sid, sequence_end=True, client_timeout=TIMEOUT)
            pool.shutdown()
        finally:
            server.kill()
    rows = []
    for (case, n), entry in samples.items():
        lat = np.asarray(entry["lat"]) * 1e3
        rows.append({"case": case, "streams": n, "fps": statistics.median(entry["fps"]),
                     "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                     "batch": statistics.mean(entry["batch"]) if entry["batch"] else float(n)})
    return {"rounds": rounds, "frames": frames, "rows": rows}


def table(result: dict) -> str:
    lines = ["| streams | case | frames/s | p50 ms | p99 ms | requests per execute |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in sorted(result["rows"], key=lambda r: (r["streams"], r["case"])):
        batch = "" if r["case"] == "batcher" else f"{r['batch']:.1f}"
        lines.append(f"| {r['streams']} | {r['case']} | {r['fps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{batch} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=1600, help="frames per case and round")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.frames)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
