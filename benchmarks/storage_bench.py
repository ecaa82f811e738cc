"""Upload/download throughput of trashseg.storage (verified transfers) on both backends.

Prints MiB/s for one large file (multipart on S3) and for many small files (a dataset's
shape), against a local folder and a moto S3 server on 127.0.0.1 (real HTTP; a real MinIO
will differ, but the client-side cost of hashing and verifying shows up here).

    python benchmarks/storage_bench.py [--large-mib 64] [--small-files 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path

from trashseg.storage import LocalStore, ObjectStore, RetryPolicy, S3Settings, S3Store

MiB = 1024 * 1024


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(store: ObjectStore, name: str, work: Path, large_mib: int, small_files: int) -> None:
    large = work / "large.bin"
    large.write_bytes(os.urandom(large_mib * MiB))
    small = work / "small"
    small.mkdir(exist_ok=True)
    for i in range(small_files):
        (small / f"{i:05d}.jpg").write_bytes(os.urandom(60 * 1024))  # ~ a 512x512 JPEG
    small_mib = small_files * 60 / 1024

    up = timed(lambda: store.put_file(large, "bench/large.bin"))
    down = timed(lambda: store.get_file("bench/large.bin", work / "large.back"))
    print(f"{name:6s} large {large_mib} MiB: upload {large_mib / up:7.1f} MiB/s, download {large_mib / down:7.1f} MiB/s")
    up = timed(lambda: store.put_folder(small, "bench/small"))
    down = timed(lambda: store.get_folder("bench/small", work / "small.back"))
    print(f"{name:6s} {small_files} x 60 KiB: upload {small_files / up:7.1f} files/s ({small_mib / up:.1f} MiB/s), "
          f"download {small_files / down:7.1f} files/s ({small_mib / down:.1f} MiB/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--small-files", type=int, default=200)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            run(LocalStore(work / "store"), "local", work, args.large_mib, args.small_files)
            settings = S3Settings(f"{host}:{port}", "bench", "bench", secure=False, region="us-east-1")
            s3 = S3Store(f"bench-{uuid.uuid4().hex[:8]}", settings=settings, retry=RetryPolicy(attempts=1),
                         part_size=16 * MiB)
            s3.ensure_bucket()
            run(s3, "s3", work, args.large_mib, args.small_files)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
