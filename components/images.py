"""The container images pipeline tasks run in: one place, tagged by version or git SHA.

Two images (built by `make build-images`, see images/): `trashseg-base` (CPU: data prep,
evaluation, ensemble/CRF, submission, registry) and `trashseg-train` (CUDA: training and
prediction). Components default to `DEFAULT_IMAGES`; `make compile` passes the Makefile's
REGISTRY and VERSION to `python -m pipelines.compile`, which builds the pipelines with
`Images(registry, tag)`. Nothing here reads the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import trashseg

DEFAULT_REGISTRY = "ghcr.io/trashseg"
# Local runs and tests use the package version; cluster builds use the git SHA.
DEFAULT_TAG = trashseg.__version__

# Docker's tag grammar; `latest` is refused because a moving tag makes runs unrepeatable
# and KFP's cache (keyed on image names) serve results of a different image.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?")


@dataclass(frozen=True)
class Images:
    registry: str = DEFAULT_REGISTRY
    tag: str = DEFAULT_TAG

    def __post_init__(self) -> None:
        if not _REGISTRY.fullmatch(self.registry):
            raise ValueError(
                f"image registry {self.registry!r} is not a valid registry/namespace "
                "(lower case, e.g. ghcr.io/trashseg or localhost:5000/trashseg; no trailing slash)"
            )
        if not _TAG.fullmatch(self.tag) or self.tag == "latest":
            raise ValueError(
                f"image tag {self.tag!r} is not allowed; use the version or git SHA the images were "
                "built with (make build-images VERSION=...), never 'latest'"
            )

    @property
    def base(self) -> str:
        """CPU image: data, evaluation, ensemble/CRF, submission, registry."""
        return f"{self.registry}/trashseg-base:{self.tag}"

    @property
    def train(self) -> str:
        """CUDA image: training and prediction."""
        return f"{self.registry}/trashseg-train:{self.tag}"

    def all(self) -> tuple[str, str]:
        return (self.base, self.train)


DEFAULT_IMAGES = Images()
