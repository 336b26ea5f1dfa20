"""The audit's subgroup values bin a continuous column (age in decades by default)."""

from __future__ import annotations

from domainclip.audit.analysis import MISSING
from domainclip.audit.data import subgroup_values
from domainclip.datasets.manifest import ManifestRow


def test_audit_subgroups_bin_age_and_keep_categories():
    rows = [
        ManifestRow(image=f"{i}.png", text="t", meta={"age": a, "sex": s})
        for i, (a, s) in enumerate([("23", "F"), ("29", "M"), ("61", "F"), ("", "M")])
    ]
    got = subgroup_values(rows, ["age", "sex"])
    assert got == {"age": ["20-29", "20-29", "60-69", MISSING], "sex": ["F", "M", "F", "M"]}
    assert subgroup_values(rows, ["age"], {"age": 50})["age"] == ["0-49", "0-49", "50-99", MISSING]
