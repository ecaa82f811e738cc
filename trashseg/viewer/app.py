"""The Streamlit entry point (`streamlit run` runs this file; `trashseg view` starts it).

The page is chosen in the sidebar and mirrored in the `?page=` query parameter, so a
page has its own link (and the browser test can open each one directly).
"""

from __future__ import annotations

import importlib

import streamlit as st

from trashseg.viewer.views import PAGES


def main() -> None:
    from trashseg.viewer.context import context

    st.set_page_config(page_title="trashseg viewer", layout="wide")
    names = list(PAGES)
    requested = st.query_params.get("page", names[0])
    page = st.sidebar.radio("Page", names, index=names.index(requested) if requested in names else 0)
    st.query_params["page"] = page
    ctx = context()
    st.sidebar.caption(f"data: {ctx.sources.data}")
    st.title(page)
    importlib.import_module(PAGES[page]).render(ctx)


main()
