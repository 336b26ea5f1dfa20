"""Similar cases (Streamlit page script): the nearest indexed cases of an image or a text, with
thumbnails, reports and similarity, and a draft of report sentences retrieved from them.

Indexes are RUN/index/<name> (`domainclip index RUN ... --out RUN/index/<name>`); the query image
comes from the run's manifest or an upload (decoded in memory, never written). Neighbour images
are shown only when they lie in an allowed folder; stored fields are the index's (safe columns
only, groups as pseudonyms).
"""

from __future__ import annotations

import hashlib
from pathlib import PurePath

import streamlit as st

from domainclip.dashboard import saliency, state
from domainclip.dashboard.access import PathAccessError, RunRef
from domainclip.datasets.imageio import ImageReadError, load_image
from domainclip.errors import DomainClipError
from domainclip.retrieval.search import DRAFT_NOTE, SearchResult


def _query(run: RunRef):
    """(PIL image or None, text or None, cache key) chosen by the user, or None."""
    source = st.radio("Query", ["Run's manifest", "Upload", "Text"], horizontal=True)
    if source == "Text":
        text = st.text_input("Describe the case", "").strip()
        return (None, text, f"text:{text}") if text else None
    if source == "Upload":
        up = st.file_uploader("Upload an image (kept in memory only, never written to disk)",
                              type=list(saliency.UPLOAD_TYPES))
        if up is None:
            return None
        data = up.getvalue()
        try:
            return saliency.decode_upload(data), None, "upload:" + hashlib.sha256(data).hexdigest()
        except DomainClipError as exc:
            st.error(str(exc))
            return None
    path = state.run_manifest(run)
    if path is None or not path.is_file():
        st.warning("This run references no readable manifest; upload an image instead.")
        return None
    view = state.load_manifest_view(path)
    table = view.table
    idx = st.selectbox("Image", list(table.index), format_func=lambda i: (
        f"row {table.at[i, 'row']} · {table.at[i, 'split']} · {table.at[i, 'label'] or '(no label)'} · "
        f"{PurePath(str(table.at[i, 'image'])).name}"))
    try:
        img_path = state.listed_image(view, view.images[idx])
        return load_image(img_path), None, f"{img_path}:{state.mtime(img_path)}"
    except (PathAccessError, ImageReadError) as exc:
        st.error(str(exc))
        return None


def _neighbours(res: SearchResult) -> None:
    acc = state.access()
    for n in res.neighbours:
        left, right = st.columns([1, 4])
        try:
            path = acc.confine(n.image, "image")
            left.image(state.thumbnail(str(path), state.mtime(path)))
        except (PathAccessError, DomainClipError):
            left.caption("thumbnail withheld (image outside the runs directory and data roots)")
        right.markdown(f"**{n.rank}.** similarity **{n.score:.3f}** · {n.label or '(no label)'} · "
                       f"{n.split} · `{n.group or '-'}` · row {n.row}")
        right.text(n.excerpt())  # report text is data: shown as plain text, never as markdown


def render() -> None:
    """Render the Similar cases page."""
    st.title("Similar cases")
    run = state.current_run()
    names = state.index_names(run)
    if not names:
        st.info("This run has no case index yet. Build one with\n\n```\ndomainclip index "
                f"{run.path} --data MANIFEST --split train --out {run.path}/index/train\n```")
        return
    name = st.selectbox("Index", names, help="folders under RUN/index/")
    query = _query(run)
    if query is None:
        return
    image, text, key = query
    k = st.slider("Neighbours", 1, 20, 5)
    draft = image is not None and st.toggle("Draft from the neighbours' reports", value=True)
    try:
        res = state.similar_cases(run, name, key, image, text, k, draft)
    except (DomainClipError, PathAccessError) as exc:
        st.error(str(exc))
        return
    if image is not None:
        st.image(image, caption="query", width=160)
    st.caption(f"{res.index_rows} cases in the index · {res.note}" if res.note else f"{res.index_rows} cases in the index")
    _neighbours(res)
    if res.draft:
        st.subheader("Draft (retrieved, not generated)")
        st.caption(DRAFT_NOTE)
        for s in res.draft:
            st.text(f"{s.rank}. {s.sentence}\n   score {s.score:.3f} · from case {s.source_rank} ({s.source_case})")


render()
