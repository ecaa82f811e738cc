"""Compile both pipelines to KFP IR YAML: `python -m pipelines.compile` (make compile).

    python -m pipelines.compile --registry ghcr.io/trashseg --version 1a2b3c4 [--engine trainjob|pod] [--nodes 1]
                                [--gpus 1] [--max-iterations N] [--out build]

The image registry and tag come from these arguments only (the Makefile passes its
REGISTRY and VERSION); the pipeline definitions never read the environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.images import DEFAULT_REGISTRY, DEFAULT_TAG, Images
from pipelines.cluster import ENGINES, ClusterSettings

PIPELINE_FILES = {"full": "full.yaml", "retrain": "retrain.yaml"}


def compile_pipelines(out_dir: str | Path, settings: ClusterSettings) -> dict[str, Path]:
    from kfp import compiler

    from pipelines.full import build_full_pipeline
    from pipelines.retrain import build_retrain_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builds = {"full": build_full_pipeline(settings), "retrain": build_retrain_pipeline(settings)}
    written = {}
    for name, pipeline in builds.items():
        path = out_dir / PIPELINE_FILES[name]
        compiler.Compiler().compile(pipeline, str(path))
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", default=DEFAULT_REGISTRY, help=f"image registry/namespace (default {DEFAULT_REGISTRY})")
    parser.add_argument("--version", default=DEFAULT_TAG, help="image tag: the git SHA or version the images were built with")
    parser.add_argument(
        "--engine", choices=ENGINES, default="trainjob",
        help="trainjob: each training runs as a Kubeflow Trainer TrainJob launched by a CPU task (needs Trainer "
        "v2.3 and the with-trainer overlay); pod: in the KFP task's own GPU pod (default trainjob)",
    )
    parser.add_argument("--nodes", type=int, default=1, help="nodes per TrainJob, ENGINE=trainjob only (default 1)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per training node / prediction task (default 1)")
    parser.add_argument(
        "--max-iterations", type=int, default=0,
        help="size the training retry window for runs of up to N iterations (default: the pipelines' defaults)",
    )
    parser.add_argument("--out", default="build", help="output folder (default build/)")
    args = parser.parse_args(argv)
    try:
        settings = ClusterSettings(
            images=Images(args.registry, args.version), gpus_per_task=args.gpus, max_iterations=args.max_iterations,
            engine=args.engine, nodes=args.nodes,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, path in compile_pipelines(args.out, settings).items():
        print(f"{name:8s} -> {path}  (images {settings.images.base}, {settings.images.train}; "
              f"engine {settings.engine}, {settings.nodes} node(s) x {settings.gpus_per_task} GPU(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
