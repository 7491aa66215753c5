"""A batch of rows as the filter steps see it: each row's texts walked once into one flat list, the
texts as one Arrow array for every RE2 screen (:mod:`curation.filter.prefilter`), each screen run once
per batch, and what several steps derive from a row (its prompt, its response, its model turns) computed
once.

Python spends most of a filter step's time gathering: walking a row's messages, joining its turns,
building an Arrow array of its texts for a screen. A dozen steps each doing that for every row cost more
than their decisions. :class:`BatchTexts` does it once per batch and carries it along as the batch
changes: when a cleaner edits a few rows only those rows are walked, screened and derived again, and when
a filter drops rows the rest are taken from what was already made.

It is also the ``fields`` a step receives (:meth:`curation.filter.base.Filter.decide_batch`): indexed by
row it gives that row's :class:`curation.core.texts.TextField` list, built only when asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.schema import Row
from curation.core.texts import MESSAGE_COLUMNS, TextField, text_fields
from curation.filter.prefilter import any_of, text_array

Fields = list[TextField]
"""A row's texts, as :func:`curation.core.texts.text_fields` walks them."""


def _walk(rows: Sequence[Row]) -> tuple[list[str], list[int]]:
    """The texts :func:`text_fields` yields for each row, flat, and where each row's texts start (one
    more entry than rows). The same tests as ``text_fields``, without a :class:`TextField` per text."""
    texts: list[str] = []
    starts = [0]
    append = texts.append
    for row in rows:
        text = row.get("text")
        if isinstance(text, str) and text:
            append(text)
        for column in MESSAGE_COLUMNS:
            for message in row.get(column) or ():
                content = message.get("content")
                if isinstance(content, str) and content:
                    append(content)
        starts.append(len(texts))
    return texts, starts


