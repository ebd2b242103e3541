"""First impressions (issue 15): help text, progress and counts, file modes, .gitignore,
deterministic bytes, front.json metadata, select units, existing OUTDIRs."""

from __future__ import annotations

import json
import os
import pathlib
import re
import stat

import click
import pytest

from emomc_onnx.cli import main
from emomc_onnx.units import parse_size_bits
from tests.bad_inputs.harness import run_cli, run_subprocess
from tests.bad_inputs.tiny import tiny_data, tiny_model

TINY = ["--generations", "1", "--population", "4", "--eval-samples", "16", "--calib-samples", "8",
        "--workers", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny compress run under umask 027 into a new (nested) OUTDIR: (dir, outcome)."""
    d = tmp_path_factory.mktemp("fi")
    tiny_model(d / "m.onnx")
    tiny_data(d / "d.npz")
    old = os.umask(0o027)
    try:
        res = run_cli(["compress", "m.onnx", "--data", "d.npz", "-o", "a/b/out", *TINY], d)
    finally:
        os.umask(old)
    assert res.code == 0, res.stderr + res.stdout
    return d, res


def test_every_option_has_help_and_top_level_help_is_not_cut() -> None:
    missing = [f"{name} {p.name}" for name, cmd in main.commands.items() for p in cmd.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing
    res = run_cli(["--help"], pathlib.Path.cwd())
    assert res.code == 0
    commands = res.stdout.split("Commands:")[1]
    assert "…" not in commands and "..." not in commands, res.stdout
    for name in main.commands:
        assert name in res.stdout


def test_workers_help_says_what_the_default_is() -> None:
    import emomc_onnx.api as api
    import inspect as pyinspect

    help_text = next(p.help for p in main.commands["compress"].params if p.name == "workers")
    assert "all cores" not in help_text and "2" in help_text
    assert "min(os.cpu_count() or 1, 2)" in pyinspect.getsource(api.compress)  # what the help states


def test_quantize_bit_choices_are_the_quantizers() -> None:
    from emomc_onnx.passes.quantize import ACTIVATION_BITS, WEIGHT_BITS

    params = {p.name: p for p in main.commands["quantize"].params}
    assert [int(c) for c in params["wbits"].type.choices] == list(WEIGHT_BITS)
    assert [int(c) for c in params["abits"].type.choices] == list(ACTIVATION_BITS)


def test_progress_and_counts_add_up(run) -> None:
    _, res = run
    text = " ".join(res.stdout.split())
    assert "None" not in text and "gen 0/0" not in text and "final gen" not in text
    m = re.search(r"(\d+) candidates searched \((\d+) evaluated now, (\d+) read from results.sqlite\) in "
                  r"[\d.]+ s (\d+) front candidates measured on the test split \((\d+) now, (\d+) read\), "
                  r"(\d+) kept(?:; (\d+) searched candidates stopped after the racing samples)?", text)
    assert m, text[-800:]
    n, fresh, cached, nfull, full_now, full_read, kept, raced = (int(g or 0) for g in m.groups())
    assert n == fresh + cached and cached == 0 and nfull == full_now + full_read and 0 < kept <= nfull
    assert raced <= fresh
    front = json.loads((run[0] / "a/b/out/front.json").read_text())
    assert front["n_evaluations"] == n and len(front["members"]) == kept


def test_outdir_created_said_aloud_with_gitignore_and_umask_modes(run) -> None:
    d, res = run
    out = d / "a/b/out"
    assert "created a/b/out/" in " ".join(res.stdout.split())
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".onnx" for p in files)
    for p in files:
        if p.name.startswith("results.sqlite"):
            continue  # sqlite creates its own files (it honours the umask too)
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, (p, oct(p.stat().st_mode))
    assert not (out / ".emomc.lock").exists()


def test_git_status_ignores_the_default_outdir(tmp_path: pathlib.Path) -> None:
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git")
    from emomc_onnx.paths import prepare_outdir

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    out, created = prepare_outdir(tmp_path / "emomc_out")
    (out / "front.json").write_text("{}")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout
    assert created and status == ""


def test_front_json_records_what_the_figures_mean(run) -> None:
    front = json.loads((run[0] / "a/b/out/front.json").read_text())
    assert front["run"]["profile"] == "eyeriss"
    assert front["run"]["dataflow"] and front["run"]["coding"] and front["run"]["metric"] == "accuracy"
    from emomc_onnx.cost.profile import load_profile

    assert front["units"]["energy"].startswith(load_profile("eyeriss").energy_unit)
    assert front["units"]["size_bits"].startswith("bits")
    for m in front["members"]:  # the file size next to the coded size
        assert m["file_bytes"] == (run[0] / "a/b/out" / m["file"]).stat().st_size
    help_text = next(p.help for p in main.commands["select"].params if p.name == "max_energy")
    assert "units.energy" in help_text


@pytest.mark.parametrize("text,bits", [("200KiB", 200 * 8192), ("1.5MB", 1.5e6 * 8), ("4096B", 4096 * 8),
                                       ("81920", 81920), ("10 kb", 1e4), ("2Mib", 2 * 1024**2)])
def test_size_units(text: str, bits: float) -> None:
    assert parse_size_bits(text) == pytest.approx(bits)


def test_select_max_size_with_units_and_copy(run, tmp_path: pathlib.Path) -> None:
    d, _ = run
    out = d / "a/b/out"
    members = json.loads((out / "front.json").read_text())["members"]
    smallest = min(m["size_bits"] for m in members)
    kib = smallest / 8192
    ok = run_cli(["select", str(out), "--max-size", f"{kib * 1.001:.6f}KiB", "--prefer", "size",
                  "-o", str(tmp_path / "chosen.onnx")], d)
    assert ok.code == 0, ok.stderr
    chosen = next(m for m in members if m["size_bits"] == smallest)
    assert (tmp_path / "chosen.onnx").read_bytes() == (out / chosen["file"]).read_bytes()
    none = run_cli(["select", str(out), "--max-size", f"{kib * 0.99:.6f}KiB"], d)
    assert none.code == 1


def test_same_input_same_seed_same_bytes(tmp_path: pathlib.Path) -> None:
    tiny_model(tmp_path / "m.onnx")
    tiny_data(tmp_path / "d.npz")
    args = ["compress", "m.onnx", "--data", "d.npz", *TINY]
    here = run_cli([*args, "-o", "o0"], tmp_path)  # this process's string hashing
    assert here.code == 0, here.stderr
    other = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # another process, other hashing
    res = run_subprocess([*args, "-o", "o1"], tmp_path, env={"PYTHONHASHSEED": other})
    assert res.code == 0, res.stderr
    outs = [tmp_path / "o0", tmp_path / "o1"]
    a = sorted(p.name for p in (outs[0] / "front").iterdir())
    assert a == sorted(p.name for p in (outs[1] / "front").iterdir()) and a
    for name in a:
        assert (outs[0] / "front" / name).read_bytes() == (outs[1] / "front" / name).read_bytes(), name
    assert (outs[0] / "front.csv").read_bytes() == (outs[1] / "front.csv").read_bytes()


def test_existing_outdir_same_run_resumes_other_run_needs_overwrite(run) -> None:
    d, _ = run
    again = run_cli(["compress", "m.onnx", "--data", "d.npz", "-o", "a/b/out", *TINY], d)
    assert again.code == 0, again.stderr
    assert "created" not in again.stdout
    tiny_model(d / "other.onnx", seed=3)
    refused = run_cli(["compress", "other.onnx", "--data", "d.npz", "-o", "a/b/out", *TINY], d)
    assert refused.code == 2 and "--overwrite" in refused.stderr
    assert "model m.onnx -> other.onnx" in " ".join(refused.stderr.split())
    forced = run_cli(["compress", "other.onnx", "--data", "d.npz", "-o", "a/b/out", "--overwrite", *TINY], d)
    assert forced.code == 0, forced.stderr
    front = json.loads((d / "a/b/out/front.json").read_text())
    assert front["run"]["model"].endswith("other.onnx")


def test_pyproject_license_is_an_spdx_string() -> None:
    import tomllib

    from tests.bad_inputs.harness import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str)  # a table makes setuptools warn on every build


def test_readme_says_what_ci_runs() -> None:
    from tests.bad_inputs.harness import REPO

    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    m = re.search(r"\(`\.ci/run`([^)]*)\)", readme)
    assert m, "README should say what .ci/run does"
    claim = m.group(1)
    if "exactly" in claim:  # then it must run both README commands
        assert "compress --demo" in ci
    assert "pytest" in ci
