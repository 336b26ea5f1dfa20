"""Framing audit page (Streamlit page script): does the score swing with how a finding is worded?

The gate verdict and its failed checks, per-framing score-shift distributions with CIs, flip
rates, subgroup and per-class tables, and every flipped image with its saliency under both
framings. Everything comes from `domainclip audit` outputs (audit.json, scores.csv).
"""

from __future__ import annotations

import streamlit as st

from domainclip.audit.results import AuditReport, FlipExample
from domainclip.dashboard import auditdata, charts, manifests, state
from domainclip.dashboard.access import PathAccessError, RunRef
from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.errors import DomainClipError
from domainclip.explain.image import is_signed
from domainclip.explain.render import overlay_png
from domainclip.privacy import hidden_note, image_name

FLIPS_PER_PAGE = 4


def _threshold(value: float | None, spec: str = "g") -> str:
    return "off" if value is None else format(value, spec)


def _verdict(audit: AuditReport) -> None:
    gate = audit.gate
    if gate.verdict == "pass":
        st.success(f"Gate verdict: PASS ({gate.n_checks} checks, {gate.n_skipped} skipped)")
    else:
        st.error(
            f"Gate verdict: {gate.verdict.upper()}: {gate.n_failed} of {gate.n_checks} "
            f"checks failed: {', '.join(gate.failed)}"
        )
    t = gate.thresholds
    if t is None:
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Max |mean shift|", _threshold(t.max_abs_mean_shift), help="probability units")
    c2.metric("Max flip rate", _threshold(t.max_flip_rate, ".0%"))
    c3.metric("Max ECE", _threshold(t.max_ece))
    c4.metric("Alpha (Holm)", f"{t.alpha:g}")


def _group_of(view, example: FlipExample) -> str:
    """The pseudonym of the example's group: from the manifest row, else the stored group."""
    table = view.table
    hit = table[table["row"] == example.row]
    if len(hit):
        return str(hit["group"].iloc[0])
    return state.pseudonym(example.group)


def _power(audit: AuditReport) -> None:
    """What this audit could see, per class; remedies when the gate fails."""
    from domainclip.audit.report import power_sentence, remedy_lines

    sentence = power_sentence(audit)
    table = auditdata.power_table(audit)
    if not table.empty and (table["status"] == "underpowered").any():
        st.warning(sentence)
    else:
        st.info(sentence)
    lines = remedy_lines(audit)
    if lines:
        st.markdown("**What you can do**\n\n" + "\n".join(f"- {line}" for line in lines))


def _power_table(audit: AuditReport) -> None:
    table = auditdata.power_table(audit)
    if not table.empty:
        st.subheader("Audit power per cell")
        st.caption("The smallest mean shift each cell could detect with 80% power (the largest "
                   "over the gated framings; empty = nothing up to 1).")
        st.dataframe(table, hide_index=True, width="stretch")


def _compare(audit: AuditReport) -> None:
    """`--compare`: this run vs the compared one, per framing, side by side."""
    table = auditdata.side_by_side_table(audit)
    if table.empty or audit.compare is None:
        return
    st.subheader(f"This run vs `{audit.compare.base.model.label}`")
    st.caption(
        "Same images; differences paired by image with 95% CIs and p-values (e.g. robust vs "
        "plain: audit the robust run with `--compare PLAIN_RUN`)."
    )
    st.dataframe(table, hide_index=True, width="stretch")


def _flip_card(run: RunRef, view, example: FlipExample, method: str, alpha: float) -> None:
    # Images are found through the manifest by row (audit.json names them by row unless the
    # audit ran with --show-paths); older audit.json files still carry the path.
    path = state.listed_image(view, manifests.image_of_row(view, example.row) or example.path)
    image = load_image(path)
    group = _group_of(view, example)
    st.markdown(
        f"**row {example.row}** · target `{example.target}` · group `{group}` · shift "
        f"{example.shift:+.4f}"
    )
    cols = st.columns(3)
    name = image_name(example.row, example.image, state.show_paths())
    cols[0].image(image, caption=name, width=200)
    token = state.model_token(run)
    key = f"{path}:{state.mtime(path)}"
    for col, side in ((cols[1], example.reference), (cols[2], example.framed)):
        m = state.saliency_map(str(run.path), token, key, image, side.prompt_decision, method)
        col.image(
            overlay_png(
                m.view,
                m.map,
                alpha=alpha,
                title=f"{side.framing}: {side.prompt_decision}",
                diverging=is_signed(method),
                label="attribution (similarity units)",
            ),
            caption=(
                f"{side.framing}: decides {side.decision} (p = {side.decision_prob:.3f}); "
                f"target {example.target} p = {side.target_prob:.3f}"
            ),
        )


