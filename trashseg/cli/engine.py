"""`trashseg` subcommands for this area; see trashseg/cli/__init__.py."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands (each sets `func` to a function taking the parsed args)."""
