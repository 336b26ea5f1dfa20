"""Streamlit entry script of the domainclip dashboard (`domainclip dashboard` runs it).

Streamlit re-executes this file on every interaction: it sets up the page, lets the user pick a
run in the sidebar (shared by all pages through session state) and runs the selected page
script from `views/`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from domainclip.dashboard import state

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="domainclip dashboard", page_icon=":microscope:", layout="wide")

pages = [
    st.Page(
        VIEWS / "runs.py",
        title="Runs",
        icon=":material/folder_open:",
        url_path="runs",
        default=True,
    ),
    st.Page(VIEWS / "data.py", title="Data", icon=":material/table:", url_path="data"),
    st.Page(
        VIEWS / "saliency.py",
        title="Saliency explorer",
        icon=":material/visibility:",
        url_path="saliency",
    ),
    st.Page(VIEWS / "audit.py", title="Framing audit", icon=":material/rule:", url_path="audit"),
    st.Page(
        VIEWS / "similar.py",
        title="Similar cases",
        icon=":material/image_search:",
        url_path="similar",
    ),
    st.Page(
        VIEWS / "calibration.py",
        title="Calibration",
        icon=":material/tune:",
        url_path="calibration",
    ),
]
navigation = st.navigation(pages)
state.run_picker()
navigation.run()
