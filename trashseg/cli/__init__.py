"""The `trashseg` command. Each area registers its subcommands from its own module.

The list below is the one place that says which modules contribute commands; heavy
imports (torch, mlflow) happen inside each command's function, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from trashseg.errors import UserError, printable
from trashseg.memory import reuse_freed_memory

COMMAND_MODULES = (
    "trashseg.cli.data",
    "trashseg.cli.engine",
    "trashseg.cli.recipe",
    "trashseg.cli.data_versions",
    "trashseg.cli.weights",
    "trashseg.cli.view",
)


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]; anything else is a usage error (exit 2)
    naming the range. Every numeric option has a ceiling (see `config.check_range`)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            if text.strip().lstrip("+-").isdigit():  # longer than Python converts: far out of range
                value = high + 1
            else:
                shown = text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"
                raise argparse.ArgumentTypeError(f"{shown!r} is not a whole number in [{low}, {high}]") from None
        if not low <= value <= high:
            shown = text if len(text) <= 40 else f"a number of {len(text)} digits"
            raise argparse.ArgumentTypeError(f"{shown} is out of range: expected [{low}, {high}]")
        return value

    return integer


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


class _PrintableFormatter(logging.Formatter):
    """One log record, one terminal line: control characters in the message (from a dataset's
    names) are escaped; a traceback, formatted apart, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def _redacting_excepthook(exc_type, exc, tb) -> None:
    """An unexpected error's traceback, as Python prints it, without URI passwords."""
    import traceback

    from trashseg.secrets import redact

    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


# The innermost call an OS error came from, in words: what the command was doing.
_OPERATIONS = {
    "mkdir": "create the folder", "makedirs": "create the folder", "open": "open", "io_open": "open",
    "read": "read", "read_text": "read", "read_bytes": "read", "readinto": "read",
    "write": "write", "write_text": "write", "write_bytes": "write", "flush": "write", "fsync": "write",
    "stat": "look up", "lstat": "look up", "exists": "look up", "is_file": "look up", "is_dir": "look up",
    "replace": "move into place", "rename": "move into place", "link": "link into place",
    "unlink": "remove", "rmdir": "remove", "rmtree": "remove", "remove": "remove",
    "copyfile": "copy", "copy": "copy", "copy2": "copy", "copyfileobj": "copy",
    "iterdir": "list", "scandir": "list", "listdir": "list", "rglob": "list", "glob": "list",
    "resolve": "resolve", "realpath": "resolve", "chmod": "change the permissions of",
}


def os_error_line(error: OSError, args: argparse.Namespace) -> str:
    """One line for an OS error no step anticipated: the path, what failed, what to do."""
    from trashseg.fileio import NO_SPACE_ERRNOS, free_space, os_error_fix
    from trashseg.secrets import redact

    command = " ".join(str(getattr(args, name)) for name in ("command", "data_command", "inbox_command")
                       if getattr(args, name, None))
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):  # a network fault, not a path
        return redact(f"trashseg {command}: network error ({error}): check the address and that the server "
                      "is running, then try again")
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    operation = _OPERATIONS.get(tb.tb_frame.f_code.co_name, "use") if tb is not None else "use"
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    if paths:
        what = f"cannot {operation} {' -> '.join(paths)}"
    else:  # e.g. a read() of an open file: name what the command was given
        given = [str(v) for v in vars(args).values() if isinstance(v, Path) or (isinstance(v, str) and os.path.exists(v))]
        what = f"cannot {operation} a file" + (f" (paths given: {', '.join(given)})" if given else "")
    if error.errno in NO_SPACE_ERRNOS and paths:
        what += f" ({free_space(Path(paths[0]).parent)} free there)"
    fix = os_error_fix(error)
    if error.errno == errno.EEXIST and paths and os.path.isfile(paths[0]):  # mkdir(parents=True) met a file
        fix = "it is a file where a folder is needed: choose a path whose parents are folders"
    return redact(f"trashseg {command}: {what}: {fix}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    reuse_freed_memory()
    sys.excepthook = _redacting_excepthook
    log = logging.getLogger("trashseg")
    try:
        result = args.func(args)
    except UserError as error:
        log.error("%s", error)
        return 2
    except OSError as error:  # an OS refusal (a path, a permission, a full disk) no step anticipated
        log.error("%s", os_error_line(error, args))
        log.debug("where it happened", exc_info=True)
        return 2
    return int(result or 0)