def _flips(run: RunRef, name: str, audit: AuditReport) -> None:
    st.subheader("Flipped decisions, with saliency under both framings")
    examples = audit.flip_examples
    with_flips = [f for f, ex in examples.items() if ex]
    if not with_flips:
        st.success("No image changed its decision under any framing.")
        return
    c1, c2, c3 = st.columns(3)
    framing = c1.selectbox(
        "Framing", with_flips, format_func=lambda f: f"{f} ({len(examples[f])} flipped)"
    )
    method = c2.radio("Saliency method", ["gradcam", "occlusion", "ig"], horizontal=True)
    alpha = c3.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="audit_alpha")
    chosen = examples[framing]
    pages = -(-len(chosen) // FLIPS_PER_PAGE)
    page = int(st.number_input(f"Page (of {pages})", 1, pages, 1)) if pages > 1 else 1
    st.caption(
        "Each map explains the prompt the model decided for, under the reference wording and "
        "under this framing (the score being explained is the image-text similarity)."
    )
    acc = state.access()
    try:
        manifest = acc.result_manifest(run, f"{auditdata.AUDIT_DIR}/{name}/{auditdata.AUDIT_JSON}")
    except PathAccessError as exc:
        st.error(f"Images of the flipped decisions cannot be shown: {exc}")
        return
    if manifest is None or not manifest.is_file():
        st.warning("The audit's manifest is not available; images cannot be shown.")
        return
    view = state.result_manifest_view(manifest)
    with st.spinner("Computing saliency maps for the flipped images..."):
        for example in chosen[(page - 1) * FLIPS_PER_PAGE : page * FLIPS_PER_PAGE]:
            try:
                _flip_card(run, view, example, method, alpha)
            except (PathAccessError, ImageReadError) as exc:
                st.error(f"row {example.row}: {exc}")
            except DomainClipError as exc:
                st.error(f"row {example.row}: saliency failed: {exc}")


def render() -> None:
    """Render the Framing audit page."""
    st.title("Framing audit")
    run = state.current_run()
    picked = state.pick_result(
        "Audit",
        auditdata.AUDIT_DIR,
        state.audit_names(run),
        lambda name: state.audit(run, name),
        missing=(
            f"Run `{run.name}` has no framing audit yet. Produce one (the shipped specs are "
            "`neu_det`, `covid_cxr` and `synthetic`, or a YAML path) with:",
            f"domainclip audit {run.path} --spec SPEC",
        ),
    )
    if picked is None:
        return
    name, audit = picked
    spec, data = audit.spec, audit.data
    st.caption(
        f"Spec `{spec['name']}` version {spec.get('version', '?')} · reference framing "
        f"`{audit.reference}` · {data.n_images} images (split {data.split or 'all'})"
    )
    _verdict(audit)
    _power(audit)
    _framings(run, name, audit)
    _power_table(audit)
    _compare(audit)
    _subgroups(audit)
    with st.expander("Per class"):
        st.dataframe(auditdata.per_class_table(audit), hide_index=True, width="stretch")
    with st.expander("Every gate check"):
        st.dataframe(auditdata.checks_table(audit), hide_index=True, width="stretch")
    _flips(run, name, audit)


def _framings(run: RunRef, name: str, audit: AuditReport) -> None:
    """The per-framing table, the score-shift distributions and the flip rates."""
    st.subheader("Per framing vs the reference")
    st.dataframe(auditdata.framing_table(audit), hide_index=True, width="stretch")
    shifts = state.score_shifts(run, name, audit.reference)
    means = auditdata.estimates_frame(audit, "mean_shift")
    st.altair_chart(
        charts.shift_distribution_chart(shifts, means, audit.reference), width="content"
    )
    flips = auditdata.estimates_frame(audit, "flip_rate")
    st.altair_chart(
        charts.estimate_bars_chart(
            flips,
            "framing",
            "value",
            "Decision flip rate (Wilson 95% CI)",
            "flip rate (fraction of images)",
        ),
        width="content",
    )


def _subgroups(audit: AuditReport) -> None:
    st.subheader("Subgroups")
    allowed = state.shown_columns()
    hidden = auditdata.hidden_subgroup_columns(audit, allowed)
    if hidden:
        st.info(hidden_note(hidden))
    sub = auditdata.subgroup_table(audit, allowed)
    if sub.empty:
        st.caption("The spec defines no subgroup columns present in the data.")
    else:
        st.dataframe(sub, hide_index=True, width="stretch")
        st.dataframe(
            auditdata.subgroup_calibration_table(audit, allowed), hide_index=True, width="stretch"
        )


render()
