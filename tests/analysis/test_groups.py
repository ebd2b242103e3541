"""Channel-dependency groups on hand-written graphs whose groups are derived by hand."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from emomc_onnx import io
from emomc_onnx.analysis import HANDLERS, analyze


def _model(text: str, weights: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in weights.items():
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    onnx.checker.check_model(proto)
    return proto


def _groups(proto: onnx.ModelProto):
    analysis = analyze(io.load_proto(proto).model)
    by_source = {frozenset(g.sources): g for g in analysis.groups}
    return analysis, by_source


HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def test_residual_add_couples_both_sides() -> None:
    text = HEADER + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      a = Conv <pads=[1,1,1,1]> (x, w1)
      r = Relu(a)
      b = Conv <pads=[1,1,1,1]> (r, w2)
      s = Add(b, r)
      y = Conv (s, w3)
    }"""
    proto = _model(text, {"w1": (8, 3, 3, 3), "w2": (8, 8, 3, 3), "w3": (4, 8, 1, 1)})
    analysis, groups = _groups(proto)
    names = {lay.op_type + str(i): lay.name for i, lay in enumerate(analysis.layers)}
    g = groups[frozenset({names["Conv0"], names["Conv1"]})]
    assert g.prunable and g.channels == 8
    roles = {(m.node, m.role) for m in g.members}
    assert roles == {(names["Conv0"], "out"), (names["Conv1"], "out"), (names["Conv1"], "in"),
                     (names["Conv2"], "in")}
    out_group = groups[frozenset({names["Conv2"]})]
    assert not out_group.prunable and "graph output" in out_group.reason
    assert len(analysis.groups) == 2


def test_concat_offsets_and_separate_groups() -> None:
    text = HEADER + """
    g (float[1,3,8,8] x) => (float[1,5,8,8] y) {
      a = Conv (x, wa)
      b = Conv (x, wb)
      c = Concat <axis=1> (a, b)
      y = Conv (c, wc)
    }"""
    proto = _model(text, {"wa": (4, 3, 1, 1), "wb": (6, 3, 1, 1), "wc": (5, 10, 1, 1)})
    analysis, groups = _groups(proto)
    la, lb, lc = (lay.name for lay in analysis.layers)
    ga, gb = groups[frozenset({la})], groups[frozenset({lb})]
    assert ga.channels == 4 and gb.channels == 6 and ga.prunable and gb.prunable
    assert next(m for m in ga.members if m.role == "in").channels == 4
    assert next(m for m in gb.members if m.role == "in").channels == 6
    # the records keep Concat order: wc's input axis is [a-ids..., b-ids...]
    rec = next(r for r in analysis.graph.records if r.kind == "in" and r.node == lc)
    labels = analysis.graph.labels[rec.ids]
    assert set(labels[:4]) == set(ga.components) and set(labels[4:]) == set(gb.components)


def test_depthwise_and_squeeze_excite() -> None:
    text = HEADER + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      a = Conv (x, w1)
      d = Conv <group=8, pads=[1,1,1,1]> (a, wd)
      p = GlobalAveragePool(d)
      s1 = Conv (p, ws1)
      r1 = Relu(s1)
      s2 = Conv (r1, ws2)
      gate = HardSigmoid(s2)
      m = Mul(d, gate)
      y = Conv (m, w3)
    }"""
    proto = _model(text, {"w1": (8, 3, 1, 1), "wd": (8, 1, 3, 3), "ws1": (2, 8, 1, 1),
                          "ws2": (8, 2, 1, 1), "w3": (4, 8, 1, 1)})
    analysis, groups = _groups(proto)
    l1, ld, ls1, ls2, l3 = (lay.name for lay in analysis.layers)
    g = groups[frozenset({l1, ls2})]  # depthwise passes the ids; SE gate couples with them
    assert g.prunable and g.channels == 8
    roles = {(m.node, m.role) for m in g.members}
    assert {(ld, "out"), (ls1, "in"), (ls2, "out"), (l3, "in")} <= roles
    assert (ld, "in") not in roles  # depthwise: input channel c is output channel c, cut once
    assert any(r.kind == "group" and r.node == ld for r in analysis.graph.records)
    assert groups[frozenset({ls1})].prunable and groups[frozenset({ls1})].channels == 2


def test_flatten_into_gemm_owns_feature_blocks() -> None:
    text = HEADER + """
    g (float[1,3,4,4] x) => (float[1,10] y) {
      a = Conv <pads=[1,1,1,1]> (x, w1)
      r = Relu(a)
      f = Flatten <axis=1> (r)
      y = Gemm <transB=1> (f, wf, bf)
    }"""
    proto = _model(text, {"w1": (6, 3, 3, 3), "wf": (10, 96), "bf": (10,)})
    analysis, groups = _groups(proto)
    lconv, lgemm = (lay.name for lay in analysis.layers)
    g = groups[frozenset({lconv})]
    member = next(m for m in g.members if m.node == lgemm)
    assert member.role == "in" and member.channels == 96
    rec = next(r for r in analysis.graph.records if r.kind == "in" and r.node == lgemm)
    comp = analysis.graph.labels[rec.ids]
    # channel c owns features [16c, 16c+16)
    assert all(len(set(comp[16 * c:16 * c + 16])) == 1 for c in range(6))
    assert len(set(comp)) == 6


def test_unknown_op_and_channel_reduction_freeze_with_reason() -> None:
    text = '<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>\n' + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) <float[1,8,8,8] u> {
      a = Conv (x, w1)
      u = custom.Mystery(a)
      b = Conv (u, w2)
      m = ReduceMean <axes=[1], keepdims=1> (b)
      s = Sub(b, m)
      y = Conv (s, w3)
    }"""
    proto = _model(text, {"w1": (8, 3, 1, 1), "w2": (8, 8, 1, 1), "w3": (4, 8, 1, 1)})
    analysis, groups = _groups(proto)
    l1, l2, l3 = (lay.name for lay in analysis.layers)
    assert not groups[frozenset({l1})].prunable
    assert "Mystery" in groups[frozenset({l1})].reason
    assert not groups[frozenset({l2})].prunable
    assert "ReduceMean" in groups[frozenset({l2})].reason
    assert analysis.unknown_ops


def test_split_cuts_one_source_into_two_consumers() -> None:
    text = HEADER + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      a = Conv (x, w1)
      p, q = Split <axis=1, num_outputs=2> (a)
      c = Conv (q, w2)
      k = Concat <axis=1> (p, c)
      y = Conv (k, w3)
    }"""
    proto = onnx.parser.parse_model(text.replace('"" : 17', '"" : 18'))
    rng = np.random.default_rng(0)
    for name, shape in {"w1": (8, 3, 1, 1), "w2": (4, 4, 1, 1), "w3": (4, 8, 1, 1)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    analysis, groups = _groups(proto)
    l1, l2, l3 = (lay.name for lay in analysis.layers)
    g1 = groups[frozenset({l1})]
    assert g1.channels == 8 and g1.prunable
    assert {(m.node, m.role, m.channels) for m in g1.members if m.role == "in"} == {(l2, "in", 4), (l3, "in", 4)}
    assert groups[frozenset({l2})].channels == 4


def test_graph_input_joined_to_layer_freezes_it() -> None:
    text = HEADER + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      a = Conv (x, w1)
      s = Add(a, x)
      y = Conv (s, w2)
    }"""
    proto = _model(text, {"w1": (3, 3, 1, 1), "w2": (4, 3, 1, 1)})
    analysis, groups = _groups(proto)
    g = groups[frozenset({analysis.layers[0].name})]
    assert not g.prunable and g.reason.endswith("joins the channels with tensor x that is not pruned with them")


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Tanh",
                                "Softplus", "Abs", "Neg", "Erf", "Dropout", "Gelu", "Mish"])
def test_unary_ops_pass_channels_on(op: str) -> None:
    """Conv -> op -> Conv: the first conv's channels stay prunable through any unary op."""
    text = HEADER.replace('"" : 17', '"" : 20') + f"""
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {{
      a = Conv (x, w1)
      r = {op}(a)
      y = Conv (r, w2)
    }}"""
    proto = _model(text, {"w1": (8, 3, 1, 1), "w2": (4, 8, 1, 1)})
    analysis, groups = _groups(proto)
    first, second = (lay.name for lay in analysis.layers)
    g = groups[frozenset({first})]
    assert g.prunable and g.channels == 8, g.reason
    assert (second, "in") in {(m.node, m.role) for m in g.members}


def test_unknown_op_freezes_with_its_name() -> None:
    text = HEADER + """
    g (float[1,3,8,8] x) => (float[1,4,16,16] y) {
      a = Conv (x, w1)
      r = DepthToSpace <blocksize=2> (a)
      y = Conv (r, w2)
    }"""
    proto = _model(text, {"w1": (8, 3, 1, 1), "w2": (4, 2, 1, 1)})
    analysis, groups = _groups(proto)
    assert "DepthToSpace" not in HANDLERS
    g = groups[frozenset({analysis.layers[0].name})]
    assert not g.prunable and g.reason.startswith("unsupported op DepthToSpace")
