"""Validate STAC JSON offline against the schema copies in ``tests/data/stac-schemas``.

A schema URL ``https://<host>/<path>`` is the file ``tests/data/stac-schemas/<host>/<path>`` (its
README says where each came from). Every STAC object is checked against the core schema of its
``stac_version`` and type and against each extension it declares, formats (``date-time``)
included. A declared URL or a ``$ref`` without a local copy is an error: nothing is downloaded
and nothing is skipped.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from referencing import Registry, Resource

SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
CORE_SCHEMAS = {
    "Feature": "item-spec/json-schema/item.json",
    "Catalog": "catalog-spec/json-schema/catalog.json",
    "Collection": "collection-spec/json-schema/collection.json",
}
LINKED_RELS = {"child", "item"}
"""Links followed from a catalog to the catalogs, collections and items under it."""


class StacSchemaError(AssertionError):
    """STAC JSON that breaks a schema it must follow, or a schema with no local copy."""


def local_schema(url: str) -> Path:
    """The local copy of the schema at ``url``."""
    parts = urlsplit(url)
    path = SCHEMAS / parts.netloc / parts.path.lstrip("/")
    if parts.scheme != "https" or not path.is_file():
        raise StacSchemaError(f"no local copy of schema {url} (looked for {path}); add it with its licence "
                              f"and source to {SCHEMAS}")
    return path


@cache
def _resource(url: str) -> Resource:
    return Resource.from_contents(json.loads(local_schema(url).read_text()))


REGISTRY = Registry(retrieve=_resource)
"""Resolves every ``$ref`` from the local copies (JSON Schema's own meta-schemas come with jsonschema)."""


@cache
def _validator(url: str):
    """A validator of the schema at ``url`` that resolves its ``$ref``s locally and checks formats."""
    schema = _resource(url).contents
    cls = validator_for(schema)
    return cls(schema, registry=REGISTRY, format_checker=cls.FORMAT_CHECKER)


def schema_errors(stac: dict) -> list[str]:
    """How ``stac`` (an item, catalog or collection as JSON) breaks its core schema or a declared extension's."""
    kind = stac.get("type")
    if kind not in CORE_SCHEMAS:
        return [f"type {kind!r} is not one of {sorted(CORE_SCHEMAS)}"]
    urls = [f"https://schemas.stacspec.org/v{stac.get('stac_version')}/{CORE_SCHEMAS[kind]}",
            *stac.get("stac_extensions", [])]
    problems = []
    for url in urls:
        for error in _validator(url).iter_errors(stac):
            detail = best_match([error])  # the deepest reason inside oneOf/anyOf
            problems.append(f"{url}: {detail.json_path}: {detail.message}")
    return problems


def validate(stac: dict) -> None:
    """Raise :class:`StacSchemaError` listing every problem of one STAC object."""
    problems = schema_errors(stac)
    if problems:
        raise StacSchemaError(f"{stac.get('type')} {stac.get('id')!r}:\n" + "\n".join(problems))


def validate_catalog(catalog_json: Path) -> list[Path]:
    """Validate a catalog file and every catalog, collection and item it links; return the files checked.

    Raises :class:`StacSchemaError` listing every problem of every file.
    """
    checked: list[Path] = []
    problems: list[str] = []
    pending = [Path(catalog_json).resolve()]
    while pending:
        path = pending.pop(0)
        if path in checked:
            continue
        checked.append(path)
        stac = json.loads(path.read_text())
        problems += [f"{path}: {problem}" for problem in schema_errors(stac)]
        links = [link for link in stac.get("links", []) if link.get("rel") in LINKED_RELS]
        pending += [_linked_file(path, link["href"]) for link in links]
    if problems:
        raise StacSchemaError("\n".join(problems))
    return checked


def _linked_file(source: Path, href: str) -> Path:
    """The file a link of ``source`` points to: a relative or absolute path, or a file:// URI."""
    parts = urlsplit(href)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme:
        raise StacSchemaError(f"{source}: cannot follow {href} offline")
    return (source.parent / href).resolve()
