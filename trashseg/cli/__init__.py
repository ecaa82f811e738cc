"""The `trashseg` command. Each area registers its subcommands from its own module.

The list below is the one place that says which modules contribute commands; heavy
imports (torch, mlflow) happen inside each command's function, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from trashseg.errors import UserError
from trashseg.memory import reuse_freed_memory

COMMAND_MODULES = (
    "trashseg.cli.data",
    "trashseg.cli.engine",
    "trashseg.cli.recipe",
    "trashseg.cli.data_versions",
    "trashseg.cli.weights",
    "trashseg.cli.view",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trashseg",
        description="Train, compare and ensemble semantic segmentation models on COCO data.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def configure_logging(verbose: bool) -> None:
    from trashseg.secrets import install_log_redaction

    install_log_redaction()  # no URI password in any log line, ours or a library's
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _redacting_excepthook(exc_type, exc, tb) -> None:
    """An unexpected error's traceback, as Python prints it, without URI passwords."""
    import traceback

    from trashseg.secrets import redact

    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    reuse_freed_memory()
    sys.excepthook = _redacting_excepthook
    try:
        result = args.func(args)
    except UserError as error:
        logging.getLogger("trashseg").error("%s", error)
        return 2
    return int(result or 0)
