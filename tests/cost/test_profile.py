"""Profiles: every shipped one loads; malformed ones give one-line errors naming the field."""

from __future__ import annotations

import pytest

from emomc_onnx.cost import list_profiles, load_profile, parse_profile
from emomc_onnx.errors import ProfileError

GOOD = """
name: t
energy_unit: pJ
pe_array: {rows: 2, cols: 2}
memory:
  dram: {kind: offchip, energy_pj: 100, word_bits: 16}
  rf: {kind: rf, energy_pj: 1, word_bits: 16, capacity_bytes: 32}
mac: {energy_pj: 1, scaling: product}
dataflows: [ws]
channel_multiple: 8
weight_bits: [4, 8]
activation_bits: [8]
baseline_weight_bits: 32
baseline_activation_bits: 32
codings: [dense]
"""


def test_shipped_profiles_listed() -> None:
    assert {"emomc", "eyeriss", "edge_npu", "mcu"} <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_every_shipped_profile_loads(name: str) -> None:
    p = load_profile(name)
    assert p.name == name
    assert p.dataflows and p.default_dataflow == p.dataflows[0]
    assert "auto" in p.codings
    assert p.channel_multiple >= 1 and len(p.sha256) == 64
    for dt in ("weights", "inputs", "outputs"):
        assert p.chain(dt)[0].kind == "offchip"


def test_load_by_path(tmp_path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(GOOD)
    p = load_profile(str(f))
    assert p.name == "t" and p.codings == ("dense", "auto")
    assert p.weight_bits == (4, 8)


def test_unknown_name() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("channel_multiple: 8\n", "", r"bad\.yaml: channel_multiple: missing required field"),
        ("rows: 2,", "rows: two,", r"bad\.yaml: pe_array\.rows: must be an integer"),
        ("energy_pj: 100,", "energy_pj: -5,", r"bad\.yaml: memory\.dram\.energy_pj: must be >= 0"),
        ("dataflows: [ws]", "dataflows: [ws, zigzag]", r"bad\.yaml: dataflows\[1\]: unknown value 'zigzag'"),
        ("codings: [dense]", "codings: [dense]\ncolour: red", r"bad\.yaml: colour: unknown key"),
        ("kind: rf,", "kind: rf, colour: 1,", r"bad\.yaml: memory\.rf\.colour: unknown key"),
        ("name: t", "name: [t", r"bad\.yaml: not valid YAML"),
        ("scaling: product", "scaling: cubic", r"bad\.yaml: mac\.scaling: unknown value 'cubic'"),
        ("weight_bits: [4, 8]", "weight_bits: [4, 0]", r"bad\.yaml: weight_bits\[1\]: must be >= 1"),
        ("kind: offchip,", "kind: buffer,", r"bad\.yaml: memory: weights need an outermost level of kind offchip"),
    ],
    ids=["missing", "wrong-type", "negative-energy", "unknown-dataflow", "unknown-key",
         "unknown-nested-key", "not-yaml", "bad-choice", "bad-bits", "no-offchip"],
)
def test_malformed_profiles(old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(ProfileError, match=message) as info:
        parse_profile(GOOD.replace(old, new, 1), "bad.yaml")
    assert "\n" not in str(info.value)


def test_not_a_mapping() -> None:
    with pytest.raises(ProfileError, match="must be a mapping"):
        parse_profile("- 1\n- 2\n", "list.yaml")
    with pytest.raises(ProfileError, match="empty file"):
        parse_profile("", "empty.yaml")
