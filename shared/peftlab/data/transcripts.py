"""Transcripts for speech recognition: normalisation, the character vocabulary
a CTC head predicts, and encoding a transcript into its indices.

The vocabulary is a :class:`~peftlab.data.labels.LabelVocabulary` whose names
are the output symbols in head order: ``<blank>`` (index 0, CTC's blank),
``|`` (the word boundary, written for each space), then the characters. As the
label names of the task, it goes wherever label names go: into the model, its
checkpoints and ``adapter_config.json`` (``label_names``), so an adapter loaded
later decodes with the vocabulary it was trained with.

Normalisation (:class:`TextNormalizer`), applied to every transcript before
its vocabulary is built or it is encoded:

* ``char_map``: characters replaced first (``{"é": "e", "-": " "}``; a
  value of ``""`` deletes the character);
* ``case``: ``"upper"``, ``"lower"`` or ``None`` (kept as written);
* ``strip_punctuation``: delete Unicode punctuation (categories ``P*``)
  except the apostrophe inside words (``don't``); hyphens and slashes
  become spaces (``twenty-one`` -> ``twenty one``);
* whitespace runs become one space; leading and trailing spaces go.

A character outside a given (or training-built) vocabulary is, with
``unknown_chars="error"``, a :class:`~peftlab.errors.DataError` naming the
utterance and the character; ``"drop"`` deletes it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peftlab.data.labels import LabelVocabulary
from peftlab.errors import DataError

BLANK = "<blank>"  #: CTC's blank symbol, always output 0
WORD_BOUNDARY = "|"  #: the symbol a space between words is written as
CASES = (None, "upper", "lower")
UNKNOWN_CHARS = ("error", "drop")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class TextNormalizer:
    """How transcripts are normalised (see the module doc for each step)."""

    case: str | None = "upper"
    strip_punctuation: bool = True
    char_map: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.case not in CASES:
            raise ValueError(f"case must be one of {CASES}, got {self.case!r}")
        bad = [k for k in self.char_map if not isinstance(k, str) or len(k) != 1]
        if bad:
            raise ValueError(f"char_map keys must be single characters, got {bad}")

    def __call__(self, text: str) -> str:
        text = "".join(self.char_map.get(c, c) for c in text)
        if self.case == "upper":
            text = text.upper()
        elif self.case == "lower":
            text = text.lower()
        if self.strip_punctuation:
            text = "".join(_unpunctuated(text, i) for i in range(len(text)))
        return _SPACES.sub(" ", text).strip()


def _unpunctuated(text: str, i: int) -> str:
    """Character ``i`` of ``text`` with punctuation removed: a space for hyphens and slashes, the
    apostrophe kept between two letters, other punctuation deleted."""
    c = text[i]
    if not unicodedata.category(c).startswith("P"):
        return c
    if c in "-/\u2010\u2011\u2012\u2013\u2014":
        return " "
    if c in "'\u2019" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
        return "'"
    return ""


def transcript_symbols(text: str) -> list[str]:
    """The output symbols of a normalised transcript: its characters, spaces as :data:`WORD_BOUNDARY`."""
    return [WORD_BOUNDARY if c == " " else c for c in text]


def character_vocabulary(transcripts: Iterable[tuple[Any, str]], given: Sequence[str] | None,
                         source: Any) -> LabelVocabulary:
    """The CTC vocabulary: :data:`BLANK`, :data:`WORD_BOUNDARY`, then the ``given`` characters in
    their order (``BLANK`` / ``WORD_BOUNDARY`` may be listed, at the start), else the sorted
    characters of the ``(record, normalised transcript)`` pairs (the training transcripts).

    Raises:
        DataError: an empty transcript (naming its record), no transcripts, a given
            symbol that is not one character, duplicated symbols.
    """
    seen: set[str] = set()
    for record, text in transcripts:
        if not text:
            raise DataError(source, record, "empty transcript (after normalisation): CTC needs at least one "
                                            "character to align")
        seen.update(transcript_symbols(text))
    if given is None:
        if not seen:
            raise DataError(source, None, "no transcripts to build the character vocabulary from")
        chars = sorted(seen - {WORD_BOUNDARY})
    else:
        chars = [c for c in given if c not in (BLANK, WORD_BOUNDARY)]
        odd = [c for c in chars if len(c) != 1]
        if odd:
            raise DataError(source, None, f"vocabulary entries must be single characters (besides {BLANK!r} and "
                                          f"{WORD_BOUNDARY!r}), got {odd}")
        if chars.count(" "):
            raise DataError(source, None, f"the vocabulary writes spaces as {WORD_BOUNDARY!r}; do not list ' '")
    names = [BLANK, WORD_BOUNDARY] + chars
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(source, None, f"the vocabulary has duplicates: {duplicated}")
    return LabelVocabulary(num_outputs=len(names), names=names, index={n: i for i, n in enumerate(names)})


def encode_transcript(text: str, vocabulary: LabelVocabulary, source: Any, record: Any,
                      unknown_chars: str = "error") -> list[int]:
    """The vocabulary indices of a normalised transcript (never the blank).

    Raises:
        DataError: a character outside the vocabulary (with ``unknown_chars="error"``), or
            nothing left to transcribe.
    """
    if unknown_chars not in UNKNOWN_CHARS:
        raise ValueError(f"unknown_chars must be one of {UNKNOWN_CHARS}, got {unknown_chars!r}")
    ids = []
    for symbol in transcript_symbols(text):
        index = vocabulary.index.get(symbol)
        if index is None or index == 0:
            if unknown_chars == "error":
                raise DataError(source, record, f"character {symbol!r} of transcript {text!r} is not in the "
                                                f"vocabulary {''.join(vocabulary.names[1:])!r} (map it with "
                                                f"char_map, or set unknown_chars: drop)")
            continue
        ids.append(index)
    while ids and ids[-1] == vocabulary.index[WORD_BOUNDARY]:  # a dropped last word leaves a boundary
        ids.pop()
    if not ids:
        raise DataError(source, record, f"transcript {text!r} has no character of the vocabulary left")
    return ids


def ctc_frames_needed(ids: Sequence[int]) -> int:
    """The fewest output frames CTC can align ``ids`` to: one per symbol, plus a blank between
    each pair of equal neighbours (``"ll"`` needs three)."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)
