def test_identifying_columns_never_become_subgroups():
    from domainclip.datasets.manifest import ManifestRow
    from domainclip.evaluation.evaluate import auto_subgroup_columns

    rows = [
        ManifestRow(
            image=f"{i}.png",
            text="t",
            meta={"view": "PA" if i % 2 else "AP", "patient_name": f"P{i % 3}"},
        )
        for i in range(6)
    ]
    assert auto_subgroup_columns(rows) == ["view"]
