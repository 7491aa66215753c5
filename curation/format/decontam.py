"""Benchmark decontamination: find training rows that contain evaluation items.

Two kinds of evidence, checked per message (so a multi-turn row is compared turn by turn):

* ``exact`` — the text equals a benchmark item after :func:`~curation.core.normalize.normalize_text`
  with punctuation stripped (case, width, spacing and punctuation differences are ignored).
* ``ngram`` — the text shares a word n-gram (default 13 words, :func:`~curation.core.normalize.words`)
  with a benchmark item. This follows the GPT-3 paper (Brown et al. 2020, appendix C): a lower-cased,
  punctuation-free word 13-gram shared with a benchmark is contamination, one shared n-gram is
  enough by default, and n-grams that are too frequent (they matched more than 10 training documents
  there) are boilerplate, not evidence. Here the frequency is counted over benchmark items (an n-gram
  in more than ``common_ngram_max_df`` items is template phrasing) and, optionally, over a
  background corpus (pass the training texts themselves to get GPT-3's exact rule).

Templated benchmarks (GSM-Symbolic-style word problems: one text, many sets of numbers) need one step
more. The words around the numbers are template text by the rule above, but where the values are
small, another question on the same template shares the literal n-grams whose numbers happen to
coincide with some instance's. So an n-gram whose *template* (numbers masked) is in more than
``common_ngram_max_df`` items is evidence only together with the rest of its item: an item matched by
such n-grams alone needs ``filled_template_min_ratio`` (half) of them. A copied question has them all;
on gsm8k-train questions made into templates, another question on the template is flagged 7 times in
60 against 35 with the frequency rule alone and 56 with every n-gram counted, and every verbatim or
wrapped copy is still flagged (``tests/format/test_decontam.py``). Benchmarks without templates
(every n-gram's template in at most ``common_ngram_max_df`` items) are checked exactly as before.

What is scanned is the caller's choice (:func:`row_segments`): user turns (``prompt``, the default)
or every message (``all``: a benchmark item copied into a response counts too). The project file's
``format.decontamination`` section sets all of it (:func:`index_for`), and the formatted asset records
the settings with its contamination report (:func:`settings_record`).

Benchmark items shorter than ``n`` words (most chat-benchmark questions) have no ``n``-gram.
GPT-3 lowered N for benchmarks with short examples (N = the 5th-percentile example length, kept
within 8..13 words); we apply the same bounds per item: an item of ``min_n`` (8) to ``n - 1`` words
matches when the whole item appears contiguously in the text (reported as ``ngram`` with ``n`` = the
item's length), and items under ``min_n`` words only match exactly, because 5-word questions
("What is machine learning?") recur verbatim in unrelated data.

Lookups hash n-grams into dicts built from the benchmark side, so checking a row costs
O(words in the row), independent of the number of benchmark items.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import accumulate, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from curation.core.markdown import table_cell
from curation.core.normalize import NormalizeOptions, normalize_text, words
from curation.core.schema import Row
from curation.core.texts import text_fields
from curation.ingest.readers import UnreadableFile, read_objects

if TYPE_CHECKING:
    from curation.core.config import DecontamConfig

# Exact comparison ignores everything normalisation can ignore, punctuation included.
EXACT_OPTIONS = NormalizeOptions(strip_punctuation=True)

# GPT-3 (Brown et al. 2020, appendix C): 13-gram overlap, N never below 8 words for short items,
# n-grams seen in more than 10 documents ignored as common.
DEFAULT_N = 13
DEFAULT_MIN_N = 8
DEFAULT_COMMON_MAX_DF = 10
# An item matched only through its filled-in template (see ContaminationIndex) needs this share of those
# n-grams: a copy has them all, another question on the same template only those whose numbers coincide.
FILLED_TEMPLATE_MIN_RATIO = 0.5

# Field names tried, in order, when the caller does not name the text / id fields.
_TEXT_FIELD_GUESSES = ("turns", "prompt", "question", "instruction", "Instruction", "input", "text", "query")
_ID_FIELD_GUESSES = ("question_id", "task_id", "id", "idx", "item_id", "uid")

_MAX_OVERLAP_CHARS = 300

MatchKind = Literal["exact", "ngram"]
Fields = Literal["prompt", "all"]


@dataclass(frozen=True)
class BenchmarkItem:
    """One text to keep out of training data: a benchmark question, or one turn of it."""

    benchmark: str
    item_id: str
    text: str


@dataclass(frozen=True)
class Match:
    """Evidence that a text contains a benchmark item."""

    benchmark: str
    item_id: str
    kind: MatchKind
    overlap: str
    """The matched text (normalised words; several spans joined by `` … ``)."""
    ratio: float
    """Share of the item's usable n-grams found in the text (1.0 for exact and whole-item matches)."""
    n: int
    """n-gram length used; the item's length for short items; 0 for exact matches."""


