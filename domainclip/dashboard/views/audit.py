"""Framing audit page (Streamlit page script): does the score swing with how a finding is worded?"""

from __future__ import annotations

import streamlit as st

from domainclip.dashboard import state

st.title("Framing audit")
run = state.current_run()
st.info(
    f"Run `{run.name}` has no framing audit yet. Produce one with\n\n"
    f"```\ndomainclip audit {run.path} --spec SPEC\n```"
)
