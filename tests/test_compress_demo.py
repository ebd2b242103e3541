"""End to end on the embedded demo: a tiny search writes every output, and they re-evaluate exactly.

The figures reported are on the test split: re-running each emitted file on those samples
(recomputed from the split seed) gives the reported accuracy exactly, and on the search
split the search figure, and the two splits share no sample.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from emomc_onnx.api import demo_paths
from emomc_onnx.cli import main

ARGS = ["--generations", "1", "--population", "6", "--workers", "1", "--eval-samples", "300",
        "--calib-samples", "64", "--test-samples", "600"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress")
    result = CliRunner().invoke(main, ["compress", "--demo", "-o", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    assert "600 test samples the search never saw" in result.output.replace("\n", " ")
    return out


def test_outputs_exist_and_parse(run_dir) -> None:
    for name in ("front.json", "front.csv", "pareto.png", "convergence.png", "results.sqlite"):
        assert (run_dir / name).stat().st_size > 0, name
    front = json.loads((run_dir / "front.json").read_text())
    assert front["members"]
    errors = [(1 - m["metric_search"], m["energy"], m["size_bits"]) for m in front["members"]]
    for a in errors:  # non-dominated on the search figures it was chosen on
        assert not any(all(bi <= ai for ai, bi in zip(a, b)) and b != a for b in errors)


def test_reported_figure_is_the_test_split_and_search_is_other_samples(run_dir) -> None:
    from emomc_onnx.evaluate.data import load_data, make_splits

    front = json.loads((run_dir / "front.json").read_text())
    ds = load_data(demo_paths()[1])
    sp = make_splits(ds, 64, 300, 600, seed=0)
    assert front["splits"]["test"]["n"] == 600 and front["splits"]["search"]["n"] == 300
    assert front["splits"] == json.loads(json.dumps(sp.summary()))  # same indices (hashes)
    used = [set(sp.indices[k].tolist()) for k in ("calib", "search", "test")]
    assert not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])
    differ = 0
    for member in front["members"]:
        path = run_dir / member["file"]
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        acc = {}
        for name, split in (("test", sp.test), ("search", sp.search)):
            pred = sess.run(None, {"input": split.arrays["input"].astype(np.float32)})[0].argmax(1)
            acc[name] = float((pred == split.labels).mean())
        assert member["accuracy"] == member["metric_test"] == pytest.approx(acc["test"], abs=1e-12)
        assert member["metric_search"] == pytest.approx(acc["search"], abs=1e-12)
        lo, hi = member["accuracy_ci95"]
        assert lo <= member["accuracy"] <= hi and member["n_test"] == 600
        differ += acc["test"] != acc["search"]
    assert differ  # the two figures are distinguishable, so the check above can fail


def test_seed_changes_the_search_not_the_split(run_dir, tmp_path) -> None:
    base = json.loads((run_dir / "front.json").read_text())["splits"]
    other = tmp_path / "seed1"
    r = CliRunner().invoke(main, ["compress", "--demo", "-o", str(other), *ARGS, "--seed", "1",
                                  "--max-evaluations", "4"])
    assert r.exit_code == 0, r.output
    assert json.loads((other / "front.json").read_text())["splits"] == base
    moved = tmp_path / "split1"
    r = CliRunner().invoke(main, ["compress", "--demo", "-o", str(moved), *ARGS, "--split-seed", "1",
                                  "--max-evaluations", "4"])
    assert r.exit_code == 0, r.output
    split1 = json.loads((moved / "front.json").read_text())["splits"]
    for name in ("calib", "search", "test"):
        assert split1[name]["n"] == base[name]["n"]
        assert split1[name]["indices_sha256"] != base[name]["indices_sha256"], name


def test_select_picks_or_exits_1(run_dir, tmp_path) -> None:
    out = tmp_path / "chosen.onnx"
    ok = CliRunner().invoke(main, ["select", str(run_dir), "--min-accuracy", "0.5", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert out.exists()
    front = json.loads((run_dir / "front.json").read_text())
    fits = [m for m in front["members"] if m["accuracy"] >= 0.5]
    assert onnx.load(str(out)).SerializeToString() == onnx.load(
        str(run_dir / min(fits, key=lambda m: m["energy"])["file"])).SerializeToString()
    none = CliRunner().invoke(main, ["select", str(run_dir), "--min-accuracy", "100"])
    assert none.exit_code == 1
    pct = CliRunner().invoke(main, ["select", str(run_dir), "--min-accuracy", "50"])
    assert pct.exit_code == 0 and "read as 50%" in pct.output
    assert "test accuracy" in pct.output and "95% CI" in pct.output
    bad_pct = CliRunner().invoke(main, ["select", str(run_dir), "--min-accuracy", "150"])
    assert bad_pct.exit_code == 2 and "percentage" in bad_pct.output
    bad = CliRunner().invoke(main, ["select", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_resume_reevaluates_nothing(run_dir) -> None:
    result = CliRunner().invoke(main, ["compress", "--demo", "-o", str(run_dir), *ARGS])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the summary may wrap
    searched = re.search(r"(\d+) candidates searched \((\d+) evaluated now, (\d+) read from results\.sqlite\)", text)
    assert searched, text
    total, fresh, read = map(int, searched.groups())
    assert fresh == 0 and read == total > 0, text  # "10 evaluated now" used to pass as "0 evaluated"
    measured = re.search(r"front candidates measured on the test split \((\d+) now, (\d+) read\)", text)
    assert measured and int(measured.group(1)) == 0 and int(measured.group(2)) > 0, text


def test_prune_quantize_profile_commands_on_demo(tmp_path) -> None:
    r = CliRunner()
    pr = r.invoke(main, ["prune", "--demo", "--ratio", "0.25", "--recovery", "bias", "-o", str(tmp_path / "p.onnx")])
    assert pr.exit_code == 0, pr.output
    q = r.invoke(main, ["quantize", str(tmp_path / "p.onnx"), "--data", str(demo_paths()[1]), "--wbits", "6",
                        "--abits", "8", "-o", str(tmp_path / "q.onnx")])
    assert q.exit_code == 0, q.output
    from emomc_onnx.passes.qdq_bits import read_layer_bits

    bits = read_layer_bits(onnx.load(str(tmp_path / "q.onnx")))
    assert bits and all(b.wbits == 6 and b.abits == 8 for b in bits.values())
    for prof in ("eyeriss", "emomc", "edge_npu", "mcu"):
        p = r.invoke(main, ["profile", str(tmp_path / "q.onnx"), "--profile", prof, "--json"])
        assert p.exit_code == 0, p.output
        assert json.loads(p.output)["energy"] > 0
    bad = r.invoke(main, ["quantize", "--demo", "-o", str(tmp_path / "x.onnx"), "--data", str(tmp_path / "no.npz")])
    assert bad.exit_code == 2 and "no such data file" in bad.output


@pytest.fixture(scope="module")
def evaluator():
    from emomc_onnx.candidate import EvaluatorConfig

    model, data = demo_paths()
    return EvaluatorConfig(model=str(model), profile="eyeriss", data=str(data), eval_samples=200,
                           calib_samples=64)()


def test_any_genome_builds_a_valid_smaller_model(evaluator) -> None:
    """Random genomes (hypothesis) decode to plans whose models pass the checker, run, keep the
    output shape, have no more parameters than the original, and re-cost to what evaluate says."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from emomc_onnx.candidate.coster import stored_params
    from emomc_onnx.search.genome import GenomeCodec
    from emomc_onnx.search.space import make_space

    space = make_space(evaluator.analysis, evaluator.profile)
    codec = GenomeCodec(space)
    xl, xu = codec.bounds(2)
    base_params = stored_params(evaluator.original)
    x = evaluator.test.arrays["input"][:4]

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(0, 10**6), min_size=len(xu), max_size=len(xu)))
    def check(raw):
        genome = np.array([lo + r % (hi - lo + 1) for r, lo, hi in zip(raw, xl, xu)])
        plan = codec.decode(genome, 2)
        proto = evaluator.build(plan)
        onnx.checker.check_model(proto, full_check=True)
        out = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
        assert out.shape == (4, 10)
        assert stored_params(proto) <= base_params
        ev = evaluator.evaluate(plan, "search")
        assert ev.energy == pytest.approx(evaluator.cost(proto, plan).energy)

    check()


