"""Streamlit dashboard over a directory of fine-tuning runs.

Pages: Runs, Data, Saliency explorer, Framing audit, Similar cases, Calibration (see docs/DESIGN.md).
`domainclip dashboard --runs DIR [--data-root DIR ...] [--show-column NAME ...]` starts it; the
settings reach the app through environment variables (Streamlit re-executes the app script on
every interaction, so the environment is the one input every rerun sees unchanged): `RUNS_ENV`
(the runs directory), `DATA_ROOTS_ENV` (data roots joined by `os.pathsep`) and `SHOW_COLUMNS_ENV`
(a JSON list of metadata columns the user allowed, see `domainclip.privacy`) and
`SHOW_PATHS_ENV` ("1" with `--show-paths`: image paths shown; otherwise images are named by
manifest row, `privacy.image_name`).

Everything the app reads goes through `domainclip.dashboard.access.RunsAccess`, which only opens
files inside the runs directory and the data roots.
"""

RUNS_ENV = "DOMAINCLIP_DASHBOARD_RUNS"
DATA_ROOTS_ENV = "DOMAINCLIP_DASHBOARD_DATA_ROOTS"
SHOW_COLUMNS_ENV = "DOMAINCLIP_DASHBOARD_SHOW_COLUMNS"
SHOW_PATHS_ENV = "DOMAINCLIP_DASHBOARD_SHOW_PATHS"

__all__ = ["DATA_ROOTS_ENV", "RUNS_ENV", "SHOW_COLUMNS_ENV", "SHOW_PATHS_ENV"]
