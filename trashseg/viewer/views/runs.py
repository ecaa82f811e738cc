"""Runs: MLflow runs and registered model versions of the tracking URI, with a link to its UI."""

from __future__ import annotations

import urllib.parse

import streamlit as st

from trashseg.secrets import redact
from trashseg.viewer.context import ViewerContext

LINEAGE_TAGS = ("kfp.run_id", "dataset_version", "architecture", "lineage", "stage")
MAX_RUNS = 200


@st.cache_data(ttl=30, show_spinner="Reading MLflow ...")
def runs_table(tracking_uri: str) -> tuple[list[dict], list[dict]]:
    """(runs, registry versions) as table rows; every metric and the lineage tags."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(list(experiments), max_results=MAX_RUNS, order_by=["attributes.start_time DESC"])
    run_rows = []
    for run in runs:
        tags = run.data.tags
        row = {"run": run.info.run_name, "run_id": run.info.run_id, "experiment": experiments[run.info.experiment_id],
               "status": run.info.status}
        row |= {tag: tags[tag] for tag in sorted(tags) if tag in LINEAGE_TAGS or tag.startswith("trashseg.")}
        row |= {f"metric {k}": round(v, 4) for k, v in sorted(run.data.metrics.items())}
        run_rows.append(row)
    version_rows = []
    for model in client.search_registered_models():
        aliases = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name='{model.name}'"):
            version_rows.append({"model": model.name, "version": version.version,
                                 "aliases": ", ".join(aliases.get(str(version.version), [])),
                                 "run_id": version.run_id, "status": version.status,
                                 **{f"tag {k}": v for k, v in sorted(version.tags.items())}})
    return run_rows, version_rows


def ui_link(tracking_uri: str) -> str:
    """Where the MLflow UI of `tracking_uri` is: the server itself, or how to start one.
    Credentials in the URI are not shown: the browser asks for them."""
    if tracking_uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(tracking_uri)
        return f"[Open the MLflow UI]({urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition('@')[2]))})"
    tracking_uri = redact(tracking_uri)
    return (f"The tracking store is a file; browse it with `mlflow ui --backend-store-uri {tracking_uri} "
            "--port 5000` and open [http://127.0.0.1:5000](http://127.0.0.1:5000)")


def render(ctx: ViewerContext) -> None:
    uri = ctx.sources.tracking_uri
    if not uri:
        st.info("No tracking URI given; start the viewer with --tracking-uri URI.")
        return
    st.markdown(ui_link(uri))
    runs, versions = runs_table(uri)
    st.subheader(f"{len(runs)} run(s)")
    if runs:
        st.dataframe(runs)
    st.subheader(f"{len(versions)} registered model version(s)")
    if versions:
        st.dataframe(versions)
