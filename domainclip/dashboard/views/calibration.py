"""Calibration page (Streamlit page script): is the run's confidence trustworthy?

Reliability diagrams before and after temperature scaling, calibration metrics with 95% CIs,
ECE per subgroup and confidence histograms, all read from `domainclip evaluate` outputs.
"""

from __future__ import annotations

import streamlit as st

from domainclip.dashboard import calibdata, charts, state
from domainclip.dashboard.access import RunRef
from domainclip.evaluation.results import CalibrationSummary, EvaluationResult
from domainclip.privacy import hidden_note


def _overview(run: RunRef, result: EvaluationResult) -> None:
    """Temperature, images, split, and whether a temperature was fitted."""
    temp, data = result.temperature, result.data
    c1, c2, c3 = st.columns(3)
    c1.metric("Temperature T", f"{temp.value:.4g}", help=temp.source)
    c2.metric("Images evaluated", data.n_evaluated)
    c3.metric("Split", data.split)
    if result.calibration.after is None and temp.fit:
        # evaluate stores the fit but skips the "after" report when the fit kept T = 1
        st.info(
            "A temperature was fitted on the validation split and kept at T = 1 (scaling did not "
            "lower the validation NLL, e.g. a perfectly separated split): the probabilities below "
            "are the model's own."
        )
    elif result.calibration.after is None:
        st.warning(
            "No temperature fitted (T = 1): only the uncalibrated model is shown. Fit one with "
            f"`domainclip evaluate {run.path} --fit-temperature`."
        )


def _reliability(calib: CalibrationSummary, temperature: float) -> None:
    """Reliability diagrams before / after scaling and the confidence histogram."""
    strategy = st.radio(
        "Bins",
        ["width", "mass"],
        format_func=lambda s: {"width": "equal width", "mass": "equal mass"}[s],
        horizontal=True,
    )
    bins = calibdata.reliability_frame(calib, strategy)
    st.subheader("Reliability diagrams")
    cols = st.columns(2)
    for col, when in zip(cols, ("before", "after"), strict=True):
        part = bins[bins["when"] == when]
        if part.empty:
            col.caption(f"{when} temperature scaling: not available")
            continue
        t = 1.0 if when == "before" else temperature
        col.altair_chart(
            charts.reliability_chart(
                part, f"{when.capitalize()} temperature scaling (T = {t:.3g})"
            ),
            width="content",
        )
    st.altair_chart(charts.confidence_histogram_chart(bins), width="content")


def _subgroups(calib: CalibrationSummary) -> None:
    """ECE per subgroup value (columns not on the safe list withheld, named only)."""
    st.subheader("ECE per subgroup (after temperature scaling)")
    allowed = state.shown_columns()
    sub = calibdata.subgroup_frame(calib, allowed)
    hidden = calibdata.hidden_subgroup_columns(calib, allowed)
    if hidden:
        st.info(hidden_note(hidden))
    if sub.empty:
        st.caption("No subgroup columns (metadata such as view or sex) in this evaluation.")
        return
    st.dataframe(sub.drop(columns=["ece", "ci_low", "ci_high"]), hide_index=True, width="stretch")
    defined = sub.dropna(subset=["ece"]).assign(group=lambda d: d["column"] + " = " + d["value"])
    if not defined.empty:
        st.altair_chart(
            charts.estimate_bars_chart(
                defined, "group", "ece", "ECE per subgroup", "ECE (probability units)", "column"
            ),
            width="content",
        )


def _calibrator_and_sets(result: EvaluationResult) -> None:
    """The calibrator chosen and why; conformal coverage (overall and per class) and set sizes."""
    facts = calibdata.calibrator_facts(result.temperature)
    st.subheader("Calibrator and prediction sets")
    st.markdown(f"**Calibrator:** `{facts['kind']}`: {facts['description']}  \n*Why:* {facts['why']}")
    c = result.conformal
    if not c:
        st.caption("No conformal prediction sets in this evaluation: add them with "
                   "`domainclip evaluate RUN --conformal 0.1`.")
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Conformal coverage", calibdata.fmt_estimate(c["coverage"]),
              help=f"target {c['target_coverage']:.2f}; method {c['thresholds']['method']}; "
              f"thresholds from split {c['thresholds']['split']} ({c['unit']})")
    c2.metric("Mean set size", f"{c['mean_set_size']:.2f}")
    c3.metric("Singleton rate", f"{c['singleton_rate']:.2f}")
    st.dataframe(calibdata.conformal_frame(c), hide_index=True, width="stretch")
    st.caption("Set sizes: " + ", ".join(f"{k}: {v}" for k, v in c["set_sizes"].items())
               + ". The guarantee assumes calibration and deployment data are exchangeable; a new "
               "site, device or population breaks it.")


def render() -> None:
    """Render the Calibration page."""
    st.title("Calibration")
    run = state.current_run()
    picked = state.pick_result(
        "Evaluation",
        calibdata.EVAL_DIR,
        state.evaluation_names(run),
        lambda name: state.evaluation(run, name),
        missing=(
            f"Run `{run.name}` has no evaluation yet. Produce one (with a temperature fitted on "
            "the validation split) with:",
            f"domainclip evaluate {run.path} --fit-temperature",
        ),
    )
    if picked is None:
        return
    name, result = picked
    _overview(run, result)
    st.subheader("Calibration metrics (95% bootstrap CI)")
    st.dataframe(calibdata.calibration_table(result.calibration), hide_index=True, width="stretch")
    _reliability(result.calibration, result.temperature.value)
    _subgroups(result.calibration)
    _calibrator_and_sets(result)
    with st.expander("Reliability diagrams as written by `domainclip evaluate` (PNG)"):
        for f in ("reliability_before.png", "reliability_after.png"):
            path = state.access().run_file(run, f"{calibdata.EVAL_DIR}/{name}/{f}")
            if path.is_file():
                st.image(str(path), caption=f, width=420)


render()
