"""Data page (Streamlit page script): browse a manifest referenced by a run.

Thumbnails with their reports, filters by label / split / group / metadata, class balance, and
the rows that reading or validation skipped or flagged.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from domainclip.dashboard import charts, manifests, state
from domainclip.dashboard.access import PathAccessError
from domainclip.datasets.imageio import ImageReadError
from domainclip.datasets.textquality import TextQuality
from domainclip.privacy import hidden_note

GALLERY_PAGE = 12
GALLERY_COLUMNS = 4


def _pick_manifest() -> Path | None:
    acc = state.access()
    run = state.current_run()
    default = state.run_manifest(run)  # a manifest outside the allowed folders: error shown
    referenced = acc.manifests()
    if not referenced:
        st.warning(
            "No run references a manifest that the dashboard may read (config.yaml "
            "`data.manifest`, inside the runs directory or a `--data-root`)."
        )
        return None
    paths = sorted(referenced)
    index = paths.index(default) if default in paths else 0
    chosen = st.selectbox(
        "Manifest",
        paths,
        index=index,
        format_func=lambda p: f"{p}  (runs: {', '.join(referenced[p])})",
        help="manifests referenced by the runs in this directory",
    )
    if not chosen.is_file():
        st.error(f"The manifest {chosen} no longer exists.")
        return None
    return chosen


def _filters(view: manifests.ManifestView) -> dict:
    table = view.table
    c1, c2, c3 = st.columns(3)
    labels = c1.multiselect("Label", manifests.labels_of(table))
    splits = c2.multiselect("Split", sorted(table["split"].unique()))
    groups = c3.multiselect(
        "Group (pseudonymised)", sorted(g for g in table["group"].unique() if g)
    )
    meta_filters: dict[str, list[str]] = {}
    options = manifests.filterable_meta(view)
    if options:
        cols = st.columns(min(len(options), 4))
        for i, (column, values) in enumerate(options.items()):
            meta_filters[column] = cols[i % len(cols)].multiselect(f"{column}", values)
    text = st.text_input("Report contains", placeholder="e.g. scratch")
    return {
        "labels": labels,
        "splits": splits,
        "groups": groups,
        "meta": meta_filters,
        "text_contains": text,
    }


def _gallery(view: manifests.ManifestView, shown) -> None:
    n = len(shown)
    pages = max(1, -(-n // GALLERY_PAGE))
    page = int(st.number_input(f"Gallery page (of {pages})", 1, pages, 1)) if pages > 1 else 1
    chunk = shown.iloc[(page - 1) * GALLERY_PAGE : page * GALLERY_PAGE]
    cols = st.columns(GALLERY_COLUMNS)
    for i, (idx, rec) in enumerate(chunk.iterrows()):
        col = cols[i % GALLERY_COLUMNS]
        path = view.images[idx]
        try:
            col.image(
                state.thumbnail(str(state.listed_image(view, path)), state.mtime(path)),
                caption=f"row {rec['row']} · {rec['label'] or '(no label)'} · {rec['split']}",
            )
        except ImageReadError as exc:
            col.error(f"row {rec['row']}: {exc.reason}")
        except PathAccessError as exc:
            col.error(f"row {rec['row']}: {exc}")
        col.caption(rec["text"])


def _problems(view: manifests.ManifestView, path: Path) -> None:
    st.subheader("Skipped and flagged rows")
    with st.spinner("Validating every row (decoding each image once)..."):
        report = state.validation(view, path)
    c1, c2, c3 = st.columns(3)
    c1.metric("Rows in file", report["n_rows"])
    c2.metric("Usable rows", report["n_usable"])
    c3.metric("Skipped rows", report["n_skipped"])
    for err in report["errors"]:
        st.error(err)
    if report["skips"] or report["warnings"]:
        rows = [
            {
                "kind": kind,
                "severity": sev,
                "rows": len(nums),
                "row numbers": ", ".join(map(str, nums[:20])),
            }
            for sev, table in (("skip", report["skips"]), ("warning", report["warnings"]))
            for kind, nums in table.items()
        ]
        st.dataframe(rows, hide_index=True, width="stretch")
        if state.show_paths():
            with st.expander("Example messages"):
                for kind, messages in report["examples"].items():
                    for m in messages:
                        st.text(f"[{kind}] {m}")
        else:  # the messages name image files (privacy.image_name): rows above instead
            st.caption("Example messages name image files; start the dashboard with --show-paths to see them.")
    else:
        st.success("Every row is usable: no skipped or flagged rows.")
    quality = report.get("text_quality")
    if quality and quality.get("flagged"):
        st.subheader("Text quality")
        st.text("\n".join(TextQuality.from_dict(quality).format()))


def render() -> None:
    """Render the Data page."""
    st.title("Data")
    path = _pick_manifest()
    if path is None:
        return
    view = state.load_manifest_view(path)
    if view.hidden_columns:
        st.info(hidden_note(view.hidden_columns))
    stats = state.manifest_stats(path)
    cols = st.columns(len(stats["splits"]) + 1)
    cols[0].metric("Rows read", stats["n_rows"], help="rows the manifest reader accepted")
    for col, (split, n) in zip(cols[1:], stats["splits"].items(), strict=True):
        col.metric(f"{split} rows", n)
    st.altair_chart(charts.class_balance_chart(stats["class_balance"]), width="stretch")

    st.subheader("Browse")
    shown = manifests.filter_table(view.table, **_filters(view))
    st.caption(f"{len(shown)} of {len(view.table)} rows match the filters")
    st.dataframe(shown, hide_index=True, width="stretch")
    _gallery(view, shown)
    _problems(view, path)


render()
