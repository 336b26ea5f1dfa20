"""Saliency explorer (Streamlit page script): why does the model link this image to this text?

Pick an image (from the run's manifest, or an upload processed in memory), two prompts and a
method: overlays for both prompts with an opacity slider, their contrast map, token attribution
of the image's report, and the sanity-check numbers of the map.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath

import pandas as pd
import streamlit as st
from PIL import Image

from domainclip.dashboard import charts, manifests, saliency, state
from domainclip.dashboard.access import PathAccessError, RunRef
from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.errors import DomainClipError
from domainclip.explain.image import is_signed
from domainclip.explain.render import overlay_png

METHOD_NAMES = {
    "gradcam": "GradCAM",
    "ig": "Integrated Gradients",
    "occlusion": "Occlusion",
    "rollout": "Attention rollout",
    "chefer": "Gradient-weighted attention",
}
FREE_TEXT = "Free text"


@dataclass
class PickedImage:
    """The image being explained."""

    image: Image.Image
    key: str  # cache key: path + mtime, or sha256 of the upload
    report: str  # the paired text ("" for uploads until the user types one)
    label: str
    caption: str


def _from_manifest(run: RunRef) -> PickedImage | None:
    path = state.run_manifest(run)
    if path is None or not path.is_file():
        st.warning("This run references no readable manifest; upload an image instead.")
        return None
    view = state.load_manifest_view(path)
    table = view.table
    splits = sorted(table["split"].unique())
    split = st.selectbox("Split", ["all", *splits], index=0)
    rows = table if split == "all" else table[table["split"] == split]
    if rows.empty:
        st.info("No rows in this split.")
        return None
    # Row and label; the file name only with --show-paths (the table's `image` column is then the
    # manifest path, else "row N": `privacy.image_name`). The file name, not the path: manifests
    # written outside their data folder hold long relative paths ('../../data/...').
    def label(i) -> str:
        shown = f"row {table.at[i, 'row']} · {table.at[i, 'label'] or '(no label)'}"
        name = str(table.at[i, "image"])
        return shown if name == f"row {table.at[i, 'row']}" else f"{shown} · {PurePath(name).name}"

    idx = st.selectbox("Image", list(rows.index), format_func=label)
    try:
        img_path = state.listed_image(view, view.images[idx])
        image = load_image(img_path)
    except PathAccessError as exc:
        st.error(str(exc))
        return None
    except ImageReadError as exc:
        st.error(f"This image cannot be read: {exc}")
        return None
    rec = table.loc[idx]
    return PickedImage(
        image=image,
        key=f"{img_path}:{state.mtime(img_path)}",
        report=str(rec["text"]),
        label=str(rec["label"]),
        caption=f"row {rec['row']} · {rec['label'] or '(no label)'} · {rec['split']}",
    )


def _from_upload() -> PickedImage | None:
    up = st.file_uploader(
        "Upload an image (kept in memory only, never written to disk)",
        type=list(saliency.UPLOAD_TYPES),
    )
    if up is None:
        return None
    data = up.getvalue()
    try:
        image = saliency.decode_upload(data)
    except DomainClipError as exc:
        st.error(str(exc))
        return None
    report = st.text_input("Report for this image (for token attribution)", "")
    return PickedImage(
        image=image,
        key="upload:" + hashlib.sha256(data).hexdigest(),
        report=report,
        label="",
        caption=f"upload ({image.width}x{image.height})",
    )


def _prompt_picker(title: str, options: list[str], default: int, key: str, image_key: str) -> str:
    choices = [*options, FREE_TEXT]
    pick_key = f"{key}_pick"
    # A new image starts from its default prompt: the widget key stays fixed and its value is
    # reset here when the image changes (the user's later picks for the same image are kept).
    if st.session_state.get(f"{key}_image") != image_key or (
        st.session_state.get(pick_key) not in choices
    ):
        st.session_state[pick_key] = choices[min(default, len(choices) - 1)]
        st.session_state[f"{key}_image"] = image_key
    picked = st.selectbox(title, choices, key=pick_key)
    if picked == FREE_TEXT:
        return st.text_input(f"{title} (free text)", key=f"{key}_text").strip()
    return picked


def _prompt_options(run: RunRef, picked: PickedImage) -> list[str]:
    acc = state.access()
    classes = sorted({c for c in picked.label.split("|") if c})
    path = state.run_manifest(run)
    if path is not None and path.is_file():
        classes = manifests.labels_of(state.load_manifest_view(path).table)
    try:
        per_class = saliency.prompt_choices(acc.prompt_set_of(run), classes)
    except DomainClipError as exc:
        st.warning(f"The run's prompt set cannot be used: {exc}")
        per_class = {}
    options = [picked.report] if picked.report else []
    for texts in per_class.values():
        options += [t for t in texts if t not in options]
    return options


def _default_b(options: list[str], picked: PickedImage) -> int:
    """Index of a prompt for a different class than the image's, for an informative contrast."""
    own = {c for c in picked.label.split("|") if c}
    for i, text in enumerate(options[1:], start=1):
        if not any(c in text for c in own):
            return i
    return min(1, len(options) - 1)


