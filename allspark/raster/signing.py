"""Signed asset hrefs: the one place where a catalog's ``signing`` turns into tokens on its hrefs.

Microsoft Planetary Computer's blob storage needs a SAS token on every asset href. A catalog config
with ``signing: planetary_computer`` signs through the ``planetary-computer`` package (the optional
extra ``pip install 'allspark-pipeline[planetary-computer]'``): its ``sign_inplace`` is
pystac-client's ``modifier`` of the search, as Planetary Computer documents, and signs the items of
a static catalog the same way.

Tokens expire (about an hour on Planetary Computer), so none is ever stored: a run's plan keeps the
items :func:`unsigned` (plan.json, the work folder's key and the published STAC ``derived_from``
and metrics hold no token, and a rerun hours later resumes the same work folder), and every read
takes :func:`signed` copies first. That is cheap: the SDK caches one token per storage container
and fetches a new one only when less than a minute of it remains, so a read never starts with a
token about to expire. A load's Dask graph holds the hrefs signed when the load started; they are not
signed again while it runs, since one ingest here lasts far less than a Planetary Computer token's hour.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import pystac

from allspark.errors import ConfigError

Signing = Literal["planetary_computer"]
BLOB_STORAGE_DOMAIN = ".blob.core.windows.net"
"""Hosts of Azure Blob Storage: the only hrefs the SDK signs (account = first label, container = first path part)."""


def signer(signing: Signing | None) -> Callable[[Any], Any] | None:
    """The function that signs a STAC object's asset hrefs in place (pystac-client's ``modifier``); None for None.

    Raises :class:`ConfigError` saying what to install when the ``planetary-computer`` package is missing.
    """
    if signing is None:
        return None
    try:
        import planetary_computer
    except ImportError:
        raise ConfigError(
            "a catalog config with signing: planetary_computer signs its asset hrefs with the planetary-computer "
            "package, which is not installed; install it with pip install 'allspark-pipeline[planetary-computer]'"
        ) from None
    return planetary_computer.sign_inplace


def signed(items: Iterable[pystac.Item], signing: Signing | None) -> list[pystac.Item]:
    """Copies of ``items`` whose asset hrefs carry a fresh token (any old one stripped first); the items themselves
    when ``signing`` is None."""
    sign = signer(signing)
    if sign is None:
        return list(items)
    copies = unsigned(items)
    for item in copies:
        sign(item)
    return copies


def unsigned(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """Copies of ``items`` without tokens: the query string of every Azure Blob Storage href stripped."""
    copies = [item.clone() for item in items]
    for item in copies:
        for asset in item.assets.values():
            asset.href = _without_token(asset.href)
    return copies


def _without_token(href: str) -> str:
    url = urlsplit(href)
    if not url.netloc.endswith(BLOB_STORAGE_DOMAIN):
        return href
    return urlunsplit(url._replace(query=""))
