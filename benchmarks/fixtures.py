"""Build the test fixture models and list them (optionally copy the .onnx files to a folder).

    python benchmarks/fixtures.py                      # all fixtures except resnet50_like
    python benchmarks/fixtures.py vgg resnet50_like -o out/fixtures
"""

from __future__ import annotations

import collections
import pathlib
import shutil
import time

import _common  # noqa: F401  (sets sys.path)
import click
from rich.console import Console
from rich.table import Table

from tests.models import FIXTURES, build

__all__ = ["main"]


@click.command()
@click.argument("names", nargs=-1)
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=pathlib.Path), default=None,
              help="Copy each fixture's .onnx file into this folder.")
def main(names: tuple[str, ...], out: pathlib.Path | None) -> None:
    """Build NAMES (default: every fixture but resnet50_like) and print a summary table."""
    unknown = [n for n in names if n not in FIXTURES]
    if unknown:
        known = ", ".join(FIXTURES)
        raise click.BadParameter(f"unknown fixture(s) {', '.join(unknown)}; known: {known}")
    table = Table("fixture", "opset", "nodes", "top ops", "torch MACs", "torch params", "build s",
                  "file")
    for name in names or [n for n in FIXTURES if n != "resnet50_like"]:
        t = time.perf_counter()
        fx = build(name)
        dt = time.perf_counter() - t
        ops = collections.Counter(n.op_type for n in fx.proto.graph.node) if fx.proto else {}
        top = ", ".join(f"{op}x{c}" for op, c in ops.most_common(4)) if ops else "(bad file)"
        path = fx.path
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{name}.onnx"
            shutil.copyfile(fx.path, path)
        table.add_row(name, str(fx.opset), str(sum(ops.values())), top,
                      f"{fx.torch_macs:,}" if fx.torch_macs else "-",
                      f"{fx.torch_params:,}" if fx.torch_params else "-", f"{dt:.2f}", str(path))
    Console().print(table)


if __name__ == "__main__":
    main()
