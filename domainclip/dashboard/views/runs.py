"""Runs page (Streamlit page script): every run, training curves, and a two-run comparison."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from domainclip.dashboard import charts, runinfo, state
from domainclip.errors import DomainClipError


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _run_details(summary: runinfo.RunSummary) -> None:
    st.header(f"Run `{summary.name}`")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Backbone", runinfo.backbone_label(summary.backbone), help=summary.backbone)
    c2.metric("Method", summary.method, help=f"towers (image/text): {summary.towers}")
    c3.metric(
        "Trainable parameters",
        "n/a" if summary.trainable_params is None else f"{summary.trainable_params:,}",
        help=None
        if summary.trainable_fraction is None
        else f"{100 * summary.trainable_fraction:.3f}% of all parameters",
    )
    c4.metric(f"Best {summary.best_metric or 'metric'}", _fmt(summary.best_value))
    if summary.log.bad_lines:
        st.warning(
            f"metrics.jsonl: {len(summary.log.bad_lines)} unreadable line(s) skipped "
            f"(line {', '.join(map(str, summary.log.bad_lines[:5]))}); a killed run can leave one."
        )
    df = runinfo.curves(summary.log)
    if df.empty:
        st.info("No metrics logged yet (metrics.jsonl is empty or missing).")
    else:
        st.subheader("Training curves")
        keys = runinfo.curve_keys(df)
        default = [k for k in runinfo.DEFAULT_CURVES if k in keys] or keys[:4]
        chosen = st.multiselect("Curves", keys, default=default, help="train/* and val/* metrics")
        if chosen:
            part = runinfo.select_curves(df, chosen).assign(run=summary.name)
            st.altair_chart(charts.facet_curves_chart(part, "Training curves"), width="content")
    if summary.best_metrics:
        st.subheader(f"Validation metrics at the best step ({summary.best_step})")
        st.dataframe(
            pd.DataFrame(
                {"metric": list(summary.best_metrics), "value": list(summary.best_metrics.values())}
            ),
            hide_index=True,
        )
    with st.expander("Resolved config (config.yaml)"):
        st.json(summary.config, expanded=False)


def _compare(summaries: dict[str, runinfo.RunSummary]) -> None:
    st.header("Compare two runs")
    names = list(summaries)
    if len(names) < 2:
        st.info("Only one run in this directory: nothing to compare.")
        return
    c1, c2 = st.columns(2)
    current = st.session_state.get(state.RUN_KEY, names[0])
    a = c1.selectbox("Run A", names, index=names.index(current) if current in names else 0)
    b = c2.selectbox("Run B", names, index=1 if names.index(a) == 0 else 0)
    ra, rb = summaries[a], summaries[b]
    st.subheader("Config differences")
    diff = runinfo.config_differences(ra.config, rb.config)
    if diff.empty:
        st.write("Identical configs.")
    else:
        st.dataframe(diff, hide_index=True, width="stretch")
    da, db = runinfo.curves(ra.log), runinfo.curves(rb.log)
    ba, bb = ra.best_metrics, rb.best_metrics
    metrics = sorted(set(ba) | set(bb))
    st.subheader("Validation metrics at each run's best step")
    st.dataframe(
        pd.DataFrame(
            {
                "metric": metrics,
                f"A: {a}": [ba.get(m) for m in metrics],
                f"B: {b}": [bb.get(m) for m in metrics],
                "B - A": [None if m not in ba or m not in bb else bb[m] - ba[m] for m in metrics],
            }
        ),
        hide_index=True,
        width="stretch",
    )
    both = pd.concat([da.assign(run=f"A: {a}"), db.assign(run=f"B: {b}")])
    shared = set(runinfo.curve_keys(da)) & set(runinfo.curve_keys(db))
    both = runinfo.select_curves(both, [k for k in runinfo.DEFAULT_CURVES if k in shared])
    if not both.empty:
        st.altair_chart(charts.facet_curves_chart(both, "Curves of both runs"), width="content")


def render() -> None:
    """Render the Runs page."""
    st.title("Runs")
    acc = state.access()
    refs = acc.runs()
    if not refs:
        st.info(
            f"No fine-tuning runs in `{acc.root}`. Create one with "
            "`domainclip finetune CONFIG --out RUN` or `domainclip demo`."
        )
        return
    summaries: dict[str, runinfo.RunSummary] = {}
    for ref in refs:
        try:
            summaries[ref.name] = state.run_summary(ref)
        except (
            DomainClipError,
            OSError,
            ValueError,
        ) as exc:  # one broken run must not hide the others
            st.error(f"{ref.name}: cannot read this run: {exc}")
    st.caption(f"{len(summaries)} run(s) in `{acc.root}`")
    st.dataframe(
        pd.DataFrame([s.row() for s in summaries.values()]), hide_index=True, width="stretch"
    )
    current = state.current_run()
    if current.name in summaries:
        _run_details(summaries[current.name])
    _compare(summaries)


render()
