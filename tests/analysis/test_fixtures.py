"""Analysis of exported fixture models: exact groups (derived by hand), MACs/params vs torch, bad files."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from emomc_onnx import io
from emomc_onnx.analysis import analyze
from emomc_onnx.cli import main
from emomc_onnx.errors import ModelError
from tests.models import build

# group sources (substrings of exporter node names), channels, prunable
EXPECTED = {
    "vgg": [({"features.0"}, 16, True), ({"features.1"}, 16, True), ({"features.3"}, 32, True),
            ({"features.4"}, 32, True), ({"head.1"}, 24, True), ({"head.3"}, 10, False)],
    "resnet": [({"stem", "b1/c2"}, 16, True), ({"b1/c1"}, 16, True),
               ({"b2/short", "b2/c2", "b3/c2"}, 32, True), ({"b2/c1"}, 32, True), ({"b3/c1"}, 32, True),
               ({"/fc/"}, 10, False)],
    "mobilenet": [({"stem", "b1/project", "b2/project"}, 16, True), ({"b1/expand", "b1/se/fc2"}, 32, True),
                  ({"b1/se/fc1"}, 8, True), ({"b2/expand", "b2/se/fc2"}, 48, True), ({"b2/se/fc1"}, 12, True),
                  ({"head"}, 32, True), ({"/fc/"}, 10, False)],
    "densenet": [({"stem"}, 12, True), ({"/a/"}, 8, True), ({"b.0"}, 6, True), ({"b.1"}, 10, True),
                 ({"/c/"}, 4, True), ({"merge"}, 16, True), ({"/fc/"}, 10, False)],
    "yolo": [({"stem"}, 32, True), ({"/m/m.0"}, 16, True), ({"/m/m.1"}, 16, True), ({"/out/"}, 24, True),
             ({"det"}, 8, False)],
    "transformer_ffn": [({"fc1"}, 64, True), ({"fc2"}, 32, False), ({"head"}, 8, False)],
    "transformer_ffn_opset13": [({"fc1"}, 64, True), ({"fc2"}, 32, False), ({"head"}, 8, False)],
    "vgg_opset13": [({"features.0"}, 16, True), ({"features.1"}, 16, True), ({"features.3"}, 32, True),
                    ({"features.4"}, 32, True), ({"head.1"}, 24, True), ({"head.3"}, 10, False)],
}


def _match(sources: tuple[str, ...], frags: set[str]) -> bool:
    return len(sources) == len(frags) and all(any(f in s for s in sources) for f in frags)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_groups_are_exactly_the_hand_derived_ones(name: str) -> None:
    fx = build(name)
    analysis = analyze(io.load_proto(fx.proto, where=name).model)
    got = [(g.sources, g.channels, g.prunable) for g in analysis.groups]
    assert len(got) == len(EXPECTED[name])
    for frags, channels, prunable in EXPECTED[name]:
        match = [g for g in got if _match(g[0], frags)]
        assert len(match) == 1, (frags, got)
        assert match[0][1:] == (channels, prunable), (frags, match)
    # MACs and params equal the independent count from the torch module
    assert analysis.macs == fx.torch_macs
    assert analysis.params == fx.torch_params


def test_transformer_residual_freezes_with_reason() -> None:
    analysis = analyze(io.load_proto(build("transformer_ffn").proto).model)
    frozen = next(g for g in analysis.groups if any("fc2" in s for s in g.sources))
    assert "input" in frozen.reason


@pytest.mark.parametrize("name", ["unfolded_bn", "constant_weights", "erf_gelu", "opset11", "flatten_gemm",
                                  "reshape_gemm"])
def test_exporter_quirks_are_normalised(name: str) -> None:
    fx = build(name)
    model = io.load_proto(fx.proto, where=name).model
    ops = [n.op_type for n in model.graph]
    assert "Identity" not in ops and "Constant" not in ops
    analysis = analyze(model)
    assert analysis.layers and analysis.prunable_groups
    if name == "unfolded_bn":  # the BN after Conv is folded; the one after MaxPool stays
        assert ops.count("BatchNormalization") == 1


def test_old_opset_is_converted() -> None:
    loaded = io.load_model(build("old_opset").path)
    assert loaded.model.opset_imports[""] >= 11


def test_dynamic_spatial_needs_input_shape() -> None:
    fx = build("dynamic_spatial")
    with pytest.raises(ModelError, match="--input-shape"):
        analyze(io.load_model(fx.path).model)
    analysis = analyze(io.load_model(fx.path, {"input": (1, 3, 8, 8)}).model)
    assert analysis.layers[0].out_spatial == (8, 8)
    with pytest.raises(ModelError, match="not a model input"):
        io.load_model(fx.path, {"nope": (1, 3, 8, 8)})


@pytest.mark.parametrize("name,pattern", [
    ("not_onnx", "not a valid ONNX model"),
    ("truncated", "not a valid ONNX model"),
    ("missing_external_data", "external data file 'model.onnx.data'.*missing"),
])
def test_bad_files_give_one_line_errors(name: str, pattern: str) -> None:
    path = build(name).path
    with pytest.raises(ModelError, match=pattern) as info:
        io.load_model(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_inspect_cli_json_and_table() -> None:
    import json

    path = str(build("resnet").path)
    result = CliRunner().invoke(main, ["inspect", path, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["totals"]["prunable_groups"] == 5
    assert data["totals"]["macs"] == build("resnet").torch_macs
    table = CliRunner().invoke(main, ["inspect", path])
    assert table.exit_code == 0 and "Channel-dependency groups" in table.output


def test_file_on_disk_is_not_modified() -> None:
    path = build("unfolded_bn").path
    before = path.read_bytes()
    io.load_model(path)
    assert path.read_bytes() == before
