"""Every dashboard page driven by Streamlit's AppTest on the session's tiny runs directory.

Expected values are read from the run files (result.json, metrics.json, the manifest) or
recomputed with the library, never typed in.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from domainclip.datasets import read_manifest, validate_manifest
from domainclip.datasets.stats import manifest_stats
from domainclip.finetune.metric_names import metric_value
from domainclip.privacy import pseudonym, pseudonym_key

from .conftest import PATIENT_NAMES, DashRuns
from .helpers import captions, metrics, no_exceptions, page_text, widget


def _result(run) -> dict:
    return json.loads((run / "result.json").read_text())


def test_runs_page(app: AppTest, dash_runs: DashRuns) -> None:
    no_exceptions(app)
    assert app.title[0].value == "Runs"
    table = app.dataframe[0].value
    assert list(table["run"]) == ["lora", "probe"]
    for name, run in (("lora", dash_runs.lora), ("probe", dash_runs.probe)):
        res = _result(run)
        row = table[table["run"] == name].iloc[0]
        assert row["method"] == res["method"]
        assert row["trainable params"] == res["trainable_params"]
        # the probe (a head method) logs its accuracy as head_acc
        assert row["best value"] == pytest.approx(metric_value(res["best_metrics"], "zero_shot_acc"))
        assert row["best step"] == res["best_step"]
    lora = _result(dash_runs.lora)
    shown = metrics(app)
    assert shown["Method"] == "lora"
    assert shown["Trainable parameters"] == f"{lora['trainable_params']:,}"
    assert shown["Best zero_shot_acc"] == f"{lora['best_metrics']['zero_shot_acc']:.4f}"
    charts = [c.proto.spec for c in app.get("vega_lite_chart")]
    assert "Training curves" in charts[0] and "Curves of both runs" in charts[1]
    curves = widget(app, "multiselect", "Curves")
    assert curves.value == [
        "train/loss",
        "val/loss",
        "val/zero_shot_acc",
        "val/t2i_R@1",
        "val/i2t_R@1",
    ]
    text = page_text(app)
    assert f"Validation metrics at the best step ({lora['best_step']})" in text
    diffs = next(df.value for df in app.dataframe if "key" in df.value.columns)
    method = diffs[diffs["key"] == "method.name"].iloc[0]
    assert (method["run A"], method["run B"]) == ("'lora'", "'linear_probe'")


def test_run_picker_switches_every_page(app: AppTest) -> None:
    app.sidebar.selectbox[0].set_value("probe").run()
    no_exceptions(app)
    assert metrics(app)["Method"] == "linear_probe"


def test_data_page(app: AppTest, dash_runs: DashRuns) -> None:
    app.switch_page("views/data.py").run()
    no_exceptions(app)
    assert app.title[0].value == "Data"
    stats = manifest_stats(dash_runs.manifest)
    report = validate_manifest(dash_runs.manifest, check_images=True)
    shown = metrics(app)
    assert shown["Rows read"] == str(stats["n_rows"])
    assert shown["Usable rows"] == str(report.n_usable)
    assert shown["train rows"] == str(stats["splits"]["train"])
    assert shown["Rows in file"] == str(report.n_rows)
    assert shown["Skipped rows"] == str(report.n_skipped) == "1"
    skipped = next(df.value for df in app.dataframe if "kind" in df.value.columns)
    assert "image_missing" in set(skipped["kind"])
    rows = read_manifest(dash_runs.manifest).rows
    caps = captions(app)
    assert len(caps) == 12  # one gallery page of thumbnails
    assert caps[0] == f"row 1 · {rows[0].label[0]} · {rows[0].split}"
    text = page_text(app)
    assert not any(name in text for name in PATIENT_NAMES)
    assert "`patient_name`" in text  # the withheld column is named, its values are not
    key = pseudonym_key(dash_runs.root)  # the app created it in the runs directory
    assert pseudonym(rows[0].group, key) in text and rows[0].group not in text

    widget(app, "multiselect", "Label").set_value(["scratch"]).run()
    n = sum("scratch" in r.label for r in rows)
    assert f"{n} of {len(rows)} rows match the filters" in page_text(app)
    widget(app, "multiselect", "sex").set_value(["F"]).run()
    n_f = sum("scratch" in r.label and r.meta["sex"] == "F" for r in rows)
    assert f"{n_f} of {len(rows)} rows match the filters" in page_text(app)


@pytest.fixture(scope="module")
def lora_model(dash_runs: DashRuns):
    """The LoRA run's model, loaded independently of the app (for expected values)."""
    from domainclip.runs import load_model

    return load_model(dash_runs.lora)


def _explain_score(
    bb, image_path, prompt: str, method: str = "gradcam"
) -> tuple[float, np.ndarray]:
    from domainclip.explain.image import ImageExplainer
    from domainclip.explain.inputs import prepare_image

    inp = prepare_image(bb, image_path)
    sal = ImageExplainer(bb).explain(inp.pixels, prompt, method)
    return sal.score, sal.map


