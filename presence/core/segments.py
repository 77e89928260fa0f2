"""Segment definitions and segment values (SPEC "Segments", optional fields of "Input").

Pure functions, no I/O.

- :func:`parse_segments` turns the text of ``PRESENCE_SEGMENTS`` (for
  example ``city;city,vehicle_type;h3:8``) into :class:`SegmentDefinition`\\ s,
  or raises :class:`SegmentsError` with one line naming the problem.
- :class:`ValueExtractor` computes, for one ping, the value of every
  definition: a tuple with one element per dimension (``"unknown"`` for a
  missing or invalid ``city``/``vehicle_type``; the H3 cell as an ``int``),
  or ``None`` for a definition with an ``h3`` dimension when the ping has no
  valid location (the ping is *unlocated*: it is in no value of that
  definition).

H3 cells are kept as ``int`` (``h3.api.basic_int``: about 40 % cheaper per
call than the string API, smaller to hash and to pickle) and shown in H3's
usual hex string form only in documents (:meth:`SegmentDefinition.key`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import h3.api.basic_int as h3int

CITY = "city"
VEHICLE_TYPE = "vehicle_type"
H3 = "h3"
STRING_DIMENSIONS = {CITY: 64, VEHICLE_TYPE: 32}
"""The string dimensions and the most characters a valid value may have."""

MAX_H3_RESOLUTION = 15
UNKNOWN = "unknown"
"""The value of a missing or invalid ``city`` or ``vehicle_type``."""
OTHER = ("other",)
"""The value that pings beyond ``PRESENCE_MAX_SEGMENT_VALUES`` count under."""

_isfinite = math.isfinite
_latlng_to_cell = h3int.latlng_to_cell
try:  # the compiled function behind it (h3 v4), without the wrapper's two calls
    from h3 import _cy as _h3cy

    _fast_latlng_to_cell = _h3cy.latlng_to_cell
    if _fast_latlng_to_cell(22.3, 114.17, 8) != _latlng_to_cell(22.3, 114.17, 8):
        _fast_latlng_to_cell = _latlng_to_cell
except Exception:  # noqa: BLE001 - another h3 layout: the public function
    _fast_latlng_to_cell = _latlng_to_cell


class SegmentsError(ValueError):
    """A bad ``PRESENCE_SEGMENTS``: the message is one line naming the problem."""


@dataclass(frozen=True, slots=True)
class SegmentDefinition:
    """One segment definition: its dimensions, in the configured order.

    ``dimensions`` holds the normalised spelling of each dimension
    (``"city"``, ``"vehicle_type"``, ``"h3:8"``); ``resolution`` is the H3
    resolution of its ``h3`` dimension, or ``None`` if it has none.
    """

    dimensions: tuple[str, ...]
    resolution: int | None = None

    @property
    def name(self) -> str:
        """The definition as configured, normalised: the ``segment`` field of documents."""
        return ",".join(self.dimensions)

    @property
    def fields(self) -> tuple[str, ...]:
        """The ``key`` field names of documents: ``city``, ``vehicle_type``, ``h3``."""
        return tuple(H3 if d.startswith("h3:") else d for d in self.dimensions)

    @property
    def located(self) -> bool:
        """True if the definition has an ``h3`` dimension (needs a valid location)."""
        return self.resolution is not None

    def key(self, value: tuple) -> dict[str, str]:
        """The ``key`` document of a value: ``{"city": "Hong Kong", "h3": "88411c8d27fffff"}``.

        The overflow value :data:`OTHER` gives ``"other"`` for every field.
        """
        if value == OTHER:
            return {f: OTHER[0] for f in self.fields}
        return {
            f: (h3int.int_to_str(v) if type(v) is int else v)
            for f, v in zip(self.fields, value)
        }

    def value_of_key(self, key: Mapping[str, str]) -> tuple:
        """The value of a ``key`` (as :meth:`key` gives it, or from a query)."""
        missing = [f for f in self.fields if f not in key]
        extra = [f for f in key if f not in self.fields]
        if missing or extra:
            raise SegmentsError(
                f"segment {self.name!r} takes {', '.join(self.fields)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        out: list[Any] = []
        for f in self.fields:
            text = key[f]
            if f == H3 and text != OTHER[0]:
                try:
                    cell = h3int.str_to_int(text)
                except (ValueError, TypeError):
                    cell = None
                if (cell is None or not h3int.is_valid_cell(cell)
                        or h3int.get_resolution(cell) != self.resolution):
                    raise SegmentsError(
                        f"{text!r} is not an H3 cell of resolution {self.resolution}"
                    )
                out.append(cell)
            else:
                out.append(text)
        if all(v == OTHER[0] for v in out):
            return OTHER
        return tuple(out)


def parse_segments(text: str | None) -> tuple[SegmentDefinition, ...]:
    """Parse ``PRESENCE_SEGMENTS``; empty (or blank) means no segments.

    Dimension names are case-insensitive and may have spaces around them;
    ``h3:08`` is spelled ``h3:8``. Raises :class:`SegmentsError`.
    """
    if text is None or not text.strip():
        return ()
    definitions: list[SegmentDefinition] = []
    seen: dict[frozenset, str] = {}
    for part in text.split(";"):
        definition = _parse_definition(part)
        dims = frozenset(definition.dimensions)
        if dims in seen:
            raise SegmentsError(
                f"segment {definition.name!r} repeats segment {seen[dims]!r} "
                "(same dimensions)"
            )
        seen[dims] = definition.name
        definitions.append(definition)
    return tuple(definitions)


def _parse_definition(part: str) -> SegmentDefinition:
    shown = part.strip()
    if not shown:
        raise SegmentsError(
            "empty segment definition (two ';' in a row, or a ';' at an end)"
        )
    dimensions: list[str] = []
    resolution: int | None = None
    for raw in shown.split(","):
        word = raw.strip().lower()
        if not word:
            raise SegmentsError(f"segment {shown!r}: empty dimension")
        if word in STRING_DIMENSIONS:
            dim = word
        elif word == H3 or word.startswith("h3:"):
            digits = word[3:].strip()
            if not digits:
                raise SegmentsError(
                    f"segment {shown!r}: h3 needs a resolution, as in h3:8"
                )
            if not digits.isascii() or not digits.isdigit() or int(digits) > MAX_H3_RESOLUTION:
                raise SegmentsError(
                    f"segment {shown!r}: H3 resolution {digits!r} is not a whole "
                    f"number from 0 to {MAX_H3_RESOLUTION}"
                )
            if resolution is not None:
                raise SegmentsError(
                    f"segment {shown!r}: at most one h3 dimension per segment"
                )
            resolution = int(digits)
            dim = f"h3:{resolution}"
        else:
            raise SegmentsError(
                f"segment {shown!r}: unknown dimension {raw.strip()!r} "
                "(known: city, vehicle_type, h3:R with R from 0 to 15)"
            )
        if dim in dimensions:
            raise SegmentsError(f"segment {shown!r}: dimension {dim!r} named twice")
        dimensions.append(dim)
    return SegmentDefinition(tuple(dimensions), resolution)


def format_segments(definitions: Sequence[SegmentDefinition]) -> str:
    """The normalised ``PRESENCE_SEGMENTS`` text of these definitions."""
    return ";".join(d.name for d in definitions)


def valid_string(value: object, most: int) -> str:
    """``value`` if it is a non-empty string of at most ``most`` characters, else ``unknown``."""
    if type(value) is str and 0 < len(value) <= most:
        return value
    return UNKNOWN


def valid_location(lat: object, lng: object) -> tuple[float, float] | None:
    """``(lat, lng)`` as floats if both are finite numbers in range (not bools), else None."""
    tlat, tlng = type(lat), type(lng)
    if (tlat is float or tlat is int) and (tlng is float or tlng is int):
        if -90 <= lat <= 90 and -180 <= lng <= 180:
            # NaN fails the comparisons above; infinities fail them too.
            return float(lat), float(lng)
    return None


def _cells_at(lat: float, lng: float, resolutions: tuple[int, ...]) -> list:
    try:
        return [_latlng_to_cell(lat, lng, r) for r in resolutions]
    except Exception:  # never expected for finite in-range input; never stop the flow
        return [None] * len(resolutions)


class ValueExtractor:
    """The segment values of one ping, for a fixed tuple of definitions.

    ``values(city, vehicle_type, lat, lng)`` takes the raw field values
    (``None`` when a field is missing) so that a reader can call it with the
    fields it decoded itself; ``of_object(obj)`` takes the dict the JSON
    parser gave. Both return one entry per definition: the value tuple, or
    ``None`` for a located definition when the ping has no valid location.

    H3 cells are computed once per ping per distinct resolution; an
    optional ``cache_size`` keeps the cells of recent exact
    ``(lat, lng)`` pairs (worth it only if devices repeat coordinates,
    e.g. parked drivers; see docs/segments.md for figures).
    """

    __slots__ = ("definitions", "resolutions", "_builders", "_cache", "_cache_size", "located",
                 "values")

    def __init__(self, definitions: Sequence[SegmentDefinition], cache_size: int = 0) -> None:
        self.definitions = tuple(definitions)
        self.resolutions = tuple(sorted({d.resolution for d in definitions if d.located}))
        self.located = bool(self.resolutions)
        self._builders = tuple(self._builder(d) for d in self.definitions)
        self._cache: dict = {}
        self._cache_size = cache_size
        self.values: Callable[..., tuple] = (
            self._compiled() if not cache_size else self._values  # the same results
        )

    def _compiled(self) -> Callable[..., tuple]:
        """:meth:`values` as one generated function for these definitions.

        The source is built only from the definitions' dimension positions and
        resolutions (validated ints), never from input.
        """
        lines = [
            "def values(city=None, vehicle_type=None, lat=None, lng=None):",
            "    if type(city) is not str or not 0 < len(city) <= 64:",
            "        city = UNKNOWN",
            "    if type(vehicle_type) is not str or not 0 < len(vehicle_type) <= 32:",
            "        vehicle_type = UNKNOWN",
        ]
        names = ["city", "vehicle_type"]
        if self.resolutions:
            cells = [f"c{i}" for i in range(len(self.resolutions))]
            names += cells
            lines += [
                "    tlat = type(lat)",
                "    tlng = type(lng)",
                "    if ((tlat is float or tlat is int) and (tlng is float or tlng is int)",
                "            and -90 <= lat <= 90 and -180 <= lng <= 180):",
                "        try:",
            ]
            lines += [f"            {c} = cell(float(lat), float(lng), {r})"
                      for c, r in zip(cells, self.resolutions)]
            lines += ["        except Exception:",
                      f"            {' = '.join(cells)} = None",
                      "    else:",
                      f"        {' = '.join(cells)} = None"]
        built = []
        for definition in self.definitions:
            picks = []
            for dim in definition.dimensions:
                if dim == CITY:
                    picks.append(names[0])
                elif dim == VEHICLE_TYPE:
                    picks.append(names[1])
                else:
                    picks.append(names[2 + self.resolutions.index(definition.resolution)])
            value = "(" + ", ".join(picks) + ",)"
            if definition.located:
                cell = picks[[d for d in definition.dimensions].index(
                    next(d for d in definition.dimensions if d not in (CITY, VEHICLE_TYPE)))]
                value = f"(None if {cell} is None else {value})"
            built.append(value)
        lines.append("    return (" + ", ".join(built) + ",)")
        scope = {"UNKNOWN": UNKNOWN, "cell": _fast_latlng_to_cell}
        exec("\n".join(lines), scope)  # noqa: S102 - generated from validated definitions
        return scope["values"]

    def _builder(self, definition: SegmentDefinition) -> Callable:
        """A function (city, vehicle_type, cells) -> value, for one definition."""
        picks = []
        for dim in definition.dimensions:
            if dim == CITY:
                picks.append(0)
            elif dim == VEHICLE_TYPE:
                picks.append(1)
            else:
                picks.append(2 + self.resolutions.index(definition.resolution))
        picks = tuple(picks)
        if picks == (0,):
            return lambda parts: (parts[0],)
        if picks == (1,):
            return lambda parts: (parts[1],)
        if picks == (0, 1):
            return lambda parts: (parts[0], parts[1])
        if len(picks) == 1:
            only = picks[0]

            def single(parts: list) -> tuple | None:
                cell = parts[only]
                return None if cell is None else (cell,)

            return single
        located = definition.located

        def general(parts: list) -> tuple | None:
            value = tuple(parts[i] for i in picks)
            if located and None in value:
                return None
            return value

        return general

    def cells(self, lat: object, lng: object) -> list:
        """The H3 cell (int) per resolution of :attr:`resolutions`, or Nones if unlocated."""
        where = valid_location(lat, lng)
        if where is None:
            return [None] * len(self.resolutions)
        if self._cache_size:
            cells = self._cache.get(where)
            if cells is None:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                cells = self._cache[where] = _cells_at(where[0], where[1], self.resolutions)
            return cells
        return _cells_at(where[0], where[1], self.resolutions)

    def _values(
        self, city: object = None, vehicle_type: object = None, lat: object = None,
        lng: object = None,
    ) -> tuple:
        if type(city) is not str or not 0 < len(city) <= 64:
            city = UNKNOWN
        if type(vehicle_type) is not str or not 0 < len(vehicle_type) <= 32:
            vehicle_type = UNKNOWN
        parts = [city, vehicle_type]
        if self.located:
            parts += self.cells(lat, lng)
        return tuple([build(parts) for build in self._builders])

    def of_object(self, obj: Mapping[str, Any]) -> tuple:
        get = obj.get
        return self.values(get("city"), get("vehicle_type"), get("lat"), get("lng"))