class BatchTexts(Sequence[Fields]):
    """The rows of a batch with their texts (:func:`text_fields` order), flat: ``texts[starts[i]:starts[i + 1]]``
    are row ``i``'s. Indexing gives a row's :class:`TextField` list. Everything else is made on first use
    and kept: the Arrow array of the texts, each screen's result, each derived per-row value."""

    def __init__(self, rows: Sequence[Row], texts: list[str] | None = None, starts: list[int] | None = None) -> None:
        self.rows: list[Row] = list(rows)
        if texts is None or starts is None:
            texts, starts = _walk(self.rows)
        self.texts = texts
        self.starts = starts
        self._fields: dict[int, Fields] = {}
        self._array: tuple[pa.Array, list[int]] | None = None
        self._screens: dict[ScreenKey, np.ndarray] = {}
        # For a screen carried over from before a cleaner's edits: which texts are new, not yet screened.
        self._stale: dict[ScreenKey, np.ndarray] = {}
        self._at: dict[bytes, tuple[pa.Array, list[int]]] = {}
        self._derived: dict[str, tuple[Callable[[Row], Any], list[Any]]] = {}
        self._owner: np.ndarray | None = None

    # --- the Sequence of each row's fields ----------------------------------------------------

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> Fields:  # type: ignore[override]
        if not isinstance(position, int):
            raise TypeError("BatchTexts is indexed by row position")
        found = self._fields.get(position)
        if found is None:
            found = self._fields[position] = list(text_fields(self.rows[position]))
        return found

    def __iter__(self) -> Iterator[Fields]:
        return (self[position] for position in range(len(self.rows)))

    # --- flat texts ----------------------------------------------------------------------------

    def row_texts(self, position: int) -> list[str]:
        """Row ``position``'s texts."""
        return self.texts[self.starts[position] : self.starts[position + 1]]

    @property
    def owner(self) -> np.ndarray:
        """For each text, the position of its row."""
        if self._owner is None:
            starts = np.asarray(self.starts, dtype=np.int64)
            self._owner = np.repeat(np.arange(len(self.rows), dtype=np.int64), starts[1:] - starts[:-1])
        return self._owner

    def array(self) -> tuple[pa.Array, list[int]]:
        """The texts as an Arrow string array, and the positions of those that cannot be in one (not
        UTF-8: a lone surrogate), which are empty there (:func:`curation.filter.prefilter.text_array`)."""
        if self._array is None:
            self._array = text_array(self.texts)
        return self._array

    # --- screens -------------------------------------------------------------------------------

    def screen(
        self, pattern: str | None, replace: tuple[str, str] | None = None, within: str | None = None
    ) -> np.ndarray:
        """For each text, whether the RE2 ``pattern`` may match it: every text it matches passes, and
        so does a text that cannot be screened, every text without a pattern, and a text a cleaner
        changed when only a few were (:data:`FEW_CHANGED`). With ``replace`` (old, new) the pattern is
        matched against the text with every ``old`` replaced by ``new``. Run once per pattern and batch.
        ``within`` is a screen that passes every text ``pattern`` matches (e.g. a union it is part of):
        only the texts it passes are screened."""
        if pattern is None:
            return np.ones(len(self.texts), dtype=bool)
        key = (pattern, replace)
        found = self._screens.get(key)
        stale = self._stale.get(key)
        carried = found is not None
        if found is None:
            found, stale = np.zeros(len(self.texts), dtype=bool), np.ones(len(self.texts), dtype=bool)
        if stale is not None:
            todo = np.flatnonzero(stale)
            if within is not None:
                todo = todo[self.screen(within, replace)[todo]]
            plain = None
            if len(todo) == len(self.texts) and replace is not None:
                # Only the texts that hold ``old`` change: the others' result is the plain screen's.
                plain = self.screen(pattern)
                todo = np.flatnonzero(self.screen(_literal(replace[0])))
            hits: np.ndarray | None = None
            if carried and len(todo) <= FEW_CHANGED:
                hits = np.ones(len(todo), dtype=bool)  # cheaper to let them pass than to compile the screen
            elif len(todo):
                hits = _match(key, *self._texts_at(todo))
            # Kept only once screened: a pattern RE2 refuses leaves nothing behind.
            if plain is not None:
                found[:] = plain
            if hits is not None:
                found[todo] = hits
            self._screens[key] = found
            self._stale.pop(key, None)
        return found

    def _texts_at(self, positions: np.ndarray) -> tuple[pa.Array, list[int]]:
        """:meth:`array` of the texts at ``positions`` only (kept for the next screen of the same texts)."""
        if len(positions) == len(self.texts):
            return self.array()
        cache_key = positions.tobytes()
        found = self._at.get(cache_key)
        if found is None:
            if self._array is not None:
                array, unscreened = self._array
                found = (
                    array.take(pa.array(positions, pa.int64())),
                    np.flatnonzero(np.isin(positions, unscreened)).tolist() if unscreened else [],
                )
            else:
                found = text_array([self.texts[position] for position in positions.tolist()])
            self._at = {cache_key: found}  # the last set asked for is the one asked for again
        return found

    def prefetch(self, screens: Iterable[Screen]) -> None:
        """Run ``screens`` now: first their union in one RE2 pass over the batch (those that may share
        one), then each on the few texts the union passed; and while the batch's Arrow array is made, so
        that a screen a filter asks for after a cleaner changed some texts only runs on those. Only saves
        time: a screen asked for later gives the same result either way."""
        screens = [screen for screen in dict.fromkeys(screens) if screen.pattern is not None]
        shared: list[str] = []
        for screen in screens:
            if screen.within is None and not screen.alone and screen.pattern is not None:
                shared.append(screen.pattern)
                if screen.replace is not None:  # what screen() runs for it on the whole batch
                    shared.append(_literal(screen.replace[0]))
        shared = [pattern for pattern in dict.fromkeys(shared) if (pattern, None) not in self._screens]
        union = any_of(shared) if len(shared) > 1 and self.texts else None
        if union is not None:
            try:
                candidates = np.flatnonzero(_match((union, None), *self.array()))
            except pa.ArrowException:  # RE2 refuses the union (too large): each screen on its own
                candidates = None
            if candidates is not None:
                for pattern in shared:
                    found = np.zeros(len(self.texts), dtype=bool)
                    found[candidates] = _match((pattern, None), *self._texts_at(candidates))
                    self._screens[(pattern, None)] = found
        for screen in screens:
            with contextlib.suppress(pa.ArrowException):  # RE2 refuses it: the step will say so itself
                self.screen(screen.pattern, screen.replace, screen.within)

    def passing(self, pattern: str | None, replace: tuple[str, str] | None = None) -> list[int]:
        """The positions (in :attr:`texts`) of the texts :meth:`screen` passes, in order."""
        return np.flatnonzero(self.screen(pattern, replace)).tolist()

    def passing_rows(self, pattern: str | None, replace: tuple[str, str] | None = None) -> list[int]:
        """The positions of the rows one of whose texts :meth:`screen` passes, in order."""
        return np.unique(self.owner[self.screen(pattern, replace)]).tolist()

    # --- per-row values several steps use ------------------------------------------------------

    def derived(self, name: str, function: Callable[[Row], Any]) -> list[Any]:
        """``function(row)`` for every row, computed once per batch under ``name`` (a name stands for
        one function: ``prompt`` is always :func:`curation.core.texts.prompt_text`)."""
        found = self._derived.get(name)
        if found is None:
            found = self._derived[name] = (function, [function(row) for row in self.rows])
        return found[1]

    # --- the batch changing ----------------------------------------------------------------------

    def subset(self, positions: Sequence[int]) -> BatchTexts:
        """The rows at ``positions`` (in order), with what was made for them (the Arrow array is made
        again if a screen not yet run is asked for)."""
        bounds = np.asarray(self.starts, dtype=np.int64)
        chosen = np.asarray(positions, dtype=np.int64)
        take = _ranges(bounds[chosen], bounds[chosen + 1])
        texts = self.texts
        starts = np.concatenate([[0], np.cumsum(bounds[chosen + 1] - bounds[chosen])]).tolist()
        subset = BatchTexts([self.rows[position] for position in positions], [texts[i] for i in take.tolist()], starts)
        subset._screens = {key: hits[take] for key, hits in self._screens.items()}
        subset._stale = {key: stale[take] for key, stale in self._stale.items() if stale[take].any()}
        for name, (function, values) in self._derived.items():
            subset._derived[name] = (function, [values[position] for position in positions])
        for new, old in enumerate(positions):
            if old in self._fields:
                subset._fields[new] = self._fields[old]
        return subset

    def replaced(self, changes: Mapping[int, Row]) -> BatchTexts:
        """The batch with the rows at ``changes``' positions replaced (a cleaner's edits): only those rows
        are walked, screened and derived again."""
        if not changes:
            return self
        rows = list(self.rows)
        changed = sorted(changes)
        fresh_texts: list[str] = []
        fresh_starts = [0]
        for position in changed:
            rows[position] = changes[position]
            texts, _ = _walk([rows[position]])
            fresh_texts += texts
            fresh_starts.append(len(fresh_texts))
        # Each new row's texts are a range of the old texts, or of the fresh ones (numbered after them).
        bounds = np.asarray(self.starts, dtype=np.int64)
        source, counts = bounds[:-1].copy(), np.diff(bounds)
        where = np.asarray(changed, dtype=np.int64)
        source[where] = len(self.texts) + np.asarray(fresh_starts[:-1], dtype=np.int64)
        counts[where] = np.diff(np.asarray(fresh_starts, dtype=np.int64))
        origin = _ranges(source, source + counts)
        both = self.texts + fresh_texts
        result = BatchTexts(rows, [both[i] for i in origin.tolist()], np.concatenate([[0], np.cumsum(counts)]).tolist())
        # A screen run before is carried over; the new texts are screened when it is asked for again.
        fresh = np.ones(len(fresh_texts), dtype=bool)
        for key, hits in self._screens.items():
            result._screens[key] = np.concatenate([hits, ~fresh])[origin]
            stale = self._stale.get(key)
            result._stale[key] = np.concatenate([np.zeros(len(hits), dtype=bool) if stale is None else stale, fresh])[
                origin
            ]
        for name, (function, values) in self._derived.items():
            values = list(values)
            for position in changed:
                values[position] = function(rows[position])
            result._derived[name] = (function, values)
        result._fields = {position: fields for position, fields in self._fields.items() if position not in changes}
        return result