def test_saliency_page(app: AppTest, dash_runs: DashRuns, lora_model) -> None:
    app.switch_page("views/saliency.py").run()
    no_exceptions(app)
    assert app.title[0].value == "Saliency explorer"
    man = read_manifest(dash_runs.manifest)
    first = man.rows[0]
    prompt_a = widget(app, "selectbox", "Prompt A").value
    prompt_b = widget(app, "selectbox", "Prompt B").value
    assert prompt_a == first.text  # the image's own report comes first
    assert prompt_b != prompt_a
    score_a, _ = _explain_score(lora_model, man.image_path(first), prompt_a)
    score_b, _ = _explain_score(lora_model, man.image_path(first), prompt_b)
    shown = metrics(app)
    assert shown["Similarity A"] == f"{score_a:.3f}"
    assert shown["Similarity B"] == f"{score_b:.3f}"
    pa, pb = float(shown["P(A | A or B)"]), float(shown["P(B | A or B)"])
    assert pa + pb == pytest.approx(1.0, abs=2e-3)
    caps = captions(app)
    assert caps[0].startswith(f"row 1 · {first.label[0]}")
    assert "prompt A · GradCAM" in caps and "prompt B · GradCAM" in caps
    assert any(c.startswith("contrast map") for c in caps)
    assert "domainclip-token-attribution" in page_text(app)

    # switch method: the maps change, the score does not
    widget(app, "radio", "Method").set_value("occlusion").run()
    no_exceptions(app)
    assert "prompt A · Occlusion" in captions(app)
    assert metrics(app)["Similarity A"] == f"{score_a:.3f}"

    # another prompt from the prompt set
    options = widget(app, "selectbox", "Prompt A").options
    other = next(o for o in options if o not in (prompt_a, prompt_b, "Free text"))
    widget(app, "selectbox", "Prompt A").set_value(other).run()
    score_other, _ = _explain_score(lora_model, man.image_path(first), other)
    assert metrics(app)["Similarity A"] == f"{score_other:.3f}"

    # another image
    widget(app, "selectbox", "Image").set_value(3).run()
    no_exceptions(app)
    assert captions(app)[0].startswith(f"row 4 · {man.rows[3].label[0]}")


def test_saliency_sanity_checks(app: AppTest, dash_runs: DashRuns, lora_model) -> None:
    from domainclip.explain.inputs import prepare_image
    from domainclip.explain.sanity import deletion_insertion

    app.switch_page("views/saliency.py").run()
    app.toggle[0].set_value(True).run()
    no_exceptions(app)
    table = next(df.value for df in app.dataframe if "check" in df.value.columns)
    assert list(table["check"]) == [
        "model randomisation",
        "text sensitivity",
        "deletion AUC",
        "insertion AUC",
    ]
    assert np.isfinite(table["value"].astype(float)).all()
    man = read_manifest(dash_runs.manifest)
    prompt = man.rows[0].text
    _, smap = _explain_score(lora_model, man.image_path(man.rows[0]), prompt)
    bb = lora_model
    di = deletion_insertion(bb, prepare_image(bb, man.image_path(man.rows[0])).pixels, prompt, smap)
    got = table.set_index("check")["value"]
    assert got["deletion AUC"] == pytest.approx(di.deletion_auc, rel=1e-4)
    assert got["insertion AUC"] == pytest.approx(di.insertion_auc, rel=1e-4)


def test_saliency_upload_in_memory(app: AppTest, dash_runs: DashRuns) -> None:
    app.switch_page("views/saliency.py").run()
    widget(app, "radio", "Image source").set_value("Upload").run()
    image = read_manifest(dash_runs.manifest).rows[2]
    data = (dash_runs.manifest.parent / image.image).read_bytes()
    before = set(p for p in dash_runs.base.rglob("*"))
    app.file_uploader[0].set_value(("surface.png", data, "image/png")).run()
    no_exceptions(app)
    caps = captions(app)
    assert caps[0] == "upload (64x64)"
    assert "prompt A · GradCAM" in caps
    assert set(p for p in dash_runs.base.rglob("*")) == before  # nothing written anywhere
    app.file_uploader[0].set_value(("bad.png", b"not an image", "image/png")).run()
    assert any("not a readable image" in e.value for e in app.error)


