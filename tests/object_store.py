"""A real S3-compatible server for tests: moto in server mode on 127.0.0.1, a child of the test process.

:func:`s3_server` starts ``moto_server`` on a free port (it dies with the test process, even on
SIGKILL), waits until it answers, points the AWS and GDAL environment variables at it for the
duration (the library reads credentials and the endpoint only from there), and stops it at the end.
Its state lives in memory: every start is empty.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import s3fs

from flows.serve import HOST, dies_with_this_process, free_port, stop_process

START_TIMEOUT = 60  # seconds; moto imports every AWS service's backend on 2 shared cores
KEY, SECRET, REGION = "test", "test", "us-east-1"


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
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            region_name=REGION)

    def filesystem(self) -> s3fs.S3FileSystem:
        """An s3fs client of its own (not the library's), for reading back what a run wrote."""
        return s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True, use_listings_cache=False)

    def create_bucket(self, name: str) -> str:
        """Create a bucket (without a region constraint, which moto refuses for us-east-1); return its URL."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def create_read_only_bucket(self, name: str) -> str:
        """A bucket whose policy denies every principal ``s3:PutObject`` (moto 5.2 enforces it: 403)."""
        url = self.create_bucket(name)
        self.client().put_bucket_policy(Bucket=name, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                           "Resource": f"arn:aws:s3:::{name}/*"}],
        }))
        return url


def moto_command(port: int) -> list[str]:
    """``moto_server`` next to this Python (a virtual environment's bin), else ``python -m moto.server``."""
    executable = Path(sys.executable).with_name("moto_server")
    launcher = [str(executable)] if executable.exists() else [sys.executable, "-m", "moto.server"]
    return [*launcher, "-H", HOST, "-p", str(port)]


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """Start moto on a free port (its output to ``log``), set the environment to it, and stop it afterwards."""
    port = free_port()
    server = S3Server(endpoint=f"http://{HOST}:{port}")
    with open(log, "wb") as output:
        process = subprocess.Popen(moto_command(port), stdout=output, stderr=subprocess.STDOUT,
                                   preexec_fn=dies_with_this_process())
    try:
        _wait_until_it_answers(server.endpoint, process, log)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in server.environment().items():
                patch.setenv(key, value)
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
                patch.delenv(key, raising=False)
            yield server
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


def empty_aws_profiles(folder: Path) -> dict[str, str]:
    """Variables that leave the AWS tools without any credentials: empty profile files, no instance metadata."""
    empty = folder / "empty-aws-profile"
    empty.write_text("")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_CONFIG_FILE": str(empty),
            "AWS_EC2_METADATA_DISABLED": "true"}

