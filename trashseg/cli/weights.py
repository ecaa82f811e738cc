"""`trashseg weights ...`: pretrained checkpoints mirrored into the object store for clusters
without internet (trashseg/weights.py).

    trashseg weights mirror ID --store LOC [--name HUB_ID]   copy a hub checkpoint (or a local
                                                             transformers folder) into the store
    trashseg weights list --store LOC                        mirrored checkpoints, oldest first
    trashseg weights defaults                                each architecture's default start

Run `mirror` where the hub is reachable; tasks then resolve the checkpoint from the store.
"""

from __future__ import annotations

import argparse

from trashseg.cli.data_versions import DEFAULT_STORE


def register(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    weights = subparsers.add_parser(
        "weights", help="pretrained checkpoints mirrored into the object store (air-gapped clusters)",
        description=__doc__.split("\n\n")[0], formatter_class=formatter,
    )
    commands = weights.add_subparsers(dest="weights_command", metavar="WEIGHTS_COMMAND", required=True)
    mirror = commands.add_parser("mirror", help="copy a checkpoint into the store as a checksummed version",
                                 formatter_class=formatter)
    mirror.add_argument("source", metavar="ID", help="hub id (e.g. facebook/mask2former-swin-large-ade-semantic) or local folder")
    mirror.add_argument("--store", default=DEFAULT_STORE, help="local folder or s3://bucket/prefix (the pipeline's data_store)")
    mirror.add_argument("--name", help="hub id a local folder stands for (default: ID)")
    mirror.set_defaults(func=mirror_command)
    listing = commands.add_parser("list", help="mirrored checkpoints, oldest first", formatter_class=formatter)
    listing.add_argument("--store", default=DEFAULT_STORE, help="local folder or s3://bucket/prefix")
    listing.set_defaults(func=list_command)
    defaults = commands.add_parser("defaults", help="default starting checkpoint of each full-size architecture")
    defaults.add_argument("--store", help="also say whether each is mirrored in this store")
    defaults.set_defaults(func=defaults_command)


def mirror_command(args: argparse.Namespace) -> int:
    from trashseg.storage import open_store
    from trashseg.weights import mirror_weights

    manifest = mirror_weights(args.source, open_store(args.store), name=args.name)
    print(f"{manifest.source} -> {manifest.version} ({len(manifest.files)} files, {manifest.total_bytes} bytes)")
    return 0


def list_command(args: argparse.Namespace) -> int:
    from trashseg.storage import list_versions, open_store
    from trashseg.weights import WEIGHTS

    for manifest in list_versions(open_store(args.store), kind=WEIGHTS):
        print(f"{manifest.source:<52} {manifest.version}  {manifest.total_bytes / 1e6:9.1f} MB  {manifest.created}")
    return 0


def defaults_command(args: argparse.Namespace) -> int:
    from trashseg.models import ARCHITECTURES
    from trashseg.storage import open_store
    from trashseg.weights import PACKAGED_WEIGHTS, find_mirror

    store = open_store(args.store) if args.store else None
    for name, spec in ARCHITECTURES.items():
        if spec.tiny:
            continue
        mirrored = ""
        if spec.default_pretrained in PACKAGED_WEIGHTS:
            mirrored = "  installed package (no mirror needed)"
        elif store is not None and spec.default_pretrained:
            mirrored = "  mirrored" if find_mirror(store, spec.default_pretrained) else "  NOT MIRRORED"
        print(f"{name:<32} {spec.default_pretrained or 'none (random init)'}{mirrored}")
    return 0
