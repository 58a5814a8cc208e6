"""Search filters of a catalog search: a STAC ``query``, a CQL2 ``filter``, ``sortby`` and ``max_items``.

One typed block, :class:`SearchFilters` (a region config's ``search:``), checked when the config is
loaded: a CQL2 filter that does not parse is a :class:`~allspark.errors.ConfigError` naming the key.
A STAC API gets the filters as they are, through pystac-client (the API evaluates them). A static
catalog evaluates the same expressions here, item by item, with the ``cql2`` package (cql2-rs, the
parser and evaluator pystac-client itself uses to convert filters):

- ``query`` (the STAC API query extension, ``{"eo:cloud_cover": {"lt": 30}}``) is translated to
  CQL2-JSON with the extension's meaning (eq, neq, lt, lte, gt, gte, in, startsWith, endsWith,
  contains) and must hold together with ``filter`` (both are ANDed).
- the expression is evaluated on the item's ``id``, ``collection`` and ``properties`` (a bare name
  such as ``eo:cloud_cover`` or ``datetime`` is a property; ``properties.<name>`` works too). An item
  that lacks a property the expression needs to decide is not matched, as a STAC API behaves (a
  comparison with a missing value is NULL, not TRUE).
- ``sortby`` orders the matches (items without the field go last, either direction); without it
  ``max_items`` keeps the newest items, as a STAC API (pgstac, Earth Search) returns newest first.
- ``max_items`` cuts the list after sorting.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import cql2
import pystac
from pydantic import Field, field_validator, model_validator
from pystac.utils import str_to_datetime

from allspark.core.config import SettingsBlock

QueryOp = Literal["eq", "neq", "lt", "lte", "gt", "gte", "in", "startsWith", "endsWith", "contains"]
"""The operators of the STAC API query extension, as pystac-client documents them."""

_COMPARISONS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_PATTERNS = {"startsWith": "{}%", "endsWith": "%{}", "contains": "%{}%"}
_TIME_FIELDS = {"datetime", "start_datetime", "end_datetime", "created", "updated"}


class SortField(SettingsBlock):
    """One sort key: an item field (``properties.eo:cloud_cover``, ``datetime``, ``id``) and its direction."""

    field: str = Field(min_length=1)
    direction: Literal["asc", "desc"] = "asc"

    @property
    def text(self) -> str:
        return ("-" if self.direction == "desc" else "+") + self.field


class SearchFilters(SettingsBlock):
    """What a catalog search keeps beyond the AOI and dates: ``query`` and/or ``filter``, ``sortby``, ``max_items``.

    ``filter`` is CQL2-text (``"eo:cloud_cover < 30 AND platform = 'sentinel-2a'"``) or CQL2-JSON (a
    mapping, or a JSON string with ``filter_lang: cql2-json``). ``sortby`` takes pystac-client's
    forms: ``"-properties.datetime"``, ``["-eo:cloud_cover", "id"]`` or
    ``[{"field": "properties.eo:cloud_cover", "direction": "asc"}]``; it is stored as the last form.
    """

    query: dict[str, dict[QueryOp, Any]] | None = Field(
        None, description='STAC API query extension, e.g. {"eo:cloud_cover": {"lt": 30}}')
    filter: str | dict[str, Any] | None = Field(
        None, description="CQL2 filter: CQL2-text, or CQL2-JSON (a mapping); ANDed with query")
    filter_lang: Literal["cql2-text", "cql2-json"] | None = Field(
        None, description="the filter's language; none: cql2-json for a mapping, else cql2-text")
    sortby: list[SortField] | None = Field(None, description="sort keys, e.g. ['-properties.datetime']")
    max_items: int | None = Field(None, ge=1, description="keep at most this many items, after sorting")

    @field_validator("query")
    @classmethod
    def _check_query(cls, query: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        for name, ops in (query or {}).items():
            if not ops:
                raise ValueError(f"{name} names no operator (expected e.g. {{lt: 30}})")
            for op, value in ops.items():
                where = f"{name}.{op}"
                if op == "in" and (not isinstance(value, list) or not value):
                    raise ValueError(f"{where} must be a non-empty list of values, got {value!r}")
                if op in _PATTERNS and not isinstance(value, str):
                    raise ValueError(f"{where} must be a string, got {value!r}")
                if op in _COMPARISONS and (isinstance(value, (list, dict)) or value is None):
                    raise ValueError(f"{where} must be a number, string or boolean, got {value!r}")
        return query

    @field_validator("filter")
    @classmethod
    def _check_filter(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value is not None:
            _parse_filter(value)  # raises ValueError naming the language and cql2's reason
        return value

    @field_validator("sortby", mode="before")
    @classmethod
    def _sortby_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            return [_sort_field(part) if isinstance(part, str) else part for part in value]
        return value

    @model_validator(mode="after")
    def _filter_lang_fits(self) -> SearchFilters:
        if self.filter is None or self.filter_lang is None:
            return self
        is_json = isinstance(self.filter, dict) or self.filter.lstrip().startswith("{")
        if is_json != (self.filter_lang == "cql2-json"):
            raise ValueError(f"filter_lang is {self.filter_lang} but the filter is written in "
                             f"{'cql2-json' if is_json else 'cql2-text'}: {self.describe_filter()}")
        return self

    # -- what the filters say ------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """No filter, no sort and no cut: a search without this block."""
        return not self.query and self.filter is None and not self.sortby and self.max_items is None

    def filter_json(self) -> dict[str, Any] | None:
        """The ``filter`` as CQL2-JSON, whichever language it is written in."""
        return None if self.filter is None else _parse_filter(self.filter).to_json()

    def cql2_json(self) -> dict[str, Any] | None:
        """``query`` and ``filter`` as one CQL2-JSON expression (None without either)."""
        parts = [*([query_to_cql2(self.query)] if self.query else []),
                 *([self.filter_json()] if self.filter is not None else [])]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}

    def describe_filter(self) -> str:
        if self.filter is None:
            return ""
        return self.filter if isinstance(self.filter, str) else json.dumps(self.filter, separators=(",", ":"))

    def describe(self) -> str:
        """The filters in one line for messages, e.g. ``filter "eo:cloud_cover < 30", sortby -datetime, max_items 3``."""
        parts = []
        if self.query:
            parts.append(f"query {json.dumps(self.query, separators=(',', ':'))}")
        if self.filter is not None:
            parts.append(f"filter {self.describe_filter()!r}")
        if self.sortby:
            parts.append(f"sortby {','.join(key.text for key in self.sortby)}")
        if self.max_items is not None:
            parts.append(f"max_items {self.max_items}")
        return ", ".join(parts) or "no search filters"

    def properties(self) -> list[str]:
        """The item fields the query and filter compare, in order of appearance."""
        names: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if isinstance(node.get("property"), str) and node["property"] not in names:
                    names.append(node["property"])
                for child in node.values():
                    walk(child)
            elif isinstance(node, list):
                for child in node:
                    walk(child)

        walk(self.cql2_json())
        return names

    def api_parameters(self) -> dict[str, Any]:
        """The keyword arguments of ``pystac_client.Client.search`` these filters set."""
        parameters: dict[str, Any] = {}
        if self.filter is not None:  # as CQL2-JSON; pystac-client sends it so in a POST and as text in a GET
            # with a query too, both go as one CQL2 filter: pgstac (Planetary Computer) refuses the two together
            parameters["filter"] = self.cql2_json()
        elif self.query:
            parameters["query"] = self.query
        if self.sortby:
            parameters["sortby"] = [key.model_dump() for key in self.sortby]
        if self.max_items is not None:
            parameters["max_items"] = self.max_items
        return parameters

    # -- evaluation on static items ------------------------------------------------------------------

    def matcher(self) -> Callable[[pystac.Item], bool]:
        """A predicate: whether an item satisfies ``query`` and ``filter`` (always True without them)."""
        expression = self.cql2_json()
        if expression is None:
            return lambda item: True
        expr = cql2.Expr(expression)
        return lambda item: _matches(expr, item)

    def select(self, items: Sequence[pystac.Item]) -> list[pystac.Item]:
        """The items matching, ordered by ``sortby`` (else as given) and cut to ``max_items``.

        ``items`` come in time order; without ``sortby``, ``max_items`` keeps the newest of them
        (as a STAC API, newest first) and returns them in time order.
        """
        keep = self.matcher()
        matches = [item for item in items if keep(item)]
        if self.sortby:
            matches = sort_items(matches, self.sortby)
        elif self.max_items is not None:
            matches = matches[len(matches) - self.max_items:] if len(matches) > self.max_items else matches
        return matches[: self.max_items] if self.max_items is not None else matches


def query_to_cql2(query: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The STAC API query extension's ``query`` as one CQL2-JSON expression (its terms ANDed)."""
    terms = []
    for name, ops in query.items():
        prop = {"property": name}
        for op, value in ops.items():
            if op in _COMPARISONS:
                terms.append({"op": _COMPARISONS[op], "args": [prop, value]})
            elif op == "in":
                terms.append({"op": "in", "args": [prop, list(value)]})
            else:
                terms.append({"op": "like", "args": [prop, _PATTERNS[op].format(_like_escape(value))]})
    return terms[0] if len(terms) == 1 else {"op": "and", "args": terms}


