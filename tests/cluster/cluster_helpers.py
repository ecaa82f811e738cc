"""Helpers for the cluster tests: S3 settings for moto, a fault-injecting proxy, tiny datasets."""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.storage import RetryPolicy, S3Settings, S3Store

FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)
S3_REGION = "us-east-1"
FAKE_KEY, FAKE_SECRET = "testing-key", "testing-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_settings(endpoint: str) -> S3Settings:
    return S3Settings(endpoint, FAKE_KEY, FAKE_SECRET, secure=False, region=S3_REGION)


def new_bucket(endpoint: str) -> str:
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    S3Store(bucket, settings=s3_settings(endpoint), retry=FAST_RETRY).ensure_bucket()
    return bucket


Plan = Callable[[int, str], str | None]

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyProxy:
    """An HTTP proxy to S3 that fails requests as `plan(index, method)` says.

    plan returns None (forward) or a fault:
      "503"          a SlowDown error, the request never reaches S3;
      "reset"        TCP RST, no reply;
      "cut-headers"  the request reaches S3, its reply is cut inside the header block;
      "cut-body"     the request reaches S3, its reply is cut half-way through the body;
      "stall"        no reply for `stall_s` seconds, then the connection closes;
      "trickle"      the reply's body one byte every 50 ms (never idle long enough to time out).
    Forwarded headers go out in a random order (seeded), so a cut lands anywhere among them.
    """

    FAULTS = ("503", "reset", "cut-headers", "cut-body", "stall")

    def __init__(self, upstream: str, plan: Plan, *, seed: int = 0, stall_s: float = 3.0) -> None:
        self.upstream = upstream
        self.plan = plan
        self.stall_s = stall_s
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                with proxy._lock:
                    index = len(proxy.requests)
                    action = proxy.plan(index, self.command)
                    proxy.requests.append((self.command, action))
                    rng = random.Random(proxy._rng.random())
                self.close_connection = True
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if action == "stall":
                    time.sleep(proxy.stall_s)
                    return
                if action == "503":
                    status, reason, headers = 503, "Slow Down", [("Content-Type", "application/xml")]
                    data = SLOW_DOWN
                else:
                    status, reason, headers, data = proxy._forward(self.command, self.path, body, dict(self.headers))
                if not any(k.lower() == "content-length" for k, _ in headers):
                    headers.append(("Content-Length", str(len(data))))
                headers.append(("Connection", "close"))
                rng.shuffle(headers)
                head = f"HTTP/1.1 {status} {reason}\r\n".encode()
                block = head + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"
                if self.command == "HEAD":
                    data = b""
                if action == "cut-headers" or (action == "cut-body" and not data):
                    self.wfile.write(block[: rng.randrange(len(head), len(block) - 2)])
                elif action == "cut-body":
                    self.wfile.write(block + data[: len(data) // 2])
                elif action == "trickle":
                    self.wfile.write(block)
                    for i in range(len(data)):
                        time.sleep(0.05)
                        try:
                            self.wfile.write(data[i:i + 1])
                        except OSError:  # the client gave up
                            return
                else:
                    self.wfile.write(block + data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _forward(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple:
        host, port = self.upstream.split(":")
        upstream = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            upstream.request(method, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server")]
            if method == "HEAD":  # HEAD's Content-Length is the object's size, not this reply's
                kept.append(("Content-Length", response.getheader("Content-Length", "0")))
            return response.status, response.reason, kept, data
        finally:
            upstream.close()

    def failures(self) -> int:
        return sum(1 for _, action in self.requests if action)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def coco(file_names: list[str], categories=("Paper", "Metal"), first_id: int = 1) -> dict:
    images = [{"id": first_id + i, "file_name": f, "width": 16, "height": 16} for i, f in enumerate(file_names)]
    annotations = [
        {"id": 100 + i, "image_id": im["id"], "category_id": 1 + i % len(categories), "iscrowd": 0,
         "area": 16.0, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}
        for i, im in enumerate(images)
    ]
    cats = [{"id": 1 + i, "name": name, "supercategory": name} for i, name in enumerate(categories)]
    return {"images": images, "annotations": annotations, "categories": cats}


def make_dataset(root: Path, n: int = 3, seed: int = 0) -> Path:
    names = [f"batch_01/{i:04d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        write_image(root / name, seed + i)
    (root / "train.json").write_text(json.dumps(coco(names)))
    return root


def make_batch(root: Path, n: int, seed: int, categories=("Metal", "Paper")) -> Path:
    names = [f"{i:04d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        write_image(root / "images" / name, seed + i)
    (root / "annotations.json").write_text(json.dumps(coco(names, categories, first_id=1)))
    return root
