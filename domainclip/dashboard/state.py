"""Streamlit glue shared by the pages: the runs directory, the selected run, cached loaders.

Loaders take a file's modification time as an extra argument so that Streamlit's cache key
changes when a run is updated (a new evaluation, a resumed training) while the app is open.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import streamlit as st
from PIL import Image

from domainclip import privacy
from domainclip.audit.results import AuditReport
from domainclip.dashboard import (
    DATA_ROOTS_ENV,
    RUNS_ENV,
    SHOW_COLUMNS_ENV,
    SHOW_PATHS_ENV,
    auditdata,
    calibdata,
    cases,
    manifests,
    runinfo,
    saliency,
)
from domainclip.dashboard.access import PathAccessError, RunRef, RunsAccess
from domainclip.errors import DataError, ResultFileError
from domainclip.evaluation.results import EvaluationResult
from domainclip.retrieval.index import INDEX_FILE
from domainclip.runs.layout import CONFIG_FILE, INDEX_DIR, METRICS_FILE, RESULT_FILE

RUN_KEY = "domainclip_run"
log = logging.getLogger(__name__)
T = TypeVar("T")


def mtime(path: Path) -> int:
    """Modification time in ns (0 when the file is missing), used as a cache-key component."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(show_spinner=False)
def _access(root: str, data_roots: tuple[str, ...]) -> RunsAccess:
    return RunsAccess(root, data_roots)


def data_roots() -> tuple[str, ...]:
    """The `--data-root` folders the app was started with (from `DATA_ROOTS_ENV`)."""
    return tuple(d for d in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if d)


def shown_columns() -> tuple[str, ...]:
    """Metadata columns the user allowed with `--show-column` (from `SHOW_COLUMNS_ENV`)."""
    try:
        names = json.loads(os.environ.get(SHOW_COLUMNS_ENV, "") or "[]")
    except ValueError:
        names = []
    return tuple(str(n) for n in names) if isinstance(names, list) else ()


def show_paths() -> bool:
    """True when the user started the dashboard with `--show-paths` (`SHOW_PATHS_ENV`)."""
    return os.environ.get(SHOW_PATHS_ENV, "") == "1"


@st.cache_resource(show_spinner=False)
def _pseudonym_key(root: str) -> bytes:
    return privacy.session_key(root)


def pseudonym(group: str) -> str:
    """Keyed pseudonym of a group id (key kept in the runs directory, `privacy.pseudonym_key`)."""
    return privacy.pseudonym(group, _pseudonym_key(str(access().root)))


def access() -> RunsAccess:
    """The read guard for the runs directory this app was started on (stops the page if none)."""
    root = os.environ.get(RUNS_ENV, "")
    if not root:
        st.error(
            f"No runs directory given. Start the app with `domainclip dashboard --runs DIR` "
            f"(or set {RUNS_ENV})."
        )
        st.stop()
    try:
        return _access(root, data_roots())
    except PathAccessError as exc:
        st.error(str(exc))
        st.stop()


def run_picker() -> None:
    """Sidebar selector of the current run, shared by every page through session state."""
    acc = access()
    names = [r.name for r in acc.runs()]
    st.sidebar.caption(f"Runs directory: `{acc.root}`")
    if not names:
        st.sidebar.warning("No runs found (folders with config.yaml).")
        return
    if st.session_state.get(RUN_KEY) not in names:
        st.session_state[RUN_KEY] = names[0]
    st.sidebar.selectbox("Run", names, key=RUN_KEY, help="the run every page shows")


def current_run() -> RunRef:
    """The run picked in the sidebar (stops the page with a message when there is none)."""
    acc = access()
    name = st.session_state.get(RUN_KEY)
    if not name:
        st.info(
            f"No fine-tuning runs in `{acc.root}`. Create one with "
            "`domainclip finetune CONFIG --out RUN` or `domainclip demo`."
        )
        st.stop()
    return acc.run(name)


def run_manifest(run: RunRef) -> Path | None:
    """The manifest the run was trained on, checked by the read guard; None if it has none or
    may not read it (then the reason, naming `--data-root`, is on the page)."""
    acc = access()
    try:
        path = acc.manifest_of(run)
        return None if path is None else acc.manifest(path)
    except PathAccessError as exc:
        st.error(str(exc))
        return None


# ---------------------------------------------------------------------------------- cached data


@st.cache_data(show_spinner=False, max_entries=256)
def _run_summary(name: str, run_dir: str, tokens: tuple[int, ...]) -> runinfo.RunSummary:
    return runinfo.summarise_run(name, Path(run_dir))


def run_summary(run: RunRef) -> runinfo.RunSummary:
    """Cached summary of a run (re-read when config.yaml or metrics.jsonl change)."""
    acc = access()
    config = acc.run_file(run, CONFIG_FILE)
    files = (config, *(acc.run_file(run, f) for f in (METRICS_FILE, RESULT_FILE)))
    return _run_summary(run.name, str(run.path), tuple(mtime(f) for f in files))


