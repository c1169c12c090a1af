"""The NCS2's own OpenVINO in the loop: exported models read, compiled and run by OpenVINO 2022.3.2.

The stick's users run OpenVINO 2022.3, the last release with the MYRIAD plugin (docs/targets.md);
a rule our own checks missed would reach them as an IR their toolchain refuses. 2022.3's wheels
exist for CPython 3.7-3.10 only, but the ``openvino==2022.3.2`` cp310 wheel carries the whole C++
runtime (``libopenvino.so.2232``, the IR and ONNX frontends, the CPU plugin; MYRIAD is in no wheel).
So the check:

1. fetches that wheel once with pip (``pip download``, no install) into a cache folder
   (``$SLICENET_CACHE``, default ``~/.cache/slicenet``), and unpacks its libraries;
2. builds ``ov2022_reader.cpp`` with g++ against them, and runs it: each model is read (by 2022.3's
   IR frontend, or its ONNX frontend for the fallback ``engine.onnx``: what ``mo --input_model
   engine.onnx --compress_to_fp16`` starts from) and compiled for 2022.3's CPU plugin;
3. where a CPython 3.10 is at hand (``$SLICENET_PYTHON310``, ``python3.10``, or pyenv's), installs
   the wheel and numpy for it into the cache and classifies the bundle's sample images with 2022.3's
   Python API (``ov2022_infer.py``), to compare with the torch engine's classes.

What could not run is reported as "not checked", with the reason, never as passed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputError

RELEASE = "2022.3.2"
LIBRARY = "libopenvino.so.2232"
NUMPY_FOR_2022 = "numpy>=1.16.6,<1.25"  # the wheel's own requirement
HERE = Path(__file__).resolve().parent


class Unavailable(Exception):
    """The check cannot run here; the message says why and how to fix it."""


def cache_root() -> Path:
    return Path(os.environ.get("SLICENET_CACHE", Path.home() / ".cache" / "slicenet")) / f"openvino-{RELEASE}"


def _run(command: list[str], *, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{Path(command[0]).name} could not run ({exc})") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def wheel_file(root: Path) -> Path:
    """The openvino 2022.3.2 cp310 wheel, downloaded once."""
    found = sorted((root / "download").glob(f"openvino-{RELEASE}-*.whl"))
    if found:
        return found[-1]
    result = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.10", "--platform", "manylinux2014_x86_64", f"openvino=={RELEASE}",
                   "-d", str(root / "download")], timeout=900)
    found = sorted((root / "download").glob(f"openvino-{RELEASE}-*.whl"))
    if result.returncode != 0 or not found:
        raise Unavailable(f"could not fetch openvino=={RELEASE} (the cp310 wheel) with pip: "
                          f"{_last_line(result.stderr)}")
    return found[-1]


def libraries(root: Path) -> Path:
    """The folder of 2022.3.2's C++ runtime, its plugins and frontends, unpacked from the wheel."""
    libs = root / "wheel" / "openvino" / "libs"
    if (libs / LIBRARY).is_file():
        return libs
    staging = root / "wheel.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel_file(root)) as archive:
        archive.extractall(staging, [n for n in archive.namelist() if n.startswith("openvino/libs/")])
    shutil.rmtree(root / "wheel", ignore_errors=True)
    staging.rename(root / "wheel")
    return libs


def compiler() -> str:
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"no C++ compiler ({name}) to build the OpenVINO {RELEASE} reader: install g++ "
                          "(apt-get install g++) or set CXX")
    return path


def reader(root: Path) -> Path:
    """``ov2022_reader``, built once (again whenever its source is newer) against the wheel's runtime."""
    libs = libraries(root)
    binary = root / "ov2022_reader"
    source = HERE / "ov2022_reader.cpp"
    if binary.is_file() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    partial = root / "ov2022_reader.partial"
    result = _run([compiler(), "-std=c++14", "-O1", "-D_GLIBCXX_USE_CXX11_ABI=0", "-o", str(partial), str(source),
                   str(libs / LIBRARY), f"-Wl,-rpath,{libs}"], timeout=300)
    if result.returncode != 0:
        raise Unavailable(f"building the OpenVINO {RELEASE} reader failed: {_last_line(result.stderr)}")
    partial.rename(binary)
    return binary


def python310() -> str | None:
    """A CPython 3.10 interpreter, the newest that 2022.3's Python API runs on, or None."""
    candidates = [os.environ.get("SLICENET_PYTHON310", ""), shutil.which("python3.10") or ""]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.10*" / "bin" / "python3.10")))
    for candidate in filter(None, candidates):
        try:
            result = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                    text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0 and result.stdout.strip() == "(3, 10)":
            return candidate
    return None