def test_plans_on_one_architecture_share_calibration(evaluator) -> None:
    """A plan quantizing only the first layer, then one quantizing only the last, on the same
    pruned architecture: the second finds its ranges in the per-architecture cache (one
    calibration covers every layer) and both models run."""
    from emomc_onnx.search.space import CompressionPlan

    names = [layer.name for layer in evaluator.analysis.layers]
    first = CompressionPlan(keep={}, density={}, wbits={names[0]: 8}, abits={names[0]: 8})
    last = CompressionPlan(keep={}, density={}, wbits={names[-1]: 6}, abits={names[-1]: 8})
    evaluator.builder._ranges_cache.clear()
    x = evaluator.test.arrays["input"][:4]
    for plan in (first, last):
        proto = evaluator.build(plan)
        out = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
        assert out.shape == (4, 10)
    assert len(evaluator.builder._ranges_cache) == 1


def test_external_model_measured_like_a_candidate(evaluator) -> None:
    """evaluate_model (used for ONNX Runtime's quantizer as a peer) gives the unmodified model
    exactly the baseline's metric and cost, and an 8-bit QDQ plan's built model the plan's own
    figures: the cost read from a QDQ graph agrees with the cost predicted from the plan."""
    from emomc_onnx.search.space import CompressionPlan

    base = evaluator.baseline()
    ext = evaluator.evaluate_model(evaluator.original, "test")
    assert ext.metric == base.metric
    assert ext.energy == pytest.approx(base.energy, rel=1e-9)
    assert ext.size_bits == pytest.approx(base.size_bits, rel=1e-9)
    names = [layer.name for layer in evaluator.analysis.layers]
    plan = CompressionPlan(keep={}, density={}, wbits={n: 8 for n in names}, abits={n: 8 for n in names})
    ours = evaluator.evaluate(plan, "search")
    ext = evaluator.evaluate_model(evaluator.build(plan), "search")
    assert ext.metric == ours.metric
    assert ext.energy == pytest.approx(ours.energy, rel=1e-6)
    assert ext.size_bits == pytest.approx(ours.size_bits, rel=1e-6)


