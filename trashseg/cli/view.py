"""`trashseg view`: the web viewer (Streamlit) for a dataset, predictions, stages and submissions.

    trashseg view DATA [--predictions DIR ...] [--ensemble DIR] [--submission CSV]
                       [--tracking-uri URI] [--port 8501] [--address 127.0.0.1]
    trashseg view --demo runs/demo      # the newest `make demo` run's outputs

Locations may be local or s3:// (fetched once into a cache, credentials from the environment).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from trashseg.cli import int_in
from trashseg.errors import UserError

DEFAULT_PORT = 8501


def register(subparsers: argparse._SubParsersAction) -> None:
    view = subparsers.add_parser(
        "view", help="web viewer for data, augmentations, predictions, submissions and runs",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    view.add_argument("data", nargs="?", metavar="DATA", help="prepared dataset folder (local or s3://)")
    view.add_argument("--predictions", nargs="+", default=[], metavar="DIR", help="prediction folders (one model, one split each)")
    view.add_argument("--ensemble", metavar="DIR", help="an ensemble output folder (stages/<stage>/<split>)")
    view.add_argument("--submission", metavar="CSV", help="a submission CSV")
    view.add_argument("--tracking-uri", help="MLflow tracking URI for the Runs page")
    view.add_argument("--demo", metavar="OUT", help="use the newest `make demo` run under OUT instead of DATA ...")
    view.add_argument("--port", type=int_in(1, 65535), default=DEFAULT_PORT, help="TCP port, 1 to 65535")
    view.add_argument("--address", default="127.0.0.1", help="interface to listen on (0.0.0.0 in a container)")
    view.set_defaults(func=view_command)


def sources_from_args(args: argparse.Namespace):
    from trashseg.viewer.sources import ViewerSources, latest_demo_sources

    if args.demo:
        found = latest_demo_sources(args.demo)
        return ViewerSources(
            data=args.data or found.data,
            predictions=tuple(args.predictions) or found.predictions,
            ensemble=args.ensemble or found.ensemble,
            submission=args.submission or found.submission,
            tracking_uri=args.tracking_uri or found.tracking_uri,
        )
    if not args.data:
        raise UserError("trashseg view: DATA (a prepared dataset folder) is required, or --demo OUT")
    return ViewerSources(args.data, tuple(args.predictions), args.ensemble, args.submission, args.tracking_uri)


def server_command(port: int, address: str) -> list[str]:
    """The `streamlit run` command line for the app (headless: no browser, no telemetry)."""
    app = Path(__file__).resolve().parents[1] / "viewer" / "app.py"
    return [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.port", str(port), "--server.address", address, "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "viewer",
    ]


def view_command(args: argparse.Namespace) -> int:
    from trashseg.viewer.sources import SOURCES_ENV

    sources = sources_from_args(args)
    sources.check_local()
    env = dict(os.environ, **{SOURCES_ENV: sources.to_json()})
    print(f"trashseg viewer on http://{args.address}:{args.port} (data: {sources.data}); Ctrl-C stops it", flush=True)
    try:
        return subprocess.call(server_command(args.port, args.address), env=env)
    except KeyboardInterrupt:
        return 0