@st.cache_data(show_spinner=False, max_entries=16)
def _manifest_stats(path: str, token: int) -> dict:
    from domainclip.datasets.stats import manifest_stats

    return manifest_stats(path)


def manifest_stats(path: Path) -> dict:
    """Cached `manifest_stats` of an allowed manifest."""
    return _manifest_stats(str(access().manifest(path)), mtime(path))


@st.cache_data(show_spinner="Reading the manifest...", max_entries=16)
def manifest_view(path: str, token: int) -> manifests.ManifestView:
    """Cached `manifests.manifest_view` (token: the manifest's mtime) with the app's pseudonym
    key and allowed columns."""
    key = _pseudonym_key(str(access().root))
    return manifests.manifest_view(Path(path), key, shown_columns(), show_paths())


def load_manifest_view(path: Path) -> manifests.ManifestView:
    """The display view of an allowed manifest (re-read when the file changes).

    A file that is not a readable manifest stops the page with a short message; the reader's
    detail (which may quote the file's first line) goes to the server log only.
    """
    try:
        return manifest_view(str(access().manifest(path)), mtime(path))
    except DataError as exc:
        log.warning("manifest %s cannot be read: %s", path, exc)
        st.error(
            f"The manifest {path} cannot be read (it is not a domainclip manifest, or it is "
            f"damaged). Check it with `domainclip data validate {path}`."
        )
        st.stop()