@dataclass(frozen=True)
class FlaggedRow:
    """A training row with every benchmark item it matched."""

    row_id: str
    source: str | None
    matches: tuple[Match, ...]

    def records(self) -> list[dict[str, Any]]:
        """One flat record per match (row_id, source, benchmark, item_id, kind, overlap, ratio, n)."""
        return [{"row_id": self.row_id, "source": self.source, **asdict(m)} for m in self.matches]


# --------------------------------------------------------------------------------------------
# Loading benchmark files
# --------------------------------------------------------------------------------------------


def _guess(record: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
    return next((name for name in candidates if record.get(name) not in (None, "", [])), None)


def load_benchmark(
    path: str | Path, name: str, text_fields: Sequence[str] | None = None, id_field: str | None = None
) -> list[BenchmarkItem]:
    """Read a benchmark file (JSONL, JSON array, CSV or Parquet; ``.gz`` allowed) into items, through the
    same readers as ingestion; a record that cannot be read stops the load with its line.

    String ``text_fields`` of a record are joined into one item; each element of a list field
    (MT-bench ``turns``) becomes its own item, id ``<id>#turn<k>`` (1-based), so every turn is
    checked on its own. Without ``text_fields`` the first present of ``turns``, ``prompt``,
    ``question``, ``instruction``, … is used; without ``id_field`` the first of ``question_id``,
    ``task_id``, ``id``, ``idx`` …, else the 1-based record number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name!r}: file {path} does not exist; check its path in the project file")
    items: list[BenchmarkItem] = []
    try:
        for number, record in read_objects(path):
            items += _record_items(record, number, name, path, text_fields, id_field)
    except UnreadableFile as error:
        raise ValueError(f"benchmark {name!r}: {error}") from None
    return items


def _record_items(
    record: Mapping[str, Any],
    number: int,
    name: str,
    path: Path,
    text_fields: Sequence[str] | None,
    id_field: str | None,
) -> list[BenchmarkItem]:
    """The items of one benchmark record (see :func:`load_benchmark`)."""
    if text_fields:
        fields = list(text_fields)
    else:
        guessed = _guess(record, _TEXT_FIELD_GUESSES)
        fields = [guessed] if guessed else []
    if not any(record.get(f) not in (None, "", []) for f in fields):
        raise ValueError(
            f"benchmark {name!r} ({path}), record {number}: no text in fields "
            f"{fields if text_fields else list(_TEXT_FIELD_GUESSES)}; record keys are "
            f"{sorted(record)}; set text_fields for this benchmark"
        )
    id_name = id_field or _guess(record, _ID_FIELD_GUESSES)
    if id_field and record.get(id_field) is None:
        raise ValueError(
            f"benchmark {name!r} ({path}), record {number}: id field {id_field!r} missing; "
            f"record keys are {sorted(record)}"
        )
    base_id = str(record[id_name]) if id_name else str(number)
    items: list[BenchmarkItem] = []
    joined: list[str] = []
    for field_name in fields:
        value = record.get(field_name)
        if isinstance(value, list):
            label = "turn" if field_name == "turns" else field_name
            items.extend(
                BenchmarkItem(name, f"{base_id}#{label}{k}", str(text))
                for k, text in enumerate(value, start=1)
                if str(text).strip()
            )
        elif value not in (None, ""):
            joined.append(str(value))
    if joined:
        items.append(BenchmarkItem(name, base_id, "\n".join(joined)))
    return items


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------

Gram = tuple[str, ...]


def _grams(tokens: Sequence[str], n: int) -> Iterator[tuple[int, Gram]]:
    for i in range(len(tokens) - n + 1):
        yield i, tuple(tokens[i : i + n])


def _pair_index(keys: Iterable[Gram]) -> frozenset[tuple[str, str]] | None:
    """The first two words of every key; None when a key is shorter than two words (no filter then)."""
    pairs = set()
    for key in keys:
        if len(key) < 2:
            return None
        pairs.add((key[0], key[1]))
    return frozenset(pairs)


def _starts(tokens: Sequence[str], n: int, pairs: frozenset[tuple[str, str]] | None) -> Iterable[int]:
    """The start of every ``n``-gram of ``tokens`` whose first two words begin some key of ``pairs``, in
    order: the only n-grams that can be keys. Testing a word pair (made by ``pairwise`` in C) costs a
    fraction of building each n-gram's tuple and looking it up, and few positions pass."""
    last = len(tokens) - n + 1
    if last <= 0:
        return ()
    if pairs is None:
        return range(last)
    return [start for start, pair in enumerate(pairwise(tokens[: last + 1])) if pair in pairs]


def _templates(tokens: Sequence[str], n: int) -> Iterator[tuple[Gram, Gram]]:
    """Each ``n``-gram of ``tokens`` that holds a number, with its template: the numbers replaced by ``#``
    (the slots a word problem's values fill). Masked once per text and sliced, not rebuilt per n-gram."""
    numbers = list(accumulate((token.isdigit() for token in tokens), initial=0))  # numbers before each position
    masked = ["#" if token.isdigit() else token for token in tokens]
    for start in range(len(tokens) - n + 1):
        if numbers[start + n] > numbers[start]:
            yield tuple(tokens[start : start + n]), tuple(masked[start : start + n])


def _is_trivial(gram: Gram) -> bool:
    """Numbers and single characters only ("0 1 2 … 9 a b c d e f", "1 2 2 3 3 3 …").

    Our own rule, not from a paper: such runs are counting sequences and hex digits that any code
    or maths text contains (they were the only 13-gram hits of Code-Alpaca against HumanEval).
    """
    return not any(len(token) > 1 and not token.isdigit() for token in gram)


def _spans_text(tokens: Sequence[str], starts: Iterable[int], length: int) -> str:
    """Merge matched n-gram positions into contiguous spans of the text and render them."""
    spans: list[list[int]] = []
    for start in sorted(set(starts)):
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], start + length)
        else:
            spans.append([start, start + length])
    text = " … ".join(" ".join(tokens[a:b]) for a, b in spans)
    return text if len(text) <= _MAX_OVERLAP_CHARS else text[: _MAX_OVERLAP_CHARS - 1] + "…"


