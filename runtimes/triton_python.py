"""A Triton model repository entry for Triton's Python backend, and a local ``tritonserver``.

``triton_repository(MODEL, REPO, backend="python")`` (``edgernn serve MODEL --triton REPO
--backend python``) calls :func:`python_repository`, which writes::

    REPO/NAME/config.pbtxt     backend "python", the data tensors, the sequence batcher's controls
    REPO/NAME/1/model.py       puts edgernn's packages on sys.path, runs triton_python_model.SequenceModel
    REPO/NAME/1/model.onnx     the file as exported (stamped with its contract if it came without one)

The model keeps each sequence's state itself, keyed by ``CORRID`` (Triton's implicit state is
not carried for Python-backend models), in one :class:`~edgernn.runtimes.batcher.StreamBatcher`
per instance. So any state layout is served (no ``--state-layout batch-major`` needed), and a
request's data tensors are the contract's with the batch axis first, size 1.

Triton's stub runs its own Python, which does not see the venv that edgernn is installed in.
The config's parameter ``edgernn_site_packages`` records the site-packages of the Python that
wrote the repository; ``model.py`` adds them (``site.addsitedir``, so an editable install's
``.pth`` files work) before it imports edgernn, and refuses a stub of another Python version
(``edgernn_python``). Copy the repository to another machine and that parameter must be edited
to where edgernn's packages are there.

The ``nvidia-pytriton`` wheel from PyPI carries a ``tritonserver`` binary with the Python backend
(and no other backend). ``setup.sh`` installs it without its dependencies (it pins numpy < 2)
into ``.venv/tritonserver``; :func:`find_tritonserver` finds it there, in ``EDGERNN_TRITONSERVER``
or in an installed ``pytriton`` package, and :class:`TritonProcess` starts it on loopback with the
Python backend stub that matches this Python.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from edgernn.modelfile import ModelFile
from edgernn.runtimes.triton import (CONFIG_FILE, CONTROLS, MODEL_FILE, TritonError, TritonReport, _check_contract,
                                     _contract, _write_folder)
from edgernn.runtimes.triton_config import (TRITON_TYPES, batcher_lines, control_lines, instance_lines, quote,
                                            tensor_entry, tensor_lines, timing_notes)

MODEL_SCRIPT = "model.py"
SERVER_ENV = "EDGERNN_TRITONSERVER"
#: ops that quantize activations at run time, with one scale for the whole batch
DYNAMIC_QUANTIZE_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
#: sequences one instance holds, per sequence Triton may route to it (room for those Triton has
#: idled out before the model's own sweep frees them)
CAPACITY_FACTOR = 2

_MODEL_PY = '''"""Triton Python-backend model written by edgernn @VERSION@ from @SOURCE@.

