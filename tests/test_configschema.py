"""domainclip.configschema: one checked pattern for every YAML-backed config section."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from domainclip.configschema import (
    apply_overrides,
    build,
    describe,
    leaf_keys,
    option,
    section,
)
from domainclip.errors import ConfigError


@dataclass
class Inner:
    """Inner settings."""

    rate: float = option(0.5, "a rate", range=(0, 1, "(]"))
    steps: list[int] = option(None, "steps", factory=lambda: [1, 2], range=(1, None, "[]"))


@dataclass
class Outer:
    """Top."""

    mode: str = option("a", "a mode", choices=("a", "b"))
    limit: float | None = option(None, "a limit; null = none", range=(0, 10, "[]"))
    inner: Inner = section(Inner)
    extra: Inner | None = section(Inner, optional=True)


def test_build_checks_types_choices_ranges_and_optional_sections():
    obj = build(Outer, {"mode": "b", "limit": 3, "inner": {"rate": "5e-1"}, "extra": {}})
    assert (obj.mode, obj.limit, obj.inner.rate) == ("b", 3.0, 0.5)  # YAML 1.1 "5e-1" is a number
    assert obj.extra == Inner()
    assert build(Outer, None).extra is None and build(Outer, None).limit is None
    with pytest.raises(
        ConfigError, match=r"f.yaml: inner.rate = 0.0 is out of range \(outside \(0, 1\]\)"
    ):
        build(Outer, {"inner": {"rate": 0}}, "f.yaml")
    with pytest.raises(
        ConfigError, match=r"inner.steps\[1\] = 0 is out of range \(must be at least 1\)"
    ):
        build(Outer, {"inner": {"steps": [3, 0]}})
    with pytest.raises(ConfigError, match="mode = 'c' is not allowed; choose one of 'a', 'b'"):
        build(Outer, {"mode": "c"})
    for bad in ("0.5", True, float("nan")):  # only exponent strings are numbers; bools are not
        with pytest.raises(ConfigError, match="inner.rate must be a number"):
            build(Outer, {"inner": {"rate": bad}})
    with pytest.raises(ConfigError, match="extra must be a mapping"):
        build(Outer, {"extra": 3})


def test_unknown_key_names_source_dotted_key_and_suggestion():
    with pytest.raises(ConfigError) as e:
        build(Outer, {"extra": {"rtae": 1}}, "my.yaml")
    msg = str(e.value)
    assert msg.startswith("my.yaml: unknown key(s) rtae ('extra.rtae'; did you mean 'rate'?)")
    assert "Valid keys here: extra.rate, extra.steps" in msg


def test_overrides_are_strict_yaml_and_keys_are_listed():
    data = apply_overrides({"inner": {"rate": 1}}, ["inner.rate=0.25", "mode=b"], leaf_keys(Outer))
    assert data == {"inner": {"rate": 0.25}, "mode": "b"}
    with pytest.raises(ConfigError, match=r"unknown key \(did you mean inner.rate"):
        apply_overrides({}, ["inner.rat=1"], leaf_keys(Outer))
    with pytest.raises(ConfigError, match=r"key 'a' appears twice \(lines 1 and 1\)"):
        apply_overrides({}, ["mode={a: 1, a: 2}"], leaf_keys(Outer))
    assert leaf_keys(Outer) == [
        "mode", "limit", "inner.rate", "inner.steps", "extra.rate", "extra.steps"
    ]  # fmt: skip
    assert ("extra.steps", [1, 2], "steps") in describe(Outer)
