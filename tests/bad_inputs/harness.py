"""Running the CLI on a bad input and checking it failed the way a user should see it fail."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import subprocess
import sys

from click.testing import CliRunner

from emomc_onnx.cli import main

__all__ = ["Outcome", "REPO", "run_cli", "run_subprocess", "snapshot", "assert_clean_error"]

REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Outcome:
    """What one CLI run did."""

    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


def snapshot(root: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (directories as 'dir')."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink() or p.is_dir():
            out[rel] = "dir" if p.is_dir() and not p.is_symlink() else f"link:{os.readlink(p)}"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(args: list[str], cwd: pathlib.Path) -> Outcome:
    """The CLI in this process (fast); uncaught exceptions are kept, not re-raised."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        res = CliRunner().invoke(main, args, catch_exceptions=True)
    finally:
        os.chdir(old)
    exc = res.exception if not isinstance(res.exception, SystemExit) else None
    return Outcome(res.exit_code, res.stdout, res.stderr, exc)


def run_subprocess(args: list[str], cwd: pathlib.Path, timeout: float = 240, **kw) -> Outcome:
    """The CLI as a user runs it (a fresh interpreter, real stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(kw.pop("env", {}))
    res = subprocess.run([sys.executable, "-m", "emomc_onnx.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout, **kw)
    return Outcome(res.returncode, res.stdout, res.stderr)


def assert_clean_error(out: Outcome, *, contains: str | None = None) -> str:
    """Exit 2, exactly one non-empty stderr line starting ``error:``, no traceback; the line."""
    assert out.exception is None, f"uncaught {type(out.exception).__name__}: {out.exception}"
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.code == 2, f"exit {out.code}; stderr: {out.stderr!r}; stdout tail: {out.stdout[-300:]!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]
