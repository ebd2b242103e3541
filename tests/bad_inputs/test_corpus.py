"""The bad-input corpus (issue 15): every case is refused with one ``error:`` line and exit 2.

Each case builds its small files in a fresh directory (a tiny CNN, its data, a finished
compress output to tamper with), runs the CLI and checks: exit code 2, exactly one
``error:`` line on stderr, no traceback, every file that existed before unchanged, and no
new file left behind (no temporary file, no half-made output directory).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sqlite3
from collections.abc import Callable

import numpy as np
import pytest
import yaml

from emomc_onnx.cost.profile import load_profile
from tests.bad_inputs.harness import assert_clean_error, run_cli, snapshot
from tests.bad_inputs.tiny import N_CLASSES, tiny_data, tiny_model

TINY = ["--generations", "1", "--population", "4", "--eval-samples", "16", "--calib-samples", "8",
        "--workers", "1"]

Builder = Callable[[pathlib.Path, pathlib.Path], tuple[list[str], str]]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return deco


def _md(d: pathlib.Path) -> tuple[str, str]:
    tiny_model(d / "m.onnx")
    tiny_data(d / "d.npz")
    return "m.onnx", "d.npz"


def _front(d: pathlib.Path, done: pathlib.Path) -> pathlib.Path:
    """A copy of a finished compress output directory."""
    out = d / "out"
    shutil.copytree(done, out)
    return out


def _edit_front(out: pathlib.Path, edit: Callable[[dict], None]) -> None:
    path = out / "front.json"
    data = json.loads(path.read_text())
    edit(data["members"][0])
    path.write_text(json.dumps(data))


# ---- -o paths --------------------------------------------------------------------------------
@case("prune -o under a regular file")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--ratio", "0.5", "-o", f"{m}/x.onnx"], "is a file, not a directory"


@case("prune -o an existing directory")
def _(d, done):
    m, _ = _md(d)
    (d / "dir").mkdir()
    return ["prune", m, "--ratio", "0.5", "-o", "dir"], "is a directory"


@case("prune -o ''")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--ratio", "0.5", "-o", ""], "give an output file path"


@case("prune -o /proc/x (unwritable)")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--ratio", "0.5", "-o", "/proc/x.onnx"], "/proc/x.onnx: cannot write"


@case("quantize -o into a missing folder")
def _(d, done):
    m, data = _md(d)
    return ["quantize", m, "--data", data, "-o", "nonexistdir/q.onnx"], "does not exist"


@case("compress -o an existing file")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", data, *TINY], "is a file"


@case("compress -o ''")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "", *TINY], "give an output directory"


@case("compress -o under a regular file")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", f"{m}/out", *TINY], "is a file, not a directory"


@case("compress -o /proc/x (unwritable)")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "/proc/emomc_x", *TINY], "cannot create the directory"


@case("select -o an existing directory")
def _(d, done):
    out = _front(d, done)
    return ["select", str(out), "-o", str(out)], "is a directory"


@case("select -o into a missing folder")
def _(d, done):
    out = _front(d, done)
    return ["select", str(out), "-o", "missing/m.onnx"], "does not exist"


@case("select ''")
def _(d, done):
    return ["select", ""], "give the output directory"


# ---- sizes and counts ------------------------------------------------------------------------
@case("inspect --input-shape with a trillion elements")
def _(d, done):
    tiny_model(d / "dyn.onnx", dynamic=True)
    return ["inspect", "dyn.onnx", "--input-shape", "input:1,3,999999,999999"], "elements, more than"


@case("profile --input-shape with a trillion elements")
def _(d, done):
    tiny_model(d / "dyn.onnx", dynamic=True)
    return ["profile", "dyn.onnx", "--input-shape", "input:1,3,999999,999999"], "elements, more than"


@case("compress with a 1-sample npz")
def _(d, done):
    m, _ = _md(d)
    tiny_data(d / "one.npz", n=1)
    return ["compress", m, "--data", "one.npz", "-o", "out", *TINY], "at least 3 needed"


@case("compress with a 0-sample npz")
def _(d, done):
    m, _ = _md(d)
    tiny_data(d / "zero.npz", n=0)
    return ["compress", m, "--data", "zero.npz", "-o", "out", *TINY], "holds 0 samples"


@case("quantize with a 0-sample npz")
def _(d, done):
    m, _ = _md(d)
    tiny_data(d / "zero.npz", n=0)
    return ["quantize", m, "--data", "zero.npz", "-o", "q.onnx"], "at least 1 is needed"


@case("prune --recovery lsq with a 0-sample npz")
def _(d, done):
    m, _ = _md(d)
    tiny_data(d / "zero.npz", n=0)
    return ["prune", m, "--ratio", "0.5", "--recovery", "lsq", "--data", "zero.npz", "-o", "p.onnx"], \
        "holds 0 samples"


@case("compress --calib-samples 0")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--calib-samples", "0"], "x>=1"


@case("quantize --calib-samples 0")
def _(d, done):
    m, data = _md(d)
    return ["quantize", m, "--data", data, "--calib-samples", "0", "-o", "q.onnx"], "--calib-samples"


@case("prune --calib-samples 0")
def _(d, done):
    m, data = _md(d)
    return ["prune", m, "--ratio", "0.5", "--recovery", "bias", "--data", data, "--calib-samples", "0",
            "-o", "p.onnx"], "--calib-samples"


@case("compress --eval-samples 0")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--eval-samples", "0"], "--eval-samples"


@case("compress --seed -1")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--seed", "-1"], "--seed"


@case("compress --workers 0")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--workers", "0"], "--workers"


@case("prune --multiple 0")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--ratio", "0.5", "--multiple", "0", "-o", "p.onnx"], "--multiple"


@case("prune --multiple -8")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--ratio", "0.5", "--multiple", "-8", "-o", "p.onnx"], "--multiple"


@case("prune --ratio nan")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--ratio", "nan", "-o", "p.onnx"], "not a finite number"


@case("prune --sparsity 1.5")
def _(d, done):
    m, _ = _md(d)
    return ["prune", m, "--sparsity", "1.5", "-o", "p.onnx"], "--sparsity"


@case("quantize --wbits 12 (not a supported width)")
def _(d, done):
    m, data = _md(d)
    return ["quantize", m, "--data", data, "--wbits", "12", "-o", "q.onnx"], "'12' is not one of"


@case("quantize --abits 3")
def _(d, done):
    m, data = _md(d)
    return ["quantize", m, "--data", data, "--abits", "3", "-o", "q.onnx"], "'3' is not one of"


@case("compress --max-accuracy-drop nan")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--max-accuracy-drop", "nan"], "finite"


@case("compress --max-accuracy-drop -1")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--max-accuracy-drop", "-1"], ">= 0"


@case("compress --time-budget inf")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--time-budget", "inf"], "finite"


@case("sensitivity -o an existing file")
def _(d, done):
    m, data = _md(d)
    return ["sensitivity", m, "--data", data, "-o", data, "--eval-samples", "16"], "is a file"


@case("sensitivity --calib-samples 0")
def _(d, done):
    m, data = _md(d)
    return ["sensitivity", m, "--data", data, "-o", "out", "--calib-samples", "0"], "--calib-samples"


# ---- user metric -----------------------------------------------------------------------------
def _metric(d: pathlib.Path, body: str) -> str:
    (d / "mymetric.py").write_text("import sys\n\ndef fn(outputs, reference, labels):\n" + body)
    return "mymetric.py:fn"


@case("--metric function that raises")
def _(d, done):
    m, data = _md(d)
    spec = _metric(d, "    raise ValueError('my metric is broken')\n")
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--metric", spec], \
        "raised ValueError: my metric is broken"


@case("--metric function that calls sys.exit(3)")
def _(d, done):
    m, data = _md(d)
    spec = _metric(d, "    sys.exit(3)\n")
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--metric", spec], "called sys.exit(3)"


@case("--metric function that returns a string")
def _(d, done):
    m, data = _md(d)
    spec = _metric(d, "    return 'high'\n")
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--metric", spec], "did not return a number"


@case("--metric function that raises only on compressed candidates")
def _(d, done):
    m, data = _md(d)
    spec = _metric(d, "    import numpy as np\n"
                      "    if not np.array_equal(outputs[0], reference[0]):\n"
                      "        raise KeyError('candidate')\n"
                      "    return 1.0\n")
    # a candidate identical to the original may pass first: the store then keeps its result
    ALLOW_NEW.update({"out", "out/.gitignore", "out/results.sqlite"})
    return ["compress", m, "--data", data, "-o", "out", *TINY, "--metric", spec], "raised KeyError"


# ---- data ------------------------------------------------------------------------------------
def _with_input(d: pathlib.Path, name: str, change: Callable[[np.ndarray], np.ndarray]) -> str:
    x = np.random.default_rng(1).standard_normal((48, 3, 6, 6)).astype(np.float32)
    tiny_data(d / name, input=change(x))
    return name


@case("compress with NaN in the data")
def _(d, done):
    m, _ = _md(d)
    data = _with_input(d, "nan.npz", lambda x: np.where(np.arange(x.size).reshape(x.shape) == 500,
                                                        np.nan, x).astype(np.float32))
    return ["compress", m, "--data", data, "-o", "out", *TINY], "NaN/Inf"


@case("quantize with Inf in the data")
def _(d, done):
    m, _ = _md(d)
    data = _with_input(d, "inf.npz", lambda x: np.where(x > 2.5, np.inf, x).astype(np.float32))
    return ["quantize", m, "--data", data, "-o", "q.onnx"], "NaN/Inf"


@case("prune --recovery lsq with NaN in the data")
def _(d, done):
    m, _ = _md(d)
    data = _with_input(d, "nan.npz", lambda x: np.where(x > 2.5, np.nan, x).astype(np.float32))
    return ["prune", m, "--ratio", "0.5", "--recovery", "lsq", "--data", data, "-o", "p.onnx"], "NaN/Inf"


@case("compress with complex data")
def _(d, done):
    m, _ = _md(d)
    data = _with_input(d, "cplx.npz", lambda x: x + 1j * x)
    return ["compress", m, "--data", data, "-o", "out", *TINY], "is complex"


@case("compress with labels out of range (50 of 4 classes)")
def _(d, done):
    m, _ = _md(d)
    labels = np.random.default_rng(0).integers(0, N_CLASSES, 48)
    labels[7] = 50
    tiny_data(d / "lab.npz", labels=labels)
    return ["compress", m, "--data", "lab.npz", "-o", "out", *TINY], "outside the model's 4 classes"


@case("compress with label -1")
def _(d, done):
    m, _ = _md(d)
    labels = np.random.default_rng(0).integers(0, N_CLASSES, 48)
    labels[3] = -1
    tiny_data(d / "lab.npz", labels=labels)
    return ["compress", m, "--data", "lab.npz", "-o", "out", *TINY], "class indices start at 0"


# ---- profiles --------------------------------------------------------------------------------
def _nan_profile(d: pathlib.Path) -> str:
    raw = yaml.safe_load(pathlib.Path(load_profile("eyeriss").path).read_text())
    raw["mac"]["energy_pj"] = float("nan")
    (d / "nanprof.yaml").write_text(yaml.safe_dump(raw))
    assert ".nan" in (d / "nanprof.yaml").read_text()
    return "nanprof.yaml"


@case("profile with a .nan energy")
def _(d, done):
    m, _ = _md(d)
    return ["profile", m, "--profile", _nan_profile(d)], "mac.energy_pj"


@case("compress with a .nan energy profile")
def _(d, done):
    m, data = _md(d)
    return ["compress", m, "--data", data, "--profile", _nan_profile(d), "-o", "out", *TINY], "finite"


# ---- opset -----------------------------------------------------------------------------------
@case("quantize a model of an opset newer than ONNX Runtime supports")
def _(d, done):
    tiny_model(d / "m30.onnx", opset=30)
    tiny_data(d / "d.npz")
    return ["quantize", "m30.onnx", "--data", "d.npz", "-o", "q.onnx"], "newer than ONNX Runtime"


@case("compress a model of an opset newer than ONNX Runtime supports")
def _(d, done):
    tiny_model(d / "m30.onnx", opset=30)
    tiny_data(d / "d.npz")
    return ["compress", "m30.onnx", "--data", "d.npz", "-o", "out", *TINY], "newer than ONNX Runtime"


# ---- select ----------------------------------------------------------------------------------
@case("select: member file missing")
def _(d, done):
    out = _front(d, done)
    for f in (out / "front").iterdir():
        f.unlink()
    return ["select", str(out), "-o", "chosen.onnx"], "missing"


@case("select: member file missing, no -o")
def _(d, done):
    out = _front(d, done)
    for f in (out / "front").iterdir():
        f.unlink()
    return ["select", str(out)], "missing"


@case("select: member path is a directory")
def _(d, done):
    out = _front(d, done)
    for f in (out / "front").iterdir():
        f.unlink()
        f.mkdir()
    return ["select", str(out), "-o", "chosen.onnx"], "not a regular file"


@case("select: energy stored as a string")
def _(d, done):
    out = _front(d, done)
    _edit_front(out, lambda m: m.update(energy="12"))
    return ["select", str(out), "--max-energy", "1e12"], "energy is str"


@case("select: member path ../../etc/passwd (security)")
def _(d, done):
    out = _front(d, done)
    _edit_front(out, lambda m: m.update(file="../../../../../../../etc/passwd"))
    return ["select", str(out), "-o", "stolen.onnx"], "refusing it"


@case("select: absolute member path (security)")
def _(d, done):
    out = _front(d, done)
    _edit_front(out, lambda m: m.update(file="/etc/passwd"))
    return ["select", str(out), "-o", "stolen.onnx"], "refusing it"


@case("select: member is a symlink out of front/ (security)")
def _(d, done):
    out = _front(d, done)
    f = next((out / "front").iterdir())
    f.unlink()
    f.symlink_to("/etc/passwd")
    return ["select", str(out), "-o", "stolen.onnx"], "refusing it"


@case("select --max-size with an unknown unit")
def _(d, done):
    out = _front(d, done)
    return ["select", str(out), "--max-size", "200XB"], "unknown unit"


@case("select --max-energy nan")
def _(d, done):
    out = _front(d, done)
    return ["select", str(out), "--max-energy", "nan"], "finite"


# ---- the result store and the output directory -----------------------------------------------
@case("compress into a results.sqlite that is not a database")
def _(d, done):
    m, data = _md(d)
    (d / "out").mkdir()
    (d / "out" / "results.sqlite").write_bytes(b"this is not sqlite" * 100)
    return ["compress", m, "--data", data, "-o", "out", *TINY], "--no-resume"


@case("compress into a malformed results.sqlite")
def _(d, done):
    m, data = _md(d)
    out = _front(d, done)
    db = out / "results.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    raw = bytearray(db.read_bytes())
    page = 4096
    for i in range(page, len(raw), page):  # every page after the first: header kept, b-trees broken
        raw[i:i + 64] = b"\xff" * 64
    db.write_bytes(bytes(raw))
    (out / "front.json").unlink()
    return ["compress", m, "--data", data, "-o", "out", *TINY], "is damaged"


@case("compress into an OUTDIR another run holds (lock)")
def _(d, done):
    m, data = _md(d)
    out = _front(d, done)
    from emomc_onnx.paths import OutdirLock

    lock = OutdirLock(out)
    lock.acquire()
    HELD.append(lock)
    return ["compress", m, "--data", data, "-o", "out", *TINY], f"in use by another emomc-onnx run (pid {os.getpid()})"


@case("compress a new model into an OUTDIR holding another front")
def _(d, done):
    tiny_model(d / "other.onnx", seed=5)
    tiny_data(d / "d.npz")
    _front(d, done)
    return ["compress", "other.onnx", "--data", "d.npz", "-o", "out", *TINY], "--overwrite"


@case("compress with another profile into an OUTDIR holding a front")
def _(d, done):
    m, data = _md(d)
    _front(d, done)
    return ["compress", m, "--data", data, "--profile", "mcu", "-o", "out", *TINY], "profile eyeriss -> mcu"


HELD: list = []
ALLOW_NEW: set[str] = set()  # files a case may leave (a store holding evaluated candidates)


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> pathlib.Path:
    """A finished compress run of the tiny model (the same files _md writes)."""
    d = tmp_path_factory.mktemp("done")
    m, data = _md(d)
    out = run_cli(["compress", m, "--data", data, "-o", "out", *TINY], d)
    assert out.code == 0, out.stderr + out.stdout
    return d / "out"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clean_error(name: str, tmp_path: pathlib.Path, done: pathlib.Path) -> None:
    args, expect = CASES[name](tmp_path, done)
    allowed = set(ALLOW_NEW)
    ALLOW_NEW.clear()
    before = snapshot(tmp_path)
    try:
        outcome = run_cli(args, tmp_path)
        after = snapshot(tmp_path)
    finally:
        while HELD:
            HELD.pop().release()
    assert_clean_error(outcome, contains=expect)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"input files modified or removed: {changed}"
    new = sorted(set(after) - set(before) - allowed)
    assert not new, f"left behind: {new}"


def test_corpus_counts() -> None:
    """The corpus the issue asks for: each class of bad input is here (see the issue's list)."""
    assert len(CASES) >= 55