def python_site(root: Path, python: str) -> Path:
    """2022.3.2's Python API and a numpy it accepts, installed for ``python`` into the cache."""
    site = root / "python3.10"
    if (site / "openvino" / "runtime").is_dir() and (site / "numpy").is_dir():
        return site
    partial = root / "python3.10.partial"
    shutil.rmtree(partial, ignore_errors=True)
    result = _run([python, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:", "--target",
                   str(partial), str(wheel_file(root)), NUMPY_FOR_2022], timeout=900)
    if result.returncode != 0:
        raise Unavailable(f"could not install openvino {RELEASE} for Python 3.10: {_last_line(result.stderr)}")
    shutil.rmtree(site, ignore_errors=True)
    partial.rename(site)
    return site


def reason(error: str) -> str:
    """The line of a 2022.3 error that says what failed ("Cannot create TopK layer ... from unsupported
    opset: opset11"), not the source location around it."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith("Check ") and "Converting input model" not in line]
    return (telling or lines or [""])[-1]


def describe(result: dict) -> str:
    """One line for the screen: what 2022.3 made of a bundle's models."""
    if result["status"] == "not checked":
        return f"OpenVINO {RELEASE}: not checked ({result['reason']})"
    models = result["models"]
    if result["status"] == "failed":
        bad = {name: row for name, row in models.items() if not row["compiled"]}
        return f"OpenVINO {RELEASE}: " + "; ".join(
            f"{name} {'does not compile' if row['read'] else 'cannot be read'}: {row['error']}"
            for name, row in bad.items())
    text = f"OpenVINO {RELEASE} (its own runtime) reads {' and '.join(models)} and compiles them for its CPU plugin"
    agreed = [f"{name} {row['samples_agree']}/{row['samples']}" for name, row in models.items() if "samples" in row]
    return text + (f"; sample classes agree with the torch engine: {', '.join(agreed)}" if agreed
                   else f"; inference {result['inference']}")


def check(models: list[Path], *, samples: np.ndarray | None = None, expected: list[int] | None = None,
          device: str = "CPU") -> dict:
    """Read and compile every model with OpenVINO 2022.3.2 and, where a Python 3.10 is available,
    classify ``samples`` with it. Returns what the manifest records::

        {"release": "2022.3.2", "status": "passed" | "failed" | "not checked", "reason": ...,
         "device": "CPU", "models": {name: {"read", "compiled", "error", "samples_agree", ...}}}
    """
    missing = [str(m) for m in models if not Path(m).is_file()]
    if missing:
        raise InputError(f"no such model file: {', '.join(missing)}")
    summary: dict = {"release": RELEASE, "device": device, "models": {}}
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    try:
        binary = reader(root)
    except Unavailable as exc:
        return {**summary, "status": "not checked", "reason": str(exc)}
    result = _run([str(binary), device, *[str(m) for m in models]], timeout=600)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if len(rows) != len(models):
        return {**summary, "status": "not checked",
                "reason": f"the OpenVINO {RELEASE} reader stopped: {_last_line(result.stderr or result.stdout)}"}
    for model, row in zip(models, rows, strict=True):
        summary["models"][Path(model).name] = {"read": row["read"], "compiled": row["compiled"],
                                               "error": reason(row["error"])}
    passed = all(row["compiled"] for row in rows)
    summary["status"] = "passed" if passed else "failed"
    summary["inference"] = "not run: a model did not compile"
    if passed:
        summary["inference"], classified = _inference(root, models, samples, expected, device)
        for name, row in classified.items():
            summary["models"][name].update(row)
    return summary


def _inference(root: Path, models: list[Path], samples: np.ndarray | None, expected: list[int] | None,
               device: str) -> tuple[str, dict[str, dict]]:
    """Each model's classes of ``samples`` by 2022.3's ``device`` plugin against ``expected``: (what
    happened, in words; {model name: {"samples", "samples_agree"}})."""
    if samples is None or expected is None:
        return "not run: no sample images given", {}
    python = python310()
    if python is None:
        return ("not run: no CPython 3.10 here for OpenVINO 2022.3's Python API (set SLICENET_PYTHON310 to "
                "one); the models were read and compiled by its C++ runtime"), {}
    try:
        site = python_site(root, python)
    except Unavailable as exc:
        return f"not run: {exc}", {}
    samples_file = root / f"samples-{os.getpid()}.npy"
    np.save(samples_file, samples)
    try:
        result = _run([python, str(HERE / "ov2022_infer.py"), str(samples_file), device, *[str(m) for m in models]],
                      timeout=600, env={**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"})
    finally:
        samples_file.unlink(missing_ok=True)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"not run: OpenVINO {RELEASE}'s Python API failed: {_last_line(result.stderr)}", {}
    rows = {}
    for path, row in answer["models"].items():
        agree = sum(int(a == b) for a, b in zip(row["classes"], expected, strict=False))
        rows[Path(path).name] = {"samples": len(expected), "samples_agree": agree if row["compiled"] else 0,
                                 "inference_error": row["error"]}
    return f"ran with OpenVINO {answer['release']}'s Python API on CPython 3.10", rows