def test_calibration_page(app: AppTest, dash_runs: DashRuns) -> None:
    from domainclip.calibrators import load_temperature

    app.switch_page("views/calibration.py").run()
    no_exceptions(app)
    assert app.title[0].value == "Calibration"
    result = json.loads((dash_runs.lora / "eval" / "data_test" / "metrics.json").read_text())
    shown = metrics(app)
    assert shown["Temperature T"] == f"{load_temperature(dash_runs.lora):.4g}"
    assert shown["Images evaluated"] == str(result["data"]["n_evaluated"])
    table = app.dataframe[0].value.set_index("metric")
    ece = result["calibration"]["before"]["ece"]
    before = table.loc["ECE (equal-width bins)", "before temperature scaling"]
    assert before.startswith(f"{ece['value']:.3f} [{ece['ci95'][0]:.3f}")
    after = result["calibration"]["after"]["nll"]["value"]
    assert table.loc["NLL (nats)", "after temperature scaling"].startswith(f"{after:.3f}")
    sub = next(df.value for df in app.dataframe if "column" in df.value.columns)
    assert set(sub["column"]) == {"sex"}  # patient_name subgroups are withheld
    sexes = result["calibration"]["subgroups"]["sex"]
    assert dict(zip(sub["value"], sub["n"], strict=True)) == {k: v["n"] for k, v in sexes.items()}
    text = page_text(app)
    assert not any(name in text for name in PATIENT_NAMES)
    charts = app.get("vega_lite_chart")
    assert len(charts) >= 4  # two reliability diagrams, histogram, subgroup ECE
    n_before = sum(result["calibration"]["before"]["bins_width"]["count"])
    assert n_before == result["data"]["n_evaluated"]
    assert {"reliability_before.png", "reliability_after.png"} <= set(captions(app))


def test_calibration_page_without_evaluation(app: AppTest) -> None:
    app.sidebar.selectbox[0].set_value("probe").run()
    app.switch_page("views/calibration.py").run()
    no_exceptions(app)
    assert any("domainclip evaluate" in i.value for i in app.info)


def test_audit_page(app: AppTest, dash_runs: DashRuns) -> None:
    from domainclip.dashboard.calibdata import fmt_estimate

    app.switch_page("views/audit.py").run()
    no_exceptions(app)
    assert app.title[0].value == "Framing audit"
    audit = json.loads((dash_runs.lora / "audit" / "synthetic" / "audit.json").read_text())
    gate = audit["gate"]
    alerts = [e.value for e in (*app.error, *app.success)]
    verdict = next(a for a in alerts if a.startswith("Gate verdict"))
    assert gate["verdict"].upper() in verdict
    assert all(f in verdict for f in gate["failed"])
    table = app.dataframe[0].value.set_index("framing")
    assert list(table.index) == list(audit["framings"])
    for name, comp in audit["comparisons"].items():
        assert table.loc[name, "mean shift [95% CI]"] == fmt_estimate(
            comp["overall"]["mean_shift"], 4
        )
        assert table.loc[name, "flips"] == comp["overall"]["flips"]
    sub = next(
        df.value
        for df in app.dataframe
        if "mean shift [95% CI]" in df.value.columns and "column" in df.value.columns
    )
    assert set(sub["column"]) == {"texture", "sex"}
    text = page_text(app)
    assert "patient_name" in text and not any(name in text for name in PATIENT_NAMES)
    assert len(app.get("vega_lite_chart")) == 2  # shift distributions, flip rates

    flipped = {f: ex for f, ex in audit["flip_examples"].items() if ex}
    assert flipped, "the fixture's random tiny model flips decisions under some framing"
    framing = next(iter(flipped))
    first = flipped[framing][0]
    caps = captions(app)
    # images are named by row (audit.json and the page); paths only with --show-paths
    assert first["image"] == f"row {first['row']}" and first["path"] == ""
    assert caps[0] == f"row {first['row']}"
    ref, framed = first["reference"], first["framed"]
    assert caps[1].startswith(
        f"{ref['framing']}: decides {ref['decision']} (p = {ref['decision_prob']:.3f})"
    )
    assert caps[2].startswith(
        f"{framed['framing']}: decides {framed['decision']} (p = {framed['decision_prob']:.3f})"
    )
    assert len(caps) == 3 * min(4, len(flipped[framing]))
    widget(app, "radio", "Saliency method").set_value("occlusion").run()
    no_exceptions(app)
    assert len(captions(app)) == len(caps)


def test_audit_page_without_audit(app: AppTest) -> None:
    app.sidebar.selectbox[0].set_value("probe").run()
    app.switch_page("views/audit.py").run()
    no_exceptions(app)
    assert any("domainclip audit" in i.value and "--spec" in i.value for i in app.info)


def test_calibration_page_when_the_fit_kept_t_1(
    dash_runs: DashRuns, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate skips the 'after' report when the fit keeps T = 1 (the demo's perfectly separated
    val split): the page must say a temperature was fitted, not ask the user to fit one."""
    import shutil

    from .conftest import APP, serve

    root = tmp_path / "runs"
    run = root / "lora"
    shutil.copytree(dash_runs.lora, run)
    metrics_file = next((run / "eval").glob("*/metrics.json"))
    m = json.loads(metrics_file.read_text())
    assert m["temperature"].get("fit")  # the fixture's evaluation fitted a temperature
    m["temperature"]["value"] = 1.0
    m["calibration"]["after"] = None
    metrics_file.write_text(json.dumps(m))
    serve(monkeypatch, root, dash_runs.data)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("views/calibration.py").run()
    no_exceptions(at)
    assert any("kept at T = 1" in i.value for i in at.info)
    assert not any("No temperature fitted" in w.value for w in at.warning)