class ContaminationIndex:
    """Benchmark items hashed for fast lookup; :meth:`check` finds the items a text contains.

    ``n``: n-gram length in words. ``min_n``: shortest item matched by containment (shorter ones
    match only exactly). ``common_ngram_max_df``: an n-gram found in more than this many benchmark
    items is ignored (``None`` disables). ``background`` / ``background_max_df``: an n-gram found in
    more than that many background texts is ignored too. ``min_overlap_ratio``: an ``ngram`` match
    needs at least this share of the item's usable n-grams (0 = any one shared n-gram, as GPT-3).
    ``ignore_trivial``: n-grams of only numbers and single characters are ignored (see
    :func:`_is_trivial`). Ignored n-grams are in :attr:`common_ngrams`, their number per rule in
    :attr:`ignored`. ``filled_template_min_ratio``: the share of an item's filled-template n-grams
    (:meth:`_filled_templates`) a text needs when it shares nothing else with the item (0 disables).
    """

    def __init__(
        self,
        items: Iterable[BenchmarkItem],
        n: int = DEFAULT_N,
        min_n: int = DEFAULT_MIN_N,
        common_ngram_max_df: int | None = DEFAULT_COMMON_MAX_DF,
        background: Iterable[str] | None = None,
        background_max_df: int = DEFAULT_COMMON_MAX_DF,
        min_overlap_ratio: float = 0.0,
        ignore_trivial: bool = True,
        filled_template_min_ratio: float = FILLED_TEMPLATE_MIN_RATIO,
    ) -> None:
        if n < 1 or not 1 <= min_n <= n:
            raise ValueError(f"need 1 <= min_n <= n, got n={n}, min_n={min_n}")
        if not 0.0 <= min_overlap_ratio <= 1.0:
            raise ValueError(f"min_overlap_ratio must be within [0, 1], got {min_overlap_ratio}")
        if not 0.0 <= filled_template_min_ratio <= 1.0:
            raise ValueError(f"filled_template_min_ratio must be within [0, 1], got {filled_template_min_ratio}")
        self.items: list[BenchmarkItem] = list(items)
        if not self.items:
            raise ValueError("no benchmark items to index; check the benchmark files and their text_fields")
        self.n = n
        self.min_n = min_n
        self.min_overlap_ratio = min_overlap_ratio
        self.benchmarks: dict[str, int] = dict(Counter(item.benchmark for item in self.items))

        self._exact: dict[str, list[int]] = defaultdict(list)
        grams: dict[Gram, set[int]] = defaultdict(set)
        # Short items are found through their first min_n words, then compared in full.
        self._short: dict[Gram, list[tuple[int, Gram]]] = defaultdict(list)
        short_df: Counter[Gram] = Counter()
        # Every n-gram with a number → its template (the numbers masked), for _filled_templates.
        slots: dict[Gram, Gram] = {}
        for index, item in enumerate(self.items):
            key = normalize_text(item.text, EXACT_OPTIONS)
            if key:
                self._exact[key].append(index)
            tokens = words(item.text)
            if len(tokens) >= n:
                for _, gram in _grams(tokens, n):
                    grams[gram].add(index)
                if common_ngram_max_df is not None:
                    slots.update(_templates(tokens, n))
            elif len(tokens) >= min_n:
                sequence = tuple(tokens)
                self._short[sequence[:min_n]].append((index, sequence))
                short_df[sequence] += 1

        common: set[Gram] = set()
        # How many n-grams (and short items) each rule ignored, each counted under the first rule that
        # applies: what the formatted asset's metadata reports next to the settings.
        self.ignored: dict[str, int] = {}
        if ignore_trivial:
            self._ignore(
                common, "trivial", {g for g in grams if _is_trivial(g)} | {s for s in short_df if _is_trivial(s)}
            )
        if common_ngram_max_df is not None:
            self._ignore(
                common,
                "template",
                {g for g, owners in grams.items() if len(owners) > common_ngram_max_df}
                | {s for s, df in short_df.items() if df > common_ngram_max_df},
            )
        if background is not None:
            self._ignore(
                common, "background", self._background_common(background, set(grams), set(short_df), background_max_df)
            )
        self.common_ngrams: frozenset[Gram] = frozenset(common)
        self.settings: dict[str, Any] = {
            "n": n,
            "min_n": min_n,
            "common_ngram_max_df": common_ngram_max_df,
            "background_max_df": background_max_df if background is not None else None,
            "min_overlap_ratio": min_overlap_ratio,
            "ignore_trivial": ignore_trivial,
            "filled_template_min_ratio": filled_template_min_ratio,
        }
        """The settings the index was built with (recorded with the contamination report)."""

        self._grams: dict[Gram, tuple[int, ...]] = {
            g: tuple(sorted(owners)) for g, owners in grams.items() if g not in common
        }
        self._usable: Counter[int] = Counter()
        for owners in self._grams.values():
            self._usable.update(owners)
        for prefix in list(self._short):
            kept = [(i, s) for i, s in self._short[prefix] if s not in common]
            if kept:
                self._short[prefix] = kept
            else:
                del self._short[prefix]
        self._gram_pairs = _pair_index(self._grams)
        self._short_pairs = _pair_index(self._short)
        self._filled: frozenset[Gram] = frozenset()
        self._filled_usable: Counter[int] = Counter()
        if common_ngram_max_df is not None:
            self._filled = self._filled_templates(grams, slots, common_ngram_max_df)
            for gram in self._filled:
                self._filled_usable.update(self._grams[gram])
        self.filled_template_min_ratio = filled_template_min_ratio

    def _filled_templates(
        self, grams: Mapping[Gram, set[int]], slots: Mapping[Gram, Gram], max_df: int
    ) -> frozenset[Gram]:
        """Usable n-grams with numbers whose template (``slots``: the n-gram with its numbers masked) is in
        more than ``max_df`` items: templated word problems (GSM-Symbolic-style) share the text around their
        numbers, and where the values are small, another question on the template shares the literal n-grams
        whose numbers happen to coincide. Such n-grams are evidence only together (see :meth:`check`)."""
        owners: dict[Gram, set[int]] = defaultdict(set)
        for gram, template in slots.items():
            owners[template] |= grams[gram]
        common = {template for template, items in owners.items() if len(items) > max_df}
        return frozenset(g for g, template in slots.items() if template in common and g in self._grams)

    def _ignore(self, common: set[Gram], reason: str, grams: set[Gram]) -> None:
        self.ignored[reason] = len(grams - common)
        common |= grams

    def _background_common(
        self, background: Iterable[str], grams: set[Gram], shorts: set[Gram], max_df: int
    ) -> set[Gram]:
        """Benchmark n-grams (and short items) present in more than ``max_df`` background texts."""
        df: Counter[Gram] = Counter()
        short_lengths = sorted({len(s) for s in shorts})
        for text in background:
            tokens = words(text)
            seen = {g for _, g in _grams(tokens, self.n) if g in grams}
            for length in short_lengths:
                seen.update(g for _, g in _grams(tokens, length) if g in shorts)
            df.update(seen)
        return {g for g, count in df.items() if count > max_df}

    def __len__(self) -> int:
        return len(self.items)

    def check(self, text: str) -> list[Match]:
        """Every benchmark item ``text`` contains, exact matches first, then by item order."""
        if not text:
            return []
        matches: list[Match] = []
        exact_hits: set[int] = set()
        key = normalize_text(text, EXACT_OPTIONS)
        for index in self._exact.get(key, ()):
            item = self.items[index]
            exact_hits.add(index)
            matches.append(Match(item.benchmark, item.item_id, "exact", key[:_MAX_OVERLAP_CHARS], 1.0, 0))

        tokens = words(text)
        found: dict[int, set[Gram]] = defaultdict(set)
        starts: dict[int, list[int]] = defaultdict(list)
        if self._grams:
            for start in _starts(tokens, self.n, self._gram_pairs):
                gram = tuple(tokens[start : start + self.n])
                for index in self._grams.get(gram, ()):
                    if index not in exact_hits:
                        found[index].add(gram)
                        starts[index].append(start)
        short_hits: dict[int, tuple[int, int]] = {}
        if self._short:
            for start in _starts(tokens, self.min_n, self._short_pairs):
                prefix = tuple(tokens[start : start + self.min_n])
                for index, sequence in self._short.get(prefix, ()):
                    if (
                        index not in exact_hits
                        and index not in short_hits
                        and tuple(tokens[start : start + len(sequence)]) == sequence
                    ):
                        short_hits[index] = (start, len(sequence))

        for index in sorted(set(found) | set(short_hits)):
            item = self.items[index]
            if index in short_hits:
                start, length = short_hits[index]
                matches.append(
                    Match(item.benchmark, item.item_id, "ngram", _spans_text(tokens, [start], length), 1.0, length)
                )
                continue
            ratio = len(found[index]) / self._usable[index]
            filled = sum(gram in self._filled for gram in found[index]) if self._filled else 0
            if filled == len(found[index]) and filled < self.filled_template_min_ratio * self._filled_usable[index]:
                continue  # only the filled-in template, and too little of it: another question on the template
            if ratio >= self.min_overlap_ratio:
                matches.append(
                    Match(
                        item.benchmark,
                        item.item_id,
                        "ngram",
                        _spans_text(tokens, starts[index], self.n),
                        round(ratio, 4),
                        self.n,
                    )
                )
        return matches


