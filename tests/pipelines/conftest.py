"""The pipeline tests import `components` and `pipelines` from the repository root (they
are not part of the installed `trashseg` package), as `python -m pipelines.*` does."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