Streams model.onnx (next to this file) through edgernn's StreamBatcher, one state per sequence
(CORRID): START starts it from the file's start values, END frees it, and so does
max_sequence_idle_microseconds without a request. Triton's stub runs its own Python: the packages
edgernn needs are put on sys.path from the config's parameter edgernn_site_packages (the
site-packages of the Python that wrote this model); edit it there if they move.
"""

import json
import os
import site
import sys


def _use_packages(params):
    want, have = params.get("edgernn_python", ""), "%d.%d" % sys.version_info[:2]
    if want and want != have:
        raise RuntimeError(f"Triton's Python backend stub runs Python {have}, but edgernn's packages "
                           f"(edgernn_site_packages) are for Python {want}: copy python_backend_stubs/{want}/"
                           "triton_python_backend_stub of the nvidia-pytriton wheel into the backend folder's python/")
    before = list(sys.path)
    for folder in params.get("edgernn_site_packages", "").split(os.pathsep):
        if folder:
            site.addsitedir(folder)
    sys.path[:] = [p for p in sys.path if p not in before] + before


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        _use_packages(params)
        try:
            from edgernn.runtimes.triton_python_model import SequenceModel
        except ImportError as e:
            raise RuntimeError(f"cannot import edgernn from edgernn_site_packages "
                               f"({params.get('edgernn_site_packages')}): {e}") from None
        self.model = SequenceModel(args, config, params)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model = None
'''


def python_repository(mf: ModelFile, repo: Path, target: Path, name: str, *, version: int, max_batch_size: int,
                      strategy: str, max_sequence_idle_microseconds: int, max_queue_delay_microseconds: int,
                      max_candidate_sequences: int | None, instance_count: int, instance_kind: str, controls: bool,
                      overwrite: bool, batch_streams: bool | None = None, threads: int = 1,
                      site_packages: Sequence[str] | None = None,
                      say: Callable[[str], None] = lambda stage: None) -> TritonReport:
    """Write ``repo/name`` for Triton's Python backend (options checked by
    :func:`~edgernn.runtimes.triton.triton_repository`, which calls this).

    ``batch_streams``: step the requests of one execute call in one run (``True``) or one run per
    stream (``False``); default: apart for a file that quantizes activations at run time
    (:func:`couples_streams`), together otherwise. ``threads``: onnxruntime intra-op threads per
    instance. ``site_packages``: where ``model.py`` finds edgernn and its packages (default: this
    Python's site-packages).
    """
    from edgernn.runtimes.batcher import StreamBatcher
    from edgernn.runtimes.session import StreamError

    from edgernn import __version__

    source = mf.source
    if max_batch_size < 1:
        raise TritonError("the Python backend model batches streams itself: max_batch_size (the most requests Triton "
                          "hands one execute call) must be at least 1")
    if instance_kind != "cpu":
        raise TritonError(f"the Python backend model runs onnxruntime on the CPU; instance kind {instance_kind!r} "
                          "needs the ONNX Runtime backend (backend='onnxruntime', --backend onnxruntime)")
    if not controls:
        raise TritonError("the Python backend model keeps each sequence's state by its CORRID and starts it on "
                          "START: it needs the control inputs (controls=True; drop --no-controls)")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TritonError(f"threads must be an integer >= 1, got {threads!r}")
    say("check")
    notes: list[str] = []
    proto, contract = _contract(mf, notes)
    _check_contract(contract, source, False)
    for t in contract.inputs:
        if t.batch_axis is None:
            raise TritonError(f"input {t.name!r} of {source} has no batch axis, so it cannot be one stream's; the "
                              "Python backend model takes a batch axis on every data input")
    taken = sorted({t.name for t in (*contract.inputs, *contract.outputs)} & {n for n, _, _ in CONTROLS})
    if taken:
        raise TritonError(f"{source} has a data tensor named {taken[0]!r}, the name of a sequence control input; "
                          "rename it")
    # the file as it is, byte for byte, when it carries its own contract
    payload = mf.data if mf.contract_from == "metadata" and mf.path is not None and not mf.uses_external_data \
        else proto.SerializeToString()
    try:
        StreamBatcher(payload, capacity=1)
    except StreamError as e:
        raise TritonError(f"{source} cannot be streamed by StreamBatcher: {e}") from None
    graph_inputs = {v.name: v for v in proto.graph.input}
    graph_outputs = {v.name: v for v in proto.graph.output}
    inputs = [tensor_entry(t, graph_inputs.get(t.name), True, True) for t in contract.inputs]
    outputs = [tensor_entry(t, graph_outputs.get(t.name), True, False) for t in contract.outputs]
    control_entries = [{"name": n, "kind": k, "data_type": TRITON_TYPES[d], "dims": [1]} for n, k, d in CONTROLS]
    together = not couples_streams(proto) if batch_streams is None else bool(batch_streams)

    slots = (max_candidate_sequences or max_batch_size) if strategy == "oldest" else max_batch_size
    capacity = CAPACITY_FACTOR * slots
    folders = list(site_packages) if site_packages is not None else _site_packages()
    params = {"edgernn_model_file": MODEL_FILE, "edgernn_site_packages": os.pathsep.join(folders),
              "edgernn_python": "%d.%d" % sys.version_info[:2], "edgernn_capacity": str(capacity),
              "edgernn_batch_streams": "together" if together else "apart", "edgernn_threads": str(threads),
              "edgernn_version": __version__}
    states = [{"state": s.name, "input_name": s.input, "output_name": s.output, "data_type": TRITON_TYPES[s.dtype],
               "dims": [d if isinstance(d, int) else str(d) for d in s.shape],
               "initial_state": {"zero_data": True} if s.init == "zeros" else {"stored": True}} for s in contract.states]
    notes.append("each sequence's state stays in the model (Triton's implicit state is not carried for Python-backend "
                 "models), keyed by CORRID: START starts it from the file's start values, END frees it, and so does "
                 f"max_sequence_idle_microseconds ({max_sequence_idle_microseconds} us) without a request")
    plural = "s" if instance_count > 1 else ""
    notes.append(f"{instance_count} instance{plural} of up to {slots} sequences each: {instance_count * slots} "
                 "streams at once; further sequences wait until one ends or idles out")
    notes.append("a request carries one stream: its data tensors as in the file with the batch axis first, size 1; "
                 f"Triton hands up to {max_batch_size} requests to one execute call")
    if together:
        notes.append("the requests of one execute call run in one StreamBatcher step (those whose frames agree in "
                     "shape)")
    else:
        why = ("its activations are quantized at run time with one scale for the whole batch, so a stream's outputs "
               "would depend on the streams batched with it" if batch_streams is None else "batch_streams=False")
        notes.append(f"each request runs in a StreamBatcher step of its own: {why}")
    notes.extend(timing_notes(inputs, outputs))
    notes.append(f"model.py imports edgernn from edgernn_site_packages ({params['edgernn_site_packages']}), for "
                 f"Python {params['edgernn_python']}: start tritonserver with the stub of that Python (docs/deploy.md)")

    config = _config_text(name, max_batch_size, inputs, outputs, control_entries, strategy,
                          max_sequence_idle_microseconds, max_queue_delay_microseconds, max_candidate_sequences,
                          instance_count, params, source)
    script = _MODEL_PY.replace("@VERSION@", __version__).replace("@SOURCE@", Path(source).name)
    say("write")
    files = {CONFIG_FILE: config.encode(), f"{version}/{MODEL_FILE}": payload, f"{version}/{MODEL_SCRIPT}": script.encode()}
    _write_folder(repo, target, files, overwrite)
    return TritonReport(
        name=name, version=version, repository=str(repo), model_dir=str(target),
        model_path=str(target / str(version) / MODEL_FILE), config_path=str(target / CONFIG_FILE),
        config_text=config, max_batch_size=max_batch_size, strategy=strategy, inputs=inputs, outputs=outputs,
        states=[{k: v for k, v in s.items() if k != "state"} for s in states], controls=control_entries,
        files=[str(target / rel) for rel in files], notes=notes, backend="python")


def couples_streams(proto: Any) -> bool:
    """Whether the graph (or a subgraph) quantizes activations at run time: onnxruntime computes
    one scale over the whole batch, so batched streams change each other's outputs (measured: up
    to 0.025 for a GRU-32 int8 file at 64 streams; tests/runtimes/test_triton_live.py checks it)."""
    return not DYNAMIC_QUANTIZE_OPS.isdisjoint(_op_types(proto.graph))


def _op_types(graph: Any) -> set[str]:
    """The op types of a graph and of its subgraphs (Scan, Loop, If bodies)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found |= _op_types(sub)
    return found


def _site_packages() -> list[str]:
    folders = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        folders.append(site.getusersitepackages())
    return [str(Path(f).resolve()) for f in folders if os.path.isdir(f)]


def _config_text(name: str, max_batch_size: int, inputs: list[dict], outputs: list[dict], controls: list[dict],
                 strategy: str, idle: int, delay: int, candidates: int | None, instance_count: int,
                 params: dict[str, str], source: str) -> str:
    from edgernn import __version__

    lines = [f"# Triton model configuration written by edgernn {__version__} from {Path(source).name}.",
             "# Triton's Python backend runs edgernn's StreamBatcher (1/model.py); each sequence's state stays in the",
             "# model, keyed by CORRID.",
             *(f"# {line}" for line in timing_notes(inputs, outputs)),
             f"name: {quote(name)}", f"backend: {quote('python')}", f"max_batch_size: {max_batch_size}"]
    lines += tensor_lines("input", inputs) + tensor_lines("output", outputs)
    lines += batcher_lines(max_batch_size, strategy, idle, delay, candidates) + control_lines(controls) + ["}"]
    lines += instance_lines(instance_count, "cpu")
    for key, value in params.items():
        lines += ["parameters {", f"  key: {quote(key)}", f"  value: {{ string_value: {quote(value)} }}", "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- a local tritonserver

@dataclass(frozen=True)
class TritonServerFiles:
    """A ``tritonserver`` install from the nvidia-pytriton wheel."""

    #: the wheel's ``pytriton/tritonserver`` folder
    root: Path
    binary: Path
    #: the shared libraries it needs (``nvidia_pytriton.libs``)
    libraries: Path
    #: the backend folder (``backends``, with ``python/``)
    backends: Path

    def stub(self, python: str | None = None) -> Path:
        """The Python backend stub built for ``python`` (``"3.11"``; default: this Python)."""
        return self.root / "python_backend_stubs" / (python or "%d.%d" % sys.version_info[:2]) / \
            "triton_python_backend_stub"


def find_tritonserver(where: str | os.PathLike | None = None) -> TritonServerFiles:
    """The tritonserver of the nvidia-pytriton wheel: in ``where`` (the folder pip installed the
    wheel into, or its ``pytriton/tritonserver``), else ``$EDGERNN_TRITONSERVER``, else
    ``<venv>/tritonserver`` (setup.sh), else an installed ``pytriton`` package."""
    places: list[Path] = []
    for given in (where, os.environ.get(SERVER_ENV)):
        if given:
            places.append(Path(given))
    if not places:
        places.append(Path(sys.prefix) / "tritonserver")
        spec = importlib.util.find_spec("pytriton")
        if spec is not None and spec.submodule_search_locations:
            places.append(Path(next(iter(spec.submodule_search_locations))).parent)
    for place in places:
        for root in (place, place / "pytriton" / "tritonserver", place / "tritonserver"):
            binary = root / "bin" / "tritonserver"
            if binary.is_file():
                return TritonServerFiles(root, binary, root.parent.parent / "nvidia_pytriton.libs", root / "backends")
    tried = ", ".join(str(p) for p in places)
    raise TritonError(f"no tritonserver found in {tried}; install the nvidia-pytriton wheel there with `pip install "
                      f"--no-deps --target {sys.prefix}/tritonserver nvidia-pytriton` (setup.sh does), or set "
                      f"{SERVER_ENV} to the folder it is in")


def server_command(repo: str | os.PathLike, *, http_port: int = 8000, grpc_port: int = 8001,
                   address: str = "127.0.0.1", server: TritonServerFiles | str | os.PathLike | None = None,
                   args: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start ``tritonserver`` on ``repo``, on ``address``
    only, metrics off. Copies the Python backend stub of this Python into the backend folder
    (once); puts the wheel's libraries and this Python's ``libpython`` on ``LD_LIBRARY_PATH``, so
    that the stub runs the same Python as edgernn (else it takes the system's libpython3.X)."""
    files = server if isinstance(server, TritonServerFiles) else find_tritonserver(server)
    stub = files.stub()
    if not stub.is_file():
        raise TritonError(f"the nvidia-pytriton wheel has no Python backend stub for Python "
                          f"{sys.version_info[0]}.{sys.version_info[1]} ({stub})")
    placed = files.backends / "python" / stub.name
    try:
        if not placed.is_file() or placed.read_bytes() != stub.read_bytes():
            shutil.copy2(stub, placed)
    except OSError as e:
        raise TritonError(f"cannot copy the Python backend stub to {placed} ({e.strerror or e}); copy "
                          f"{stub} there by hand") from None
    env = dict(os.environ)
    paths = [str(files.libraries)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and (Path(libdir) / f"libpython{sysconfig.get_python_version()}.so.1.0").is_file():
        paths.append(libdir)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    argv = [str(files.binary), f"--model-repository={repo}", f"--backend-directory={files.backends}",
            f"--http-address={address}", f"--http-port={http_port}", f"--grpc-address={address}",
            f"--grpc-port={grpc_port}", "--allow-metrics=false", *args]
    return argv, env


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the process that started it dies (Linux), so that a
    server never outlives a test run that was killed."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class TritonProcess:
    """A ``tritonserver`` started on loopback with free ports, stopped by its process id.

    >>> with TritonProcess(REPO, args=["--model-control-mode=explicit", "--load-model=gru"]) as t:
    ...     client = tritonclient.grpc.InferenceServerClient(t.grpc_url)

    It runs in a process group of its own (the Python backend's stubs are its children), which
    :meth:`kill` and :meth:`stop` end; on Linux it is also killed when the process that started it
    dies. Its log goes to ``log`` (a file). The Python backend's shared
    memory regions get a prefix of their own (``shm_prefix``), so that those a killed server
    leaves in ``/dev/shm`` are removed after it.
    """

    def __init__(self, repo: str | os.PathLike, *, log: str | os.PathLike, args: Sequence[str] = (),
                 server: TritonServerFiles | str | os.PathLike | None = None, address: str = "127.0.0.1",
                 http_port: int | None = None, grpc_port: int | None = None, ready_timeout: float = 60.0) -> None:
        self.address = address
        self.http_port = http_port or free_port(address)
        self.grpc_port = grpc_port or free_port(address)
        self.log = Path(log)
        self.shm_prefix = f"edgernn_triton_{os.getpid()}_{uuid.uuid4().hex[:12]}_"
        args = [f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}", *args]
        argv, env = server_command(repo, http_port=self.http_port, grpc_port=self.grpc_port, address=address,
                                   server=server, args=args)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        self.pid: int = self.process.pid
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    def wait_ready(self, timeout: float) -> None:
        """Until ``/v2/health/ready`` answers 200 (all models given at start loaded)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self.process.returncode} before it was ready: "
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TritonError(f"tritonserver was not ready after {timeout:g} s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:] if line.strip())

    def kill(self) -> None:
        """SIGKILL the server and its stubs (its process group), reap it, and remove the shared
        memory it leaves."""
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)  # its own group: start_new_session
        except ProcessLookupError:
            pass

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["python_repository", "couples_streams", "find_tritonserver", "server_command", "TritonServerFiles",
           "TritonProcess", "free_port", "DYNAMIC_QUANTIZE_OPS", "MODEL_SCRIPT", "SERVER_ENV"]