def _like_escape(text: str) -> str:
    """``text`` taken literally in a CQL2 LIKE pattern (``%``, ``_`` and the escape character escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _parse_filter(value: str | dict[str, Any]) -> cql2.Expr:
    """A filter as a cql2 expression, or a ValueError saying which language did not parse and why."""
    if isinstance(value, dict):
        language, text = "CQL2-JSON", json.dumps(value)
    elif value.lstrip().startswith("{"):
        language, text = "CQL2-JSON", value
    else:
        language, text = "CQL2-text", value
    if not text.strip():
        raise ValueError("the CQL2 filter is empty")
    try:
        expr = cql2.parse_json(text) if language == "CQL2-JSON" else cql2.parse_text(text)
        expr.validate()
    except Exception as err:  # cql2.ParseError, cql2.ValidationError and errors of the JSON reader
        raise ValueError(f"{language} filter {text!r} does not parse: {_reason(str(err))}") from None
    return expr


def _reason(message: str) -> str:
    """cql2's error in one line: a parse error's position and what was expected there, else its message."""
    where = re.search(r"-->\s*(\d+):(\d+)", message)
    expected = re.search(r"=\s*(expected .*|unexpected .*)$", message.strip())
    if where and expected:
        return f"at line {where[1]}, column {where[2]}: {expected[1]}"
    return " ".join(message.split())


def _sort_field(text: str) -> dict[str, str]:
    text = text.strip()
    if text.startswith("-"):
        return {"field": text[1:], "direction": "desc"}
    return {"field": text.removeprefix("+"), "direction": "asc"}


# -- items -------------------------------------------------------------------------------------------


def item_record(item: pystac.Item) -> dict[str, Any]:
    """What an expression is evaluated on: the item's id, collection and properties (bare names resolve there)."""
    return {"id": item.id, "collection": item.collection_id, "properties": item.properties}


