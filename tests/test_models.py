"""The fixture models themselves: valid, runnable, faithful to torch, counted right."""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import onnx
from google.protobuf.message import DecodeError
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models import BAD, FIXTURES, TEXT, TORCH, Fixture, build, torch_counts

GOOD = [n for n in FIXTURES if n not in BAD and n != "resnet50_like"]


def _run(fx: Fixture, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    assert fx.proto is not None
    sess = ort.InferenceSession(fx.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _ops(fx: Fixture) -> collections.Counter[str]:
    assert fx.proto is not None
    return collections.Counter(n.op_type for n in fx.proto.graph.node)


def _check_good(fx: Fixture) -> None:
    assert fx.path.is_file() and fx.proto is not None
    onnx.checker.check_model(fx.proto, full_check=True)
    assert onnx.load(str(fx.path)).graph == fx.proto.graph  # the file on disk is the proto
    assert [i.name for i in fx.proto.graph.input] == list(fx.input_shapes)
    assert [o.name for o in fx.proto.graph.output] == ["output"]
    assert next(o.version for o in fx.proto.opset_import if o.domain == "") == fx.opset
    feeds = fx.inputs(2, seed=3)
    (out,) = _run(fx, feeds)
    assert np.isfinite(out).all() and out.std() > 0
    if fx.module is not None:
        ref = fx.torch_outputs(feeds)
        assert out.shape == ref.shape
        atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=atol)
        assert not fx.module.training
        assert fx.torch_macs > 0 and fx.torch_params > 0


@pytest.mark.parametrize("name", GOOD)
def test_fixture_is_valid_runs_and_matches_torch(name: str) -> None:
    _check_good(build(name))


@pytest.mark.slow
def test_resnet50_like_matches_torch_and_published_size() -> None:
    fx = build("resnet50_like")
    _check_good(fx)
    # torchvision resnet50: 25,557,032 parameters including 26,560 BN channels (weight + bias);
    # folded, each BN channel leaves one conv bias. 4.09 GMACs at 224x224.
    assert fx.torch_params == 25_557_032 - 26_560
    assert round(fx.torch_macs / 1e9, 2) == 4.09
    assert build("resnet50_like", width=1.0) is fx


@pytest.mark.parametrize("name", BAD)
def test_bad_files_really_are_bad(name: str) -> None:
    fx = build(name)
    assert fx.proto is None and fx.path.is_file()
    expected = {"not_onnx": DecodeError, "truncated": DecodeError,
                "missing_external_data": onnx.checker.ValidationError}[name]
    with pytest.raises(expected):
        proto = onnx.load(str(fx.path))
        onnx.checker.check_model(proto, full_check=True)
        ort.InferenceSession(str(fx.path), providers=["CPUExecutionProvider"])


def test_missing_external_data_refers_to_the_deleted_file() -> None:
    fx = build("missing_external_data")
    proto = onnx.load(str(fx.path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert not (fx.path.parent / "model.onnx.data").exists()


def test_truncated_is_half_of_a_valid_model() -> None:
    good, bad = build("vgg").path.read_bytes(), build("truncated").path.read_bytes()
    assert good.startswith(bad) and len(bad) == len(good) // 2


def test_old_opset_is_opset_7() -> None:
    fx = build("old_opset")
    assert fx.opset == 7
    _check_good(fx)


def test_layernorm_and_gelu_export_forms() -> None:
    ops17, ops13 = _ops(build("transformer_ffn")), _ops(build("transformer_ffn_opset13"))
    assert ops17["LayerNormalization"] == 1 and ops17["Erf"] == 1 and ops17["MatMul"] == 3
    assert ops13["LayerNormalization"] == 0
    assert all(ops13[op] >= 1 for op in ("ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Erf"))
    weights = {i.name for i in build("transformer_ffn").proto.graph.initializer}
    matmuls = [n for n in build("transformer_ffn").proto.graph.node if n.op_type == "MatMul"]
    assert all(n.input[1] in weights for n in matmuls)  # constant weights


@pytest.mark.parametrize("name", [n for n in TORCH if n not in ("transformer_ffn",
                                                                  "resnet50_like")])
def test_torch_fixtures_keep_nontrivial_batchnorm(name: str) -> None:
    fx = build(name)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in fx.proto.graph.initializer}
    bns = [n for n in fx.proto.graph.node if n.op_type == "BatchNormalization"]
    assert bns
    for bn in bns:
        scale, bias, mean, var = (inits[x] for x in bn.input[1:5])
        assert np.abs(mean).min() > 0 and np.abs(var - 1).max() > 1e-3
        assert np.abs(scale - 1).max() > 1e-3 and np.abs(bias).max() > 1e-3


def test_module_ops_are_exported() -> None:
    mobilenet = _ops(build("mobilenet"))
    assert mobilenet["HardSwish"] >= 1 and mobilenet["HardSigmoid"] == 2
    groups = {a.i for n in build("mobilenet").proto.graph.node if n.op_type == "Conv"
              for a in n.attribute if a.name == "group"}
    assert max(groups) > 1  # depthwise
    assert _ops(build("yolo"))["Split"] == 1 and _ops(build("yolo"))["Concat"] == 1
    assert _ops(build("densenet"))["Concat"] == 1
    assert _ops(build("resnet"))["Add"] == 3
    assert _ops(build("vgg_opset13")) == _ops(build("vgg"))


def test_node_names() -> None:
    assert all(n.name.startswith("/") for n in build("resnet").proto.graph.node)
    for name in TEXT:
        assert all(n.name == "" for n in build(name).proto.graph.node), name


def test_text_fixture_quirks() -> None:
    assert _ops(build("constant_weights"))["Constant"] == 3
    assert not build("constant_weights").proto.graph.initializer
    unfolded = _ops(build("unfolded_bn"))
    assert unfolded["Identity"] == 2 and unfolded["BatchNormalization"] == 2
    mystery = [n for n in build("unknown_op").proto.graph.node if n.domain == "custom"]
    assert [n.op_type for n in mystery] == ["Mystery"]
    dims = build("dynamic_spatial").proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    assert build("dynamic_spatial").fixed_shapes == {"input": (1, 3, 8, 8)}
    assert build("opset11").opset == 11


def test_dynamic_spatial_runs_at_other_sizes() -> None:
    fx = build("dynamic_spatial")
    (out,) = _run(fx, {"input": np.ones((3, 3, 13, 7), np.float32)})
    assert out.shape == (3, 10)


def test_vgg_counts_by_hand() -> None:
    fx = build("vgg")
    convs = [(3, 16, 16), (16, 16, 16), (16, 32, 8), (32, 32, 8)]  # (cin, cout, output side)
    macs = sum(9 * ci * co * s * s for ci, co, s in convs) + 512 * 24 + 24 * 10
    params = sum(9 * ci * co + co for ci, co, _ in convs) + 512 * 24 + 24 + 24 * 10 + 10
    assert (fx.torch_macs, fx.torch_params) == (macs, params)


def test_transformer_counts_by_hand() -> None:
    fx = build("transformer_ffn")
    assert fx.torch_macs == 16 * (32 * 64 + 64 * 32 + 32 * 8)
    # LayerNorm not counted
    assert fx.torch_params == (32 * 64 + 64) + (64 * 32 + 32) + (32 * 8 + 8)


def test_torch_counts_bias_rules() -> None:
    from torch import nn

    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert torch_counts(dw, (1, 8, 5, 5)) == (9 * 8 * 25, 72)
    assert torch_counts(nn.Sequential(dw, nn.BatchNorm2d(8)), (1, 8, 5, 5)) == (9 * 8 * 25, 80)
    # BN not directly after the conv is not folded into it: no bias
    assert torch_counts(nn.Sequential(dw, nn.ReLU(), nn.BatchNorm2d(8)), (1, 8, 5, 5))[1] == 72
    strided = nn.Conv2d(4, 6, (3, 1), stride=2, bias=True)
    assert torch_counts(strided, (1, 4, 9, 9)) == (3 * 4 * 6 * 4 * 5, 3 * 4 * 6 + 6)
    assert torch_counts(nn.Linear(5, 7, bias=False), (1, 3, 5)) == (3 * 35, 35)


def test_build_is_cached_and_rejects_unknown_names(fixture_cache_dir: pathlib.Path) -> None:
    assert build("vgg") is build("vgg")
    assert build("vgg").path.parent == fixture_cache_dir
    with pytest.raises(KeyError, match="unknown fixture 'nope'"):
        build("nope")
    with pytest.raises(TypeError):
        build("vgg", width=0.5)


@pytest.mark.slow
def test_resnet50_width_option() -> None:
    half = build("resnet50_like", width=0.5)
    assert half.name == "resnet50_like_width0.5"
    assert build("resnet50_like").torch_params > 3 * half.torch_params


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(GOOD), n=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_inputs_shape_and_determinism(name: str, n: int, seed: int) -> None:
    fx = build(name)
    a, b = fx.inputs(n, seed), fx.inputs(n, seed)
    assert list(a) == list(fx.input_shapes)
    for key, arr in a.items():
        expected = (n, *fx.input_shapes[key][1:]) if fx.dynamic_batch else fx.input_shapes[key]
        assert arr.shape == expected and arr.dtype == np.float32
        assert np.array_equal(arr, b[key])
    if n > 1 or not fx.dynamic_batch:
        other = next(iter(fx.inputs(n, seed + 1).values()))
        assert not np.array_equal(next(iter(a.values())), other)
