"""`trashseg data ...`: dataset versions and the inbox in a local folder or s3://bucket/prefix.

    trashseg data push FOLDER [--store LOC]          upload a dataset; prints its version
    trashseg data push --repair FOLDER [--store]     re-upload what fails verification in its version
    trashseg data pull VERSION DEST [--store LOC]    download a version (or `latest`), verified
    trashseg data versions [--store LOC]             list versions, oldest first
    trashseg data inbox push FOLDER BATCH [--store]  add a labeled batch to the inbox
    trashseg data inbox list [--since VERSION]       complete batches (not yet in VERSION)
    trashseg data ensure-bucket s3://BUCKET          create the bucket if missing (bucket-init Job)

s3:// stores read their endpoint and credentials from the environment (trashseg/secrets.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_STORE = "runs/store"  # the embedded default: a local folder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands (each sets `func` to a function taking the parsed args)."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    data = subparsers.add_parser(
        "data",
        help="dataset versions and the inbox of new labeled batches (local folder or s3://)",
        description=__doc__.split("\n\n")[0],
        formatter_class=formatter,
    )
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    def store_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--store", default=DEFAULT_STORE, help="local folder or s3://bucket/prefix")

    push = commands.add_parser("push", help="upload a dataset folder as a content-addressed version",
                               formatter_class=formatter)
    push.add_argument("folder", type=Path, metavar="FOLDER", help="dataset folder ({train,val,test}.json + images)")
    push.add_argument("--repair", action="store_true",
                      help="when the version already exists, verify every stored file and upload again the ones "
                           "that are missing or damaged (FOLDER must be a good copy: it hashes to the version)")
    store_option(push)
    push.set_defaults(func=push_command)

    pull = commands.add_parser("pull", help="download a dataset version, verified against its manifest",
                               formatter_class=formatter)
    pull.add_argument("version", metavar="VERSION", help="a version hash, or `latest`")
    pull.add_argument("dest", type=Path, metavar="DEST", help="folder to write the dataset into")
    store_option(pull)
    pull.set_defaults(func=pull_command)

    versions = commands.add_parser("versions", help="list dataset versions, oldest first", formatter_class=formatter)
    store_option(versions)
    versions.set_defaults(func=versions_command)

    inbox = commands.add_parser("inbox", help="new labeled batches waiting to be merged", formatter_class=formatter)
    inbox_commands = inbox.add_subparsers(dest="inbox_command", metavar="INBOX_COMMAND", required=True)
    inbox_push = inbox_commands.add_parser("push", help="upload a batch (annotations.json + images/)",
                                           formatter_class=formatter)
    inbox_push.add_argument("folder", type=Path, metavar="FOLDER")
    inbox_push.add_argument("batch", metavar="BATCH", help="batch name, e.g. 2026-11-week48")
    store_option(inbox_push)
    inbox_push.set_defaults(func=inbox_push_command)
    inbox_list = inbox_commands.add_parser("list", help="list complete batches", formatter_class=formatter)
    inbox_list.add_argument("--since", metavar="VERSION",
                            help="only batches that dataset VERSION (or `latest`) does not include")
    store_option(inbox_list)
    inbox_list.set_defaults(func=inbox_list_command)

    bucket = commands.add_parser("ensure-bucket", help="create an S3 bucket if it does not exist",
                                 formatter_class=formatter)
    bucket.add_argument("location", metavar="S3_LOCATION", help="s3://bucket")
    bucket.set_defaults(func=ensure_bucket_command)


def push_command(args: argparse.Namespace) -> int:
    from trashseg import storage

    manifest = storage.push_dataset(args.folder, storage.open_store(args.store), repair=args.repair)
    print(manifest.version)
    return 0


def pull_command(args: argparse.Namespace) -> int:
    from trashseg import storage

    manifest = storage.pull_dataset(storage.open_store(args.store), args.version, args.dest)
    print(f"{manifest.version} -> {args.dest} ({len(manifest.files)} files, {manifest.total_bytes} bytes)")
    return 0


def versions_command(args: argparse.Namespace) -> int:
    from trashseg import storage

    for manifest in storage.list_versions(storage.open_store(args.store)):
        batches = ",".join(manifest.inbox_batches) or "-"
        print(f"{manifest.version}  {manifest.created}  files={len(manifest.files)} "
              f"bytes={manifest.total_bytes} inbox_batches={batches}")
    return 0


def inbox_push_command(args: argparse.Namespace) -> int:
    from trashseg import storage

    infos = storage.push_batch(args.folder, storage.open_store(args.store), args.batch)
    print(f"{args.batch}: {len(infos)} files")
    return 0


def inbox_list_command(args: argparse.Namespace) -> int:
    from trashseg import storage

    store = storage.open_store(args.store)
    batches = storage.new_batches(store, args.since) if args.since else storage.list_batches(store)
    for batch in batches:
        print(batch)
    return 0


def ensure_bucket_command(args: argparse.Namespace) -> int:
    from trashseg import storage
    from trashseg.errors import DataError

    bucket, prefix = storage.split_s3(args.location)
    if prefix:
        raise DataError(f"{args.location!r} has a path after the bucket; expected s3://bucket")
    created = storage.S3Store(bucket).ensure_bucket()
    print(f"bucket {bucket} {'created' if created else 'already exists'}")
    return 0