def _matches(expr: cql2.Expr, item: pystac.Item) -> bool:
    """Whether ``expr`` is TRUE of the item; NULL or undecidable (a property the item lacks) is no match."""
    try:
        return expr.reduce(item_record(item)).to_json() is True
    except Exception:  # cql2 refuses to compare values of different types (a string with a number): no match
        return False


def sort_items(items: Sequence[pystac.Item], keys: Sequence[SortField]) -> list[pystac.Item]:
    """``items`` ordered by ``keys`` (the first key first; ties keep the given order); missing values go last."""
    ordered = list(items)
    for key in reversed(keys):  # stable sorts from the least significant key
        values = [(item, _sort_value(item, key.field)) for item in ordered]
        present = [pair for pair in values if pair[1] is not None]
        present.sort(key=lambda pair: pair[1], reverse=key.direction == "desc")
        ordered = [item for item, _ in present] + [item for item, value in values if value is None]
    return ordered


def _sort_value(item: pystac.Item, field: str) -> tuple[int, Any] | None:
    """A comparable value of an item field: numbers (and times) before strings before anything else."""
    if field in ("id", "collection"):
        value: Any = item.id if field == "id" else item.collection_id
    else:
        name = field.removeprefix("properties.")
        value = item.properties.get(name)
        if name == "datetime" and value is None:  # a range item sorts by its start, as pgstac does
            value = item.properties.get("start_datetime")
        if name in _TIME_FIELDS and isinstance(value, str):
            try:
                value = str_to_datetime(value)
            except ValueError:
                pass
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return (0, (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp())
    if isinstance(value, (int, float)):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True, default=str))
