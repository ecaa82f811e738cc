"""The one atomic writer and the one credential redaction everything else uses."""

import errno
import logging

import pytest

from trashseg.errors import OutputError, UserError
from trashseg.fileio import atomic_write, remove_partials, write_text
from trashseg.secrets import install_log_redaction, redact, redact_values


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "sub" / "file.txt"
    write_text(dest, "old")
    with pytest.raises(OutputError) as raised, atomic_write(dest, "w") as handle:
        handle.write("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert dest.read_text() == "old"
    assert list(dest.parent.iterdir()) == [dest], "no partial left"
    error = raised.value
    assert isinstance(error, UserError) and isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(error).startswith(f"cannot write {dest}: No space left on device (")
    assert "free in" in str(error) and "free some space" in str(error)
    with pytest.raises(KeyError), atomic_write(dest) as handle:  # any error: nothing replaced
        handle.write(b"x")
        raise KeyError("bug")
    assert dest.read_text() == "old"
    # what a killed write leaves is found and removed
    leftover = dest.with_name(".file.txt.99-abcdef01.partial")
    leftover.write_text("x")
    assert remove_partials(dest) == [leftover] and not leftover.exists()


def test_redaction_of_uris_values_and_log_records(caplog):
    assert redact("at http://alice:pw@host:5000/x and s3://k:s@b") == "at http://alice:***@host:5000/x and s3://k:***@b"
    assert redact("http://host:5000 sqlite:////tmp/a@b/mlflow.db user@host") == "http://host:5000 sqlite:////tmp/a@b/mlflow.db user@host"
    assert redact("uri=https://ghp_abc123@mlflow.example:443/x") == "uri=https://***@mlflow.example:443/x"
    assert redact("HTTP://tok@h and http://u:p@h") == "HTTP://***@h and http://u:***@h"
    assert redact_values({"tracking": {"uri": "https://u:p@h"}, "list": ["http://a:b@c"], "n": 1}) == {
        "tracking": {"uri": "https://u:***@h"}, "list": ["http://a:***@c"], "n": 1
    }
    install_log_redaction()
    install_log_redaction()  # idempotent
    logger = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        logger.info("connecting to %s", "http://alice:pw123@host")
        try:
            raise ValueError("bad http://alice:pw123@host")
        except ValueError:
            logger.exception("failed")
    assert "pw123" not in caplog.text and "alice:***@host" in caplog.text