def index_for(items: Iterable[BenchmarkItem], settings: DecontamConfig) -> ContaminationIndex:
    """The index of ``items`` under the project file's ``format.decontamination`` settings: the formatted
    stage and its ``no_contamination_left`` check build it this way, so the check re-scans with the rule
    the stage applied."""
    return ContaminationIndex(
        items,
        n=settings.n,
        min_n=settings.min_n,
        common_ngram_max_df=settings.common_ngram_max_df,
        min_overlap_ratio=settings.min_overlap_ratio,
        ignore_trivial=settings.ignore_trivial,
        filled_template_min_ratio=settings.filled_template_min_ratio,
    )


def settings_record(index: ContaminationIndex, fields: Fields) -> dict[str, Any]:
    """What decontamination checked, for the formatted asset's metadata and the contamination report: the
    fields scanned, the index's settings, the number of benchmark items and of n-grams each rule ignored."""
    return {
        "fields": fields,
        **index.settings,
        "benchmark_items": len(index),
        "ngrams_ignored": dict(index.ignored),
        "ngrams_of_filled_templates": len(index._filled),
    }


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def row_segments(row: Row, fields: Fields = "prompt") -> list[str]:
    """The texts of a row checked one by one: each user turn (``prompt``) or every message (``all``).

    Turns are separate so that an n-gram never spans two turns and a benchmark turn matches a
    training turn exactly.
    """
    if fields not in ("prompt", "all"):
        raise ValueError(f"fields must be 'prompt' or 'all', got {fields!r}")
    return [
        field.text
        for field in text_fields(row)
        if fields == "all" or field.column == "text" or (field.column == "messages" and field.role == "user")
    ]


