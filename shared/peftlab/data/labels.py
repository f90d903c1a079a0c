"""The label vocabulary of a data set: what the task head predicts, in which
order, and how a label read from a file maps to an output index.

Built once per data set from all its records (so every split maps labels
alike) by one of the builders below, which *return* it; the DataModule keeps
it and the CLI links ``num_outputs`` / ``label_names`` into the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from peftlab.errors import DataError


@dataclass(frozen=True)
class LabelVocabulary:
    """What the head predicts.

    Attributes:
        num_outputs: outputs of the task head (1 for binary and single-output regression).
        names: class names (binary: negative then positive) or output / label
            names, in output order; ``None`` when the data has none.
        index: class name -> class index (classification tasks; empty otherwise).
    """

    num_outputs: int
    names: list[str] | None = None
    index: dict[str, int] = field(default_factory=dict)

    def index_of(self, name: str, source: Any, record: Any) -> int:
        """The class index of ``name``; a name outside the vocabulary is a :class:`DataError`."""
        if name not in self.index:
            raise DataError(source, record, f"label {name!r} is not one of label_names {self.names}")
        return self.index[name]


def class_vocabulary(labels: Iterable[tuple[Any, str]], given: Sequence[str] | None, source: Any,
                     task_type: str = "multiclass") -> LabelVocabulary:
    """Classes from the ``(record, class name)`` pairs of a whole data set: the
    ``given`` names in their order, else the sorted names seen. A seen name
    outside ``given`` is a :class:`DataError` naming its first record; so are
    duplicated names and more than two classes for ``binary``. A binary task has
    one output (the positive class, ``names[1]``)."""
    first_seen: dict[str, Any] = {}
    for record, name in labels:
        first_seen.setdefault(str(name), record)
    names = list(given) if given is not None else sorted(first_seen)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(source, None, f"label_names has duplicates: {duplicated}")
    for name, record in first_seen.items():
        if name not in names:
            raise DataError(source, record, f"label {name!r} is not one of label_names {names}")
    if not names:
        raise DataError(source, None, "no labels found")
    if task_type == "binary" and len(names) > 2:
        raise DataError(source, None, f"task_type binary but {len(names)} classes: {names}")
    return LabelVocabulary(num_outputs=1 if task_type == "binary" else len(names), names=names,
                           index={name: i for i, name in enumerate(names)})


def output_vocabulary(widths: Iterable[tuple[Any, int]], names: Sequence[str] | None, source: Any) -> LabelVocabulary:
    """Outputs of a regression or multi-label task from each ``(record, number of
    values)``: every record must have as many values as the first (else a
    :class:`DataError` naming the odd record); ``names`` (if given) name them."""
    width, first = None, None
    for record, k in widths:
        if width is None:
            width, first = max(k, 1), record
        elif max(k, 1) != width:
            raise DataError(source, record, f"{max(k, 1)} target value(s), but record {first} has {width}")
    if width is None:
        raise DataError(source, None, "no records")
    if names is not None and len(names) != width:
        raise DataError(source, first, f"{width} labels but label_names has {len(names)}: {list(names)}")
    return LabelVocabulary(num_outputs=width, names=list(names) if names is not None else None)
