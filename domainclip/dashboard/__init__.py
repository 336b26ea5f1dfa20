"""Streamlit dashboard over a directory of fine-tuning runs.

Pages: Runs, Data, Saliency explorer, Framing audit, Calibration (see docs/DESIGN.md).
`domainclip dashboard --runs DIR` starts it; the runs directory reaches the app through the
environment variable named by `RUNS_ENV` (Streamlit re-executes the app script on every
interaction, so an environment variable is the one input every rerun sees unchanged).

Everything the app reads goes through `domainclip.dashboard.access.RunsAccess`, which only opens
files inside the runs directory and the manifests (and the images they list) referenced by runs.
"""

RUNS_ENV = "DOMAINCLIP_DASHBOARD_RUNS"

__all__ = ["RUNS_ENV"]