def _strength(match: Match) -> tuple[bool, float]:
    return match.kind == "exact", match.ratio


def check_row(row: Row, index: ContaminationIndex, fields: Fields = "prompt") -> list[Match]:
    """The matches of a row over its segments; one match per item, the strongest kept."""
    best: dict[tuple[str, str], Match] = {}
    for segment in row_segments(row, fields):
        for match in index.check(segment):
            key = (match.benchmark, match.item_id)
            current = best.get(key)
            if current is None or _strength(match) > _strength(current):
                best[key] = match
    return list(best.values())


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class _BenchmarkStats:
    items_total: int | None = None
    items: set[str] = field(default_factory=set)
    rows: set[str] = field(default_factory=set)
    kinds: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)


def contamination_report(
    flagged: Iterable[FlaggedRow], index: ContaminationIndex | None = None, max_examples: int = 5
) -> dict[str, dict[str, Any]]:
    """Per benchmark: items hit, rows hit, matches by kind and a few examples.

    With ``index`` every indexed benchmark appears, clean ones with zeros, so a report also proves
    what was checked.
    """
    stats: dict[str, _BenchmarkStats] = {}
    if index is not None:
        for name, total in index.benchmarks.items():
            stats[name] = _BenchmarkStats(items_total=total)
    for row in flagged:
        for match in row.matches:
            entry = stats.setdefault(match.benchmark, _BenchmarkStats())
            entry.items.add(match.item_id)
            entry.rows.add(row.row_id)
            entry.kinds[match.kind] += 1
            if len(entry.examples) < max_examples:
                entry.examples.append(
                    {
                        "row_id": row.row_id,
                        "source": row.source,
                        "item_id": match.item_id,
                        "kind": match.kind,
                        "ratio": match.ratio,
                        "overlap": match.overlap,
                    }
                )
    return {
        name: {
            "items_total": s.items_total,
            "items_hit": len(s.items),
            "rows_hit": len(s.rows),
            "matches_exact": s.kinds["exact"],
            "matches_ngram": s.kinds["ngram"],
            "item_ids": sorted(s.items),
            "examples": s.examples,
        }
        for name, s in sorted(stats.items())
    }


def settings_markdown(settings: Mapping[str, Any]) -> str:
    """One sentence saying what was checked (a :func:`settings_record`), above the report's table."""
    scanned = "every message" if settings["fields"] == "all" else "user turns"
    n, min_n = settings["n"], settings["min_n"]
    parts = [
        f"Checked {scanned} (`fields: {settings['fields']}`) against {settings['benchmark_items']:,} benchmark items",
        f"exact text and {n}-word n-grams" + (f" (items of {min_n}–{n - 1} words whole)" if min_n < n else ""),
    ]
    ignored = settings.get("ngrams_ignored", {})
    if settings["common_ngram_max_df"] is not None:
        parts.append(
            f"an n-gram in more than {settings['common_ngram_max_df']} items is template text "
            f"({ignored.get('template', 0):,} ignored)"
        )
        if settings["filled_template_min_ratio"] and settings.get("ngrams_of_filled_templates"):
            parts.append(
                f"{settings['ngrams_of_filled_templates']:,} n-grams fill such a template with numbers: an item "
                f"matched by those alone needs {settings['filled_template_min_ratio']:.0%} of them"
            )
    else:
        parts.append("every shared n-gram counts (`common_ngram_max_df: null`)")
    if settings["min_overlap_ratio"]:
        parts.append(f"a match needs {settings['min_overlap_ratio']:.0%} of an item's n-grams")
    if settings["ignore_trivial"]:
        parts.append(f"number-only n-grams ignored ({ignored.get('trivial', 0):,})")
    return "; ".join(parts) + "."


def render_report_markdown(report: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any] | None = None) -> str:
    """The report as a Markdown summary table plus examples (for asset metadata and reports), after what was
    checked when ``settings`` (a :func:`settings_record`) is given."""
    lines = [settings_markdown(settings), ""] if settings else []
    lines += ["| benchmark | items | items hit | rows hit | exact | n-gram |", "|---|---:|---:|---:|---:|---:|"]
    for name, entry in report.items():
        total = "?" if entry.get("items_total") is None else entry["items_total"]
        lines.append(
            f"| {name} | {total} | {entry['items_hit']} | {entry['rows_hit']} | "
            f"{entry['matches_exact']} | {entry['matches_ngram']} |"
        )
    for name, entry in report.items():
        if entry["examples"]:
            lines += ["", f"**{name}** examples:", ""]
            for ex in entry["examples"]:
                overlap = table_cell(str(ex["overlap"]))
                lines.append(
                    f"- row `{ex['row_id']}` ↔ item `{ex['item_id']}` ({ex['kind']}, "
                    f"ratio {ex['ratio']:.2f}): {overlap}"
                )
    return "\n".join(lines) + "\n"