def test_sparse_refit_keeps_density_and_recovers_accuracy(evaluator) -> None:
    """At 35% weight density on every layer, the refit keeps exactly the same weight densities
    as plain magnitude sparsity and recovers most of the accuracy plain sparsity loses."""
    import dataclasses

    from emomc_onnx.passes.sparsity import weight_density
    from emomc_onnx.search.space import CompressionPlan

    plain_ev = dataclasses.replace(evaluator.config, sparse_refit=False)()
    names = [layer.name for layer in evaluator.analysis.layers]
    plan = CompressionPlan(keep={}, density={n: 0.35 for n in names}, wbits={}, abits={})
    refit, plain = evaluator.build(plan), plain_ev.build(plan)
    assert weight_density(refit) == weight_density(plain)
    base = evaluator.baseline().metric
    acc_refit = evaluator.evaluate(plan, "test").metric
    acc_plain = plain_ev.evaluate(plan, "test").metric
    assert acc_refit > acc_plain
    assert base - acc_refit < 0.5 * (base - acc_plain)


def test_cached_layers_build_the_same_model(evaluator) -> None:
    """A child mixing two parents' pruning genes (as crossover does) finds some of its
    rewritten layers (recovered, sparsified, re-fitted) in the per-layer cache; it must come
    out exactly as when built from scratch: same initializers, same outputs."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from emomc_onnx.search.genome import GenomeCodec
    from emomc_onnx.search.space import make_space

    codec = GenomeCodec(make_space(evaluator.analysis, evaluator.profile))
    xl, xu = codec.bounds(1)
    n = len(xu)
    x = evaluator.test.arrays["input"][:16]

    def inits(proto):
        return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(0, 10**6), min_size=3 * n, max_size=3 * n))
    def check(raw):
        a, b, pick = (np.array([lo + r % (hi - lo + 1) for r, lo, hi in zip(raw[i * n:(i + 1) * n], xl, xu)])
                      for i in range(3))
        child = codec.decode(np.where(pick % 2 == 0, a, b), 1)
        for cache in (evaluator.builder._arch_cache, evaluator.builder._layer_cache):
            cache.clear()
        fresh = evaluator.build(child)
        for cache in (evaluator.builder._arch_cache, evaluator.builder._layer_cache):
            cache.clear()
        evaluator.build(codec.decode(a, 1))
        evaluator.build(codec.decode(b, 1))
        hits = evaluator.builder._layer_cache.hits
        cached = evaluator.build(child)

        def keys(plan):
            dens = {k: v for k, v in plan.density.items() if v < 1.0}
            return {k for k in evaluator.builder._layer_keys(evaluator.builder.keep_mask(plan), dens).values() if k is not None}

        shared = keys(child) & (keys(codec.decode(a, 1)) | keys(codec.decode(b, 1)))
        parent = child in (codec.decode(a, 1), codec.decode(b, 1))  # then the whole model is cached
        assert evaluator.builder._layer_cache.hits - hits == (0 if parent else len(shared))
        fi, ci = inits(fresh), inits(cached)
        assert fi.keys() == ci.keys()
        for k in fi:
            np.testing.assert_array_equal(fi[k], ci[k], err_msg=k)
        run = [ort.InferenceSession(p.SerializeToString()).run(None, {"input": x})[0] for p in (fresh, cached)]
        np.testing.assert_array_equal(*run)

    check()