def _maps(run: RunRef, picked: PickedImage, a: str, b: str, method: str, alpha: float):
    model = state.run_model(run)
    token = state.model_token(run)
    with st.spinner(f"Computing {METHOD_NAMES.get(method, method)} maps..."):
        ma = state.saliency_map(str(run.path), token, picked.key, picked.image, a, method)
        mb = state.saliency_map(str(run.path), token, picked.key, picked.image, b, method)
        probs = saliency.pair_probabilities(model, picked.image, [a, b])
    signed = is_signed(method)
    unit = "attribution (similarity units)"
    cols = st.columns(3)
    for col, m, name, p in ((cols[0], ma, "A", probs[0]), (cols[1], mb, "B", probs[1])):
        col.markdown(f"**{name}:** {m.prompt}")
        col.image(
            overlay_png(m.view, m.map, alpha=alpha, diverging=signed, label=unit),
            caption=f"prompt {name} · {METHOD_NAMES.get(method, method)}",
        )
        col.metric(f"Similarity {name}", f"{m.similarity:.3f}")
        col.metric(
            f"P({name} | A or B)",
            f"{p:.3f}",
            help=f"softmax over the two prompts, temperature T={model.temperature:.3g}",
        )
    diff = ma.map - mb.map
    cols[2].markdown("**Contrast:** A minus B")
    cols[2].image(
        overlay_png(ma.view, diff, alpha=alpha, diverging=True, label=unit),
        caption="contrast map (red: A more than B, blue: B more than A)",
    )
    cols[2].metric("Map time A + B", f"{ma.seconds + mb.seconds:.2f} s")
    return ma


def _token_attribution(run: RunRef, picked: PickedImage) -> None:
    st.subheader("Token attribution of the report")
    if not picked.report.strip():
        st.info("No report for this image: type one above to attribute its words.")
        return
    with st.spinner("Integrated Gradients over the report's token embeddings..."):
        html, numbers = state.token_attribution(
            str(run.path), state.model_token(run), picked.key, picked.image, picked.report
        )
    st.html(html)
    st.caption(
        f"Red words raise the image-text similarity, blue words lower it. "
        f"Completeness gap |sum - (score - reference)| = {numbers['convergence delta']:.4f}."
    )


def _sanity(run: RunRef, picked: PickedImage, prompt: str, method: str) -> None:
    st.subheader("Sanity checks for map A")
    if not st.toggle(
        "Run sanity checks (model randomisation, text sensitivity, deletion/insertion)",
        key="sanity_on",
    ):
        st.caption("Off: they recompute the map several times.")
        return
    with st.spinner("Running sanity checks..."):
        s = state.sanity(
            str(run.path), state.model_token(run), picked.key, picked.image, prompt, method
        )
    r, t, d = s["randomisation"], s["text_sensitivity"], s["deletion_insertion"]
    table = pd.DataFrame(
        [
            {
                "check": "model randomisation",
                "value": r["spearman_full"],
                "meaning": "Spearman rho, map vs. randomised image tower",
                "pass if": f"< {r['threshold']}",
                "passed": r["passed"],
            },
            {
                "check": "text sensitivity",
                "value": t["max_correlation"],
                "meaning": "max Spearman rho vs. unrelated prompts",
                "pass if": f"< {t['threshold']}",
                "passed": t["passed"],
            },
            {
                "check": "deletion AUC",
                "value": d["deletion_auc"],
                "meaning": f"random order: {d['random_deletion_auc']:.4f}",
                "pass if": "below random",
                "passed": d["deletion_auc"] < d["random_deletion_auc"],
            },
            {
                "check": "insertion AUC",
                "value": d["insertion_auc"],
                "meaning": f"random order: {d['random_insertion_auc']:.4f}",
                "pass if": "above random",
                "passed": d["insertion_auc"] > d["random_insertion_auc"],
            },
        ]
    )
    st.dataframe(table, hide_index=True, width="stretch")
    curves = pd.DataFrame(
        [
            {"fraction": f, "curve": name, "value": v}
            for name in ("deletion", "insertion")
            for f, v in zip(d["fractions"], d[name], strict=True)
        ]
    )
    st.altair_chart(charts.deletion_insertion_chart(curves), width="content")


def render() -> None:
    """Render the Saliency explorer."""
    st.title("Saliency explorer")
    run = state.current_run()
    try:
        model = state.run_model(run)
    except DomainClipError as exc:
        st.error(f"The model of run `{run.name}` cannot be loaded: {exc}")
        return
    left, right = st.columns([1, 2.4], gap="large")
    with left:
        source = st.radio("Image source", ["Run's manifest", "Upload"], horizontal=True)
        picked = _from_manifest(run) if source == "Run's manifest" else _from_upload()
        if picked is None:
            return
        st.image(picked.image, caption=picked.caption, width=220)
        if picked.report:
            st.caption(f"Report: {picked.report}")
        options = _prompt_options(run, picked)
        # A new image starts from its own report (A) and another class (B).
        a = _prompt_picker("Prompt A", options, 0, "prompt_a", picked.key)
        b = _prompt_picker("Prompt B", options, _default_b(options, picked), "prompt_b", picked.key)
        method = st.radio(
            "Method",
            list(model.methods),
            format_func=lambda m: METHOD_NAMES.get(m, m),
            horizontal=True,
        )
        alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05)
    with right:
        if not a or not b:
            st.info("Enter both prompts.")
            return
        try:
            _maps(run, picked, a, b, method, alpha)
        except DomainClipError as exc:
            st.error(str(exc))
            return
    _token_attribution(run, picked)
    _sanity(run, picked, a, method)


render()
