"""``make s3``: an S3-compatible object store on 127.0.0.1 (moto in server mode), to try outputs and work on a bucket.

    python -m flows.s3_server [--port 9000] [--bucket NAME ...]

It prints the environment variables that point the pipeline (s3fs, boto3) and GDAL's ``/vsis3/``
at it, creates the buckets named, and runs until Ctrl-C. Its objects live in memory: every start
is empty. :func:`local_s3_server` is the same as a context manager; the tests and the storage
benchmark start theirs with it.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flows.serve import HOST, dies_with_this_process, free_port, stop_process

START_TIMEOUT = 60  # seconds; moto imports every AWS service's backend on 2 shared cores
KEY, SECRET, REGION = "test", "test", "us-east-1"
DEFAULT_PORT = 9000


@dataclass(frozen=True)
class S3Server:
    """A running moto server and how to reach it."""

    endpoint: str  # http://127.0.0.1:PORT

    def environment(self) -> dict[str, str]:
        """The variables that point boto3/s3fs (``AWS_ENDPOINT_URL``) and GDAL's ``/vsis3/`` at this server."""
        return {
            "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_S3_ENDPOINT": self.endpoint.removeprefix("http://"), "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            region_name=REGION)

    def create_bucket(self, name: str) -> str:
        """Create a bucket (without a region constraint, which moto refuses for us-east-1); return its URL."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


def moto_command(port: int) -> list[str]:
    """``moto_server`` next to this Python (a virtual environment's bin), else ``python -m moto.server``."""
    executable = Path(sys.executable).with_name("moto_server")
    launcher = [str(executable)] if executable.exists() else [sys.executable, "-m", "moto.server"]
    return [*launcher, "-H", HOST, "-p", str(port)]


@contextlib.contextmanager
def local_s3_server(log: Path, port: int | None = None) -> Iterator[tuple[S3Server, subprocess.Popen]]:
    """Start moto on ``port`` (a free one by default; its output to ``log``), wait until it answers, stop it at the end.

    Yields the server and its process (a benchmark reads the bytes it moved). It dies with this
    process, even on SIGKILL.
    """
    port = free_port() if port is None else port
    server = S3Server(endpoint=f"http://{HOST}:{port}")
    with open(log, "wb") as output:
        process = subprocess.Popen(moto_command(port), stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=dies_with_this_process())
    try:
        _wait_until_it_answers(server.endpoint, process, log)
        yield server, process
    finally:
        stop_process(process, timeout=10)


def _wait_until_it_answers(endpoint: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer at {endpoint} within {START_TIMEOUT} s: {log.read_text()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.s3_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeat for several)")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "allspark-s3-server.log",
                        help="moto's output (default: %(default)s)")
    args = parser.parse_args(argv)
    with local_s3_server(args.log, args.port) as (server, _):
        for bucket in args.bucket:
            print(f"created {server.create_bucket(bucket)}")
        print(f"S3-compatible server at {server.endpoint} (objects in memory). In the shell that runs the pipeline:")
        for name, value in server.environment().items():
            print(f"  export {name}={value}")
        print("Ctrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