FEW_CHANGED = 64
"""A screen carried over a cleaner's edits passes the texts it changed, unscreened, when they are at most
this many: RE2 compiles a pattern on every call (up to a few milliseconds for the large ones), more than
the steps spend deciding a few texts more."""

ScreenKey = tuple[str, tuple[str, str] | None]
"""What a screen's result depends on: its RE2 pattern and the replacement made in each text before it."""


class Screen(NamedTuple):
    """A screen a step asks a batch for (:meth:`BatchTexts.screen`'s arguments)."""

    pattern: str | None
    replace: tuple[str, str] | None = None
    within: str | None = None
    alone: bool = False
    """Never run in a union with other screens (:meth:`BatchTexts.prefetch`): a large pattern whose RE2
    automaton, multiplied with theirs, would be slower than the two passes."""


def _literal(text: str) -> str:
    """An RE2 pattern that matches ``text`` itself."""
    return "".join(f"\\x{{{ord(char):x}}}" for char in text)


def _match(key: ScreenKey, array: pa.Array, unscreened: list[int]) -> np.ndarray:
    """Whether the screen ``key`` passes each text of ``array``; the ``unscreened`` always pass."""
    pattern, replace = key
    if not len(array):
        return np.zeros(0, dtype=bool)
    if replace is not None:
        array = pc.replace_substring(array, *replace)
    hits = np.array(pc.match_substring_regex(array, pattern).to_numpy(zero_copy_only=False), dtype=bool)
    hits[unscreened] = True
    return hits


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The concatenation of ``range(start, stop)`` for each pair, as one int64 array."""
    lengths = stops - starts
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    # Each position is its range's start plus its offset within the range.
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets
