"""The README.md of a folder written by ``edgernn pack`` (:mod:`edgernn.runtimes.pack`): what
each file is, how to build a minimal onnxruntime from the config, how to load the model on each
platform and its streaming contract."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from edgernn.modelfile import CONTRACT_SUFFIX, STATE_INIT_SUFFIX

if TYPE_CHECKING:
    from edgernn.runtimes.pack import PackReport



def build_command(config: str, type_reduction: bool) -> str:
    flags = ["./build.sh", "--config MinSizeRel", "--minimal_build", f"--include_ops_by_config {config}"]
    if type_reduction:
        flags.append("--enable_reduced_operator_type_support")
    flags += ["--build_shared_lib", "--parallel", "--skip_tests"]
    return " ".join(flags)


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def folder_readme(r: PackReport, name: str, stored: Mapping[str, np.ndarray]) -> str:
    c = r.contract
    ort_name, config_name = Path(r.ort_path).name, Path(r.config_path).name
    what = {
        ort_name: f"the model in ORT format (version {r.ort_format_version}), graph optimization level "
                  f"`{r.optimization}` applied before saving (Fixed style)",
        config_name: "the operators the model needs" + (" and their element types" if r.type_reduction else "")
                     + ": the input of a reduced-operator onnxruntime build",
        f"{name}.onnx": "the source ONNX model (full onnxruntime builds, Netron, `edgernn info`; the config "
                        "can be made again from it)",
        f"{name}{CONTRACT_SUFFIX}": "the streaming contract (inputs, outputs, state pairs), which the .ort "
                                    "file's metadata does not hold for this model",
        f"{name}{STATE_INIT_SUFFIX}": "stored start values of states (numpy .npz, one array per initializer name)",
    }
    lines = [f"# {name}: ORT format for onnxruntime mobile and minimal builds", "",
             f"Packed by `edgernn pack {Path(r.source).name} --target ort` with onnxruntime "
             f"{r.onnxruntime_version}.", "", "| file | bytes | what |", "|---|---:|---|"]
    for f, size in r.files.items():
        if f in what:
            lines.append(f"| `{f}` | {size:,} | {what[f]} |")
    lines.append("| `README.md` | | this file |")
    lines += ["", f"The source `{Path(r.source).name}` has {r.onnx_bytes:,} bytes; the `.ort` file "
              f"{r.ort_bytes:,} bytes."]
    if r.parity:
        errs = {**r.parity["max_abs_error"], **{f"state {k}": v for k, v in r.parity["state_errors"].items()}}
        worst = max(errs.values()) if errs else 0.0
        lines += ["", f"Checked at packing: {r.parity['frames']} random frames of {r.parity['streams']} streams in "
                  f"{r.parity['calls']} calls, state carried, give the same outputs and states from the `.ort` and "
                  f"the `.onnx` file (largest difference {worst:.3g})."]
    lines += ["", "## Operators", "", f"`{config_name}` (domain;opset;operators):", "", "```",
              *r.config_lines, "```", "",
              "onnxruntime's prebuilt reduced-size packages are built from a fixed operator list that may leave out "
              "the recurrent kernels (LSTM, GRU, RNN, DynamicQuantizeLSTM); a minimal build from this config has "
              "exactly the kernels this model needs and nothing else."]
    if any(d == "com.microsoft" for d, _, _ in r.ops):
        lines += ["", "The model uses onnxruntime contrib operators (`com.microsoft`): keep them in the build "
                  "(do not pass `--disable_contrib_ops`)."]
    lines += ["", "## Build a minimal onnxruntime", "",
              f"In a checkout of onnxruntime at release {r.onnxruntime_version} or newer (a build older than the "
              "converter may not read this ORT format version), with this folder's config:", "", "```sh",
              r.build_command.replace(config_name, f"/path/to/{config_name}"), "```", "",
              "Windows: `.\\build.bat` with the same flags. Add the platform flags of onnxruntime's build docs:",
              "Android `--android --android_sdk_path <sdk> --android_ndk_path <ndk> --android_abi arm64-v8a "
              "--android_api <level>`, iOS `--ios --use_xcode --apple_sysroot iphoneos --osx_arch arm64 "
              "--apple_deploy_target <version>`. Smaller still: `--disable_ml_ops --disable_exceptions "
              "--disable_rtti` (no exceptions: C/C++ API only, no Python bindings)."]
    if r.type_reduction:
        lines += ["", "The config lists element types per operator; `--enable_reduced_operator_type_support` "
                  "keeps only those kernel type variants."]
    else:
        lines += ["", "For a smaller binary, pack with type reduction (`required_operators_and_types.config`) and "
                  "add `--enable_reduced_operator_type_support`."]
    lines += ["", "To serve several models from one build, convert them together (onnxruntime's "
              "`python -m onnxruntime.tools.convert_onnx_models_to_ort --optimization_style Fixed FOLDER`) or "
              "concatenate the configs of models packed without type reduction (the build merges their lines).",
              "",
              "Execution providers other than the CPU one (NNAPI, CoreML, XNNPACK) need `--minimal_build extended` "
              "and the provider's flag; pack with `optimization=\"basic\"` so that the graph keeps standard "
              "operators they can take.", "",
              "## Why the Fixed optimization style", "",
              "onnxruntime's converter has two styles. *Fixed* applies the graph optimizations before saving: the "
              "file runs as is in every build, including a plain `--minimal_build`, and its config lists exactly "
              "the operators it runs. *Runtime* saves some optimizations to be replayed at load: it needs an "
              "extended minimal build and the session option `session.enable_saved_runtime_optimizations`, and its "
              "config must list the operators of both graphs, so the build is larger. Runtime pays off when a "
              "compiling provider (NNAPI, CoreML) takes an unknown part of the graph; LSTM and GRU run on the CPU "
              "provider, so Fixed is the portable choice. The converter leaves out the one machine-specific "
              "optimization (x86 NCHWc layouts), so the file runs on ARM and x86 alike.", "",
              "## Load it", "", "Python (any onnxruntime build):", "", "```python", "import onnxruntime as ort",
              f"session = ort.InferenceSession(\"{ort_name}\")", "# or, with the state carried for you:",
              "from edgernn.runtimes import StreamingSession"]
    if r.metadata_kept and not stored:
        lines.append(f"stream = StreamingSession(\"{ort_name}\")")
    elif r.metadata_kept:
        lines.append(f"stream = StreamingSession(\"{ort_name}\")  # start values from {name}{STATE_INIT_SUFFIX} "
                     "next to it")
    else:
        lines.append(f"stream = StreamingSession(\"{ort_name}\")  # the contract from {name}{CONTRACT_SUFFIX} next to it")
    lines += ["```", "", "C++:", "", "```cpp",
              f"Ort::Session session(env, ORT_TSTR(\"{ort_name}\"), Ort::SessionOptions{{}});", "```", "",
              "Android (Kotlin, `onnxruntime-android` or your build):", "", "```kotlin",
              f"val session = OrtEnvironment.getEnvironment().createSession(assets.open(\"{ort_name}\").readBytes())",
              "```", "", "iOS (Swift, `onnxruntime-objc` or your build):", "", "```swift",
              "let session = try ORTSession(env: try ORTEnv(loggingLevel: .warning), modelPath: path, "
              "sessionOptions: nil)", "```", "",
              f"## Streaming contract ({c.mode} mode)", "",
              "Each call takes the data inputs and every `state_in` tensor and returns the data outputs and every "
              "`state_out` tensor; feed each `state_out` back as the matching `state_in` on the next call of the "
              "same stream. A new stream starts from zeros" + (" or the stored start values" if stored else "")
              + ".", "", "| kind | name | shape | dtype |", "|---|---|---|---|"]
    for t in c.inputs:
        lines.append(f"| input | `{t.name}` | {_fmt_shape(t.shape)} | {t.dtype} |")
    for t in c.outputs:
        lines.append(f"| output | `{t.name}` | {_fmt_shape(t.shape)} | {t.dtype} |")
    for s in c.states:
        start = f"stored `{s.init['initializer']}`" if isinstance(s.init, dict) else "zeros"
        lines.append(f"| state | `{s.input}` -> `{s.output}` | {_fmt_shape(s.shape)} | {s.dtype}, starts at {start} |")
    if stored:
        lines += ["", f"onnxruntime drops initializers that no node reads, so the stored start values are in "
                  f"`{name}{STATE_INIT_SUFFIX}` (repeat each along the batch axis, where it has size 1, once per "
                  "stream): " + ", ".join(f"`{k}` {list(v.shape)}" for k, v in stored.items()) + ".",
                  "Keep the file next to the `.ort` file: `StreamingSession` reads it from there "
                  "(`edgernn.ModelFile(\"...ort\").stored_initializers()` gives the arrays)."]
    if r.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in r.notes)]
    return "\n".join(lines) + "\n"


__all__ = ["folder_readme", "build_command"]
