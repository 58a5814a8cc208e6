"""A real S3-compatible server for tests (:mod:`flows.s3_server`: moto in server mode on 127.0.0.1), and reading back.

:func:`s3_server` starts it on a free port, points the AWS and GDAL environment variables at it
for the duration (the library reads credentials and the endpoint only from there), and stops it
at the end. Its state lives in memory: every start is empty.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pystac
import pytest
import s3fs

from allspark.core.location import exists, parse_location, read_catalog
from flows import s3_server as server_module
from flows.s3_server import KEY, SECRET, local_s3_server


@dataclass(frozen=True)
class S3Server(server_module.S3Server):
    """The server, with what the tests read back and break it with."""

    def filesystem(self) -> s3fs.S3FileSystem:
        """An s3fs client of its own (not the library's), for reading back what a run wrote."""
        return s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": self.endpoint},
                                 skip_instance_cache=True, use_listings_cache=False)

    def create_read_only_bucket(self, name: str) -> str:
        """A bucket whose policy denies every principal ``s3:PutObject`` (moto 5.2 enforces it: 403)."""
        url = self.create_bucket(name)
        self.client().put_bucket_policy(Bucket=name, Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                           "Resource": f"arn:aws:s3:::{name}/*"}],
        }))
        return url


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """Start moto on a free port (its output to ``log``), set the environment to it, and stop it afterwards."""
    with local_s3_server(log) as (started, _), pytest.MonkeyPatch.context() as patch:
        server = S3Server(endpoint=started.endpoint)
        for key, value in server.environment().items():
            patch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(key, raising=False)
        yield server


def empty_aws_profiles(folder: Path) -> dict[str, str]:
    """Variables that leave the AWS tools without any credentials: empty profile files, no instance metadata."""
    empty = folder / "empty-aws-profile"
    empty.write_text("")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(empty), "AWS_CONFIG_FILE": str(empty),
            "AWS_EC2_METADATA_DISABLED": "true"}



def key(url: str) -> str:
    """The bucket/key of an s3:// URL, as s3fs and GDAL's /vsis3/ name it."""
    return url.removeprefix("s3://")


def versions(s3: S3Server, location: str) -> list[str]:
    """The published sets under an output folder on the bucket (``runs/<version>``)."""
    return sorted(p.rsplit("/", 1)[-1] for p in s3.filesystem().ls(key(f"{location}/runs")))


def entry_version(s3: S3Server, location: str) -> str:
    """The set the entry catalog leads to (every item link goes into runs/<version>/)."""
    links = json.loads(s3.filesystem().cat_file(key(f"{location}/catalog.json")))["links"]
    (version,) = {link["href"].split("/")[2] for link in links if link["rel"] == "item"}
    return version


def assert_every_link_resolves(catalog_url: str) -> pystac.Item:
    """Walk the catalog from the bucket; every link and asset of it and its item resolves. Return the item."""
    entry = read_catalog(catalog_url)
    (item,) = entry.get_items()
    for stac in (entry, item):
        for link in stac.links:
            assert exists(parse_location(link.get_absolute_href())), f"{stac.id}: {link.rel} {link.href} is missing"
    for name, asset in item.assets.items():
        href = asset.get_absolute_href()
        assert href.startswith("s3://") and exists(href), f"asset {name}: {href} is missing"
    return item