@st.cache_data(show_spinner=False, max_entries=4096)
def thumbnail(path: str, token: int) -> bytes:
    """Cached PNG thumbnail of a listed image."""
    return manifests.thumbnail_png(Path(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _validation(path: str, token: int, decode: bool) -> dict:
    return manifests.validation_summary(Path(path), check_images=decode)


def validation(view: manifests.ManifestView, path: Path) -> dict:
    """Cached `validate_manifest` summary (decodes every image once per manifest version).

    Images are decoded only when every file the manifest lists lies in an allowed folder;
    otherwise the summary says how many lie elsewhere and nothing is decoded.
    """
    outside = []
    for f in view.listed_files:
        try:
            access().confine(f)
        except PathAccessError:
            outside.append(f)
    report = _validation(str(path), mtime(path), not outside)
    if outside:
        report = {
            **report,
            "errors": [
                *report["errors"],
                f"{len(outside)} file(s) the manifest lists lie outside the runs directory and "
                "the data roots; images were not decoded. Start the dashboard with "
                "`--data-root DIR` naming the folder that holds them.",
            ],
        }
    return report


def pick_result(
    label: str, folder: str, names: list[str], load: Callable[[str], T], missing: tuple[str, str]
) -> tuple[str, T] | None:
    """A select box over a run's result folders (RUN/`folder`/<name>) and the chosen result
    file, read by `load`.

    None, with the message on the page, when there is none (`missing`: what to say and the
    command that produces one) or the file cannot be used: a warning for an older (or newer)
    file, an error for a damaged one, naming the file and the command that writes it again.
    """
    if not names:
        st.info(f"{missing[0]}\n\n```\n{missing[1]}\n```")
        return None
    name = st.selectbox(label, names, help=f"folders under RUN/{folder}/")
    try:
        return name, load(name)
    except ResultFileError as exc:
        (st.warning if exc.outdated else st.error)(str(exc))
        return None


def _inside(run: RunRef, names: list[str], relative: str) -> list[str]:
    """The `names` whose result file (`relative` with {name} filled in) really lies inside the
    run: links out of it are left out."""
    out = []
    for name in names:
        try:
            access().run_file(run, relative.format(name=name))
        except PathAccessError:
            continue
        out.append(name)
    return out


_EVALUATION = f"{calibdata.EVAL_DIR}/{{name}}/{calibdata.EVAL_METRICS}"
_AUDIT = f"{auditdata.AUDIT_DIR}/{{name}}/{auditdata.AUDIT_JSON}"


@st.cache_data(show_spinner=False, max_entries=256)
def _result(kind: str, path: str, token: int, command: str) -> EvaluationResult | AuditReport:
    """A checked result file (token: its mtime, so a rewritten file is read again)."""
    reader = EvaluationResult if kind == "evaluation" else AuditReport
    return reader.read(Path(path), command)


def evaluation_names(run: RunRef) -> list[str]:
    """Evaluations of the run whose folder really lies inside it."""
    return _inside(run, calibdata.evaluation_names(run.path), _EVALUATION)


def evaluation(run: RunRef, name: str) -> EvaluationResult:
    """RUN/eval/<name>/metrics.json, checked (ResultFileError when it cannot be used)."""
    path = access().run_file(run, _EVALUATION.format(name=name))
    command = f"domainclip evaluate {run.path} --fit-temperature"
    return _result("evaluation", str(path), mtime(path), command)


def audit_names(run: RunRef) -> list[str]:
    """Audits of the run whose folder really lies inside it."""
    return _inside(run, auditdata.audit_names(run.path), _AUDIT)


def audit(run: RunRef, name: str) -> AuditReport:
    """RUN/audit/<name>/audit.json, checked (ResultFileError when it cannot be used)."""
    path = access().run_file(run, _AUDIT.format(name=name))
    return _result("audit", str(path), mtime(path), f"domainclip audit {run.path} --spec {name}")


@st.cache_data(show_spinner=False, max_entries=64)
def _score_shifts(path: str, token: int, reference: str):
    return auditdata.score_shifts(Path(path).read_bytes(), reference)


def score_shifts(run: RunRef, name: str, reference: str):
    """Per-image score shifts of an audit (from its scores.csv)."""
    path = access().run_file(run, f"{auditdata.AUDIT_DIR}/{name}/{auditdata.SCORES_CSV}")
    return _score_shifts(str(path), mtime(path), reference)


def result_manifest_view(path: Path) -> manifests.ManifestView:
    """Display view of a manifest named by a run's result file (`RunsAccess.result_manifest`)."""
    return manifest_view(str(path), mtime(path))


# ---------------------------------------------------------------------------------- model + maps


@st.cache_resource(show_spinner="Loading the run's model (once per checkpoint)...", max_entries=2)
def _run_model(run_dir: str, token: int) -> saliency.LoadedModel:
    return saliency.load_run_model(Path(run_dir))


def run_model(run: RunRef) -> saliency.LoadedModel:
    """The run's model, loaded once and shared by every session (re-loaded if `best` changes)."""
    best = access().run_file(run, "checkpoints/best")
    return _run_model(str(run.path), mtime(best))


@st.cache_data(show_spinner=False, max_entries=512)
def saliency_map(
    run_dir: str, token: int, image_key: str, _image: Image.Image, prompt: str, method: str
) -> saliency.MapResult:
    """Cached map per (run checkpoint, image, prompt, method); `_image` is keyed by `image_key`."""
    return saliency.compute_map(_run_model(run_dir, token), _image, prompt, method)


@st.cache_data(show_spinner=False, max_entries=256)
def token_attribution(
    run_dir: str, token: int, image_key: str, _image: Image.Image, text: str
) -> tuple[str, dict]:
    """Cached token attribution (HTML, numbers) of `text` against the image."""
    return saliency.token_attribution_html(_run_model(run_dir, token), _image, text)


@st.cache_data(show_spinner=False, max_entries=128)
def sanity(
    run_dir: str, token: int, image_key: str, _image: Image.Image, prompt: str, method: str
) -> dict:
    """Cached sanity-check numbers of the map for (image, prompt, method)."""
    smap = saliency_map(run_dir, token, image_key, _image, prompt, method).map
    return saliency.sanity_numbers(_run_model(run_dir, token), _image, prompt, method, smap)


def model_token(run: RunRef) -> int:
    """Cache-key component that changes when the run's best checkpoint is rewritten."""
    return mtime(access().run_file(run, "checkpoints/best"))


# ---------------------------------------------------------------------------------- similar cases


def index_names(run: RunRef) -> list[str]:
    """Case indexes of the run (RUN/index/<name>) whose folder really lies inside it."""
    return _inside(run, cases.index_names(run.path), f"{INDEX_DIR}/{{name}}/{INDEX_FILE}")


@st.cache_data(show_spinner="Searching...", max_entries=256)
def _similar(run_dir: str, index_dir: str, token: tuple[int, int], query_key: str, _image: Image.Image | None,
             text: str | None, k: int, draft: bool):
    from domainclip.retrieval.search import CaseSearcher, search_index
    from domainclip.runs import ResolvedModel, Run

    # The run's one shared model (the saliency pages' too), used under its lock: a map running in
    # another session has temporary hooks on it.
    model = _run_model(run_dir, token[0])
    resolved = ResolvedModel(model.bb, Run(run_dir), model.calibrator, run_dir, "run", model.preprocess)
    # the Milvus Lite folder is opened per search and closed again, so `domainclip index` can add
    # to it while the dashboard runs
    with model.lock, CaseSearcher(index_dir, resolved=resolved) as searcher:
        res = search_index(index_dir, image=_image, text=text, k=k, draft=draft, searcher=searcher)
    if _image is not None:
        res.query["image"] = query_key
    return res


def similar_cases(run: RunRef, name: str, query_key: str, image: Image.Image | None, text: str | None,
                  k: int, draft: bool):
    """Neighbours (and draft) of an image or a text in the run's index `name` (cached per index
    version, checkpoint and query). PathAccessError/ConfigError when the page may not use it."""
    index = access().run_file(run, f"{INDEX_DIR}/{name}")
    cases.usable_index(index, run.path)
    token = (model_token(run), mtime(index / INDEX_FILE))
    return _similar(str(run.path), str(index), token, query_key, image, text, k, draft)


def listed_image(view: manifests.ManifestView, path: str | Path) -> Path:
    """`path` if the manifest lists it (image or mask) and it lies in an allowed folder, else
    PathAccessError."""
    return access().listed_file(path, view.listed_files)


__all__ = [
    "PathAccessError",
    "access",
    "current_run",
    "listed_image",
    "load_manifest_view",
    "manifest_stats",
    "mtime",
    "run_manifest",
    "run_picker",
    "run_summary",
    "thumbnail",
    "validation",
]
