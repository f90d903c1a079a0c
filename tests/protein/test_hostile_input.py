"""Hostile input for the protein readers (property-based, hypothesis).

Every reader call either loads what was written (checked record by record
against what the test wrote) or raises ``peftlab.data.DataError`` whose message
names the file, then the record (``row{N}``, the record id or ``line N``), then
the problem. Anything else (``UnicodeDecodeError``, ``csv.Error``, ``KeyError``,
...) fails the test, and so does an example that runs longer than
``tests.hostile.EXAMPLE_SECONDS`` (a hang).

Inputs: odd and non-ASCII characters in sequences, ids, targets and labels;
empty records; huge lines; non-UTF-8 bytes (latin-1, binary); truncated files;
duplicated ids; wrong field counts. The hypothesis profile (``tests/conftest.py``)
is derandomized, so every run draws the same examples.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peftlab.data import IGNORE_INDEX
from peftlab_protein.data import (
    ALLOWED_RESIDUES,
    ProteinDataModule,
    ProteinRecord,
    read_fasta_with_labels,
    read_flip_csv,
    read_flip_fasta,
)

from tests.hostile import assert_names, attempt, examples, line_of, scratch

pytestmark = pytest.mark.hostile  # the property tests: `make fuzz` runs them with fresh, many more examples


# ---- what is written ---------------------------------------------------------------------

ASCII_WHITESPACE = " \t\n\r\v\f"
LETTERS = ALLOWED_RESIDUES + ALLOWED_RESIDUES.lower()


def residues_of(raw: str) -> str:
    """What the readers make of a raw sequence: ASCII whitespace removed, upper-cased."""
    return re.sub(f"[{re.escape(ASCII_WHITESPACE)}]", "", raw).upper()


any_char = st.characters(codec="utf-8")  # every code point UTF-8 can write (no lone surrogates)
word_char = any_char.filter(lambda c: not c.isspace())
# residues with spaces and tabs, repeated up to 2000 times: lines up to ~60,000 characters
raw_sequences = st.builds(lambda s, k: s * k,
                          st.text(st.sampled_from(LETTERS + " \t"), min_size=1, max_size=30).filter(str.strip),
                          st.sampled_from([1, 1, 1, 1, 40, 2000]))
targets = st.floats(allow_nan=False, allow_infinity=False)
# (set, validation) as written -> the split it means
SPLIT_MARKS = [("train", "False", "train"), ("train", "", "train"), ("train", "True", "val"),
               ("TRAIN", "1", "val"), (" test ", "no", "test"), ("valid", "0", "val"), ("Test", "", "test")]
# csv writer options: a lone \r is only quoted when it is part of the line terminator
CSV_DIALECTS = [("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]


@dataclass
class Table:
    """A FLIP CSV: raw cells per row and the records a reader must return."""

    columns: list[str]
    rows: list[dict[str, str]]
    expected: list[ProteinRecord]
    id_column: str | None

    def record(self, i: int) -> str:
        """The record name of row ``i`` (0-based) in error messages."""
        return self.expected[i].id

    def encode(self, *, dialect: tuple[str, int] = CSV_DIALECTS[0], bom: bool = False, blank_lines: bool = False,
               extra: dict[int, list[str]] | None = None) -> tuple[bytes, list[int]]:
        """The file's bytes and the byte offset where each data row starts.

        ``extra`` replaces a row's cells by a list (to write too many or too few fields).
        """
        terminator, quoting = dialect
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
        writer.writerow(self.columns)
        starts = []
        for i, row in enumerate(self.rows):
            if blank_lines:
                out.write(terminator)  # blank lines are skipped and do not count as rows
            starts.append(len(out.getvalue().encode()))
            writer.writerow((extra or {}).get(i, [row[c] for c in self.columns]))
        head = codecs.BOM_UTF8 if bom else b""
        return head + out.getvalue().encode(), [s + len(head) for s in starts]


@st.composite
def flip_tables(draw: Any, max_rows: int = 5) -> Table:
    n = draw(st.integers(1, max_rows))
    id_column = draw(st.sampled_from([None, "id", "name"]))
    ids = draw(st.lists(st.text(any_char, min_size=1, max_size=8).filter(str.strip), min_size=n, max_size=n,
                        unique_by=str.strip))
    sequences = draw(st.lists(raw_sequences, min_size=n, max_size=n))
    values = draw(st.lists(targets, min_size=n, max_size=n))
    marks = draw(st.lists(st.sampled_from(SPLIT_MARKS), min_size=n, max_size=n))
    columns = ([id_column] if id_column else []) + ["sequence", "target", "set", "validation"]
    rows, expected = [], []
    for k in range(n):
        row = {"sequence": sequences[k], "target": repr(values[k]), "set": marks[k][0], "validation": marks[k][1]}
        if id_column:
            row[id_column] = ids[k]
        rows.append(row)
        expected.append(ProteinRecord(ids[k].strip() if id_column else f"row{k + 1}", residues_of(sequences[k]),
                                      values[k], marks[k][2]))
    return Table(columns, rows, expected, id_column)


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---- FLIP CSV ----------------------------------------------------------------------------

@settings(max_examples=examples(40))
@given(table=flip_tables(), dialect=st.sampled_from(CSV_DIALECTS), bom=st.booleans(), blank_lines=st.booleans())
def test_flip_csv_loads_exactly_what_was_written(table, dialect, bom, blank_lines):
    with scratch() as folder:
        data, _ = table.encode(dialect=dialect, bom=bom, blank_lines=blank_lines)
        path = write(folder, "t.csv", data)
        records, error = attempt(read_flip_csv, path)
        assert error is None, error
        assert records == table.expected
        # and through the DataModule: ESM tokens spell the (cropped) sequences
        dm = ProteinDataModule(path=str(path), max_length=50, val_fraction=0.0)
        everything = [r for split in dm.splits.values() for r in split]
        assert sorted(r.id for r in everything) == sorted(r.id for r in table.expected)
        batch = dm.collate(everything)
        tokens = batch["tokens"]
        width = max(min(len(r.sequence), 50) for r in everything) + 2
        assert tokens.shape == (len(everything), width)
        for row, record in zip(tokens.tolist(), everything):
            seq = record.sequence[:50]
            assert [dm.alphabet.get_tok(t) for t in row[1 : len(seq) + 1]] == list(seq)


CSV_EDITS = ["odd_residue", "blank_sequence", "bad_target", "non_utf8", "field_count", "duplicate_id",
             "truncate", "huge_field"]


@settings(max_examples=examples(150))
@given(table=flip_tables(), edit=st.sampled_from(CSV_EDITS), dialect=st.sampled_from(CSV_DIALECTS),
       bom=st.booleans(), blank_lines=st.booleans(), data=st.data())
def test_flip_csv_hostile_edit(table, edit, dialect, bom, blank_lines, data):
    """One hostile edit in one row: the reader loads the edited table exactly or names the row."""
    i = data.draw(st.integers(0, len(table.rows) - 1), label="row")
    row, expected = table.rows[i], list(table.expected)
    extra: dict[int, list[str]] = {}
    want: tuple[Any, str] | None = None  # (record, problem) of the DataError, None: must load
    if edit == "odd_residue":
        c = data.draw(any_char, label="char")
        p = data.draw(st.integers(0, len(row["sequence"])), label="position")
        row["sequence"] = row["sequence"][:p] + c + row["sequence"][p:]
        if c in ASCII_WHITESPACE or (c.isascii() and c.upper() in ALLOWED_RESIDUES):
            expected[i] = replace(expected[i], sequence=residues_of(row["sequence"]))
        else:  # a non-ASCII letter that upper-cases to a residue ("ſ" -> "S") is invalid too
            want = (table.record(i), f"invalid residue {re.escape(repr(c.upper() if c.isascii() else c))}")
    elif edit == "blank_sequence":
        row["sequence"] = data.draw(st.text(st.sampled_from(ASCII_WHITESPACE), max_size=3), label="blank")
        want = (table.record(i), "empty sequence")
    elif edit == "bad_target":
        text = data.draw(st.text(any_char, max_size=8), label="target")
        row["target"] = text
        try:
            value = float(text.strip())
        except ValueError:
            want = (table.record(i), "missing target value" if not text.strip() else "is not a number")
        else:
            if value != value or value in (float("inf"), float("-inf")):
                want = (table.record(i), "is not a finite number")
            else:
                expected[i] = replace(expected[i], label=value)
    elif edit == "duplicate_id":
        if table.id_column is None or len(table.rows) < 2:
            edit = "none"
        else:
            j = (i + 1) % len(table.rows)
            row[table.id_column] = table.rows[j][table.id_column]
            want = (expected[j].id, "duplicated id")
    elif edit == "field_count":
        cells = [row[c] for c in table.columns]
        if data.draw(st.booleans(), label="more"):
            extra[i] = cells + [data.draw(st.text(any_char, max_size=3), label="cell")]
            want = (f"row{i + 1}", "more fields than the header")
        else:
            extra[i] = cells[:-1]
            want = (f"row{i + 1}", "fewer fields than the header")
    elif edit == "huge_field":  # over the csv module's field size limit (131,072 characters)
        row["sequence"] = "M" * 131_073
    encoded, starts = table.encode(dialect=dialect, bom=bom, blank_lines=blank_lines, extra=extra)
    with scratch() as folder:
        if edit == "non_utf8":  # a latin-1 or binary byte at the start of row i: never valid UTF-8 there
            byte = data.draw(st.integers(0x80, 0xFF), label="byte")
            encoded = encoded[: starts[i]] + bytes([byte]) + encoded[starts[i] :]
            want = (f"line {line_of(encoded, starts[i])}", "not UTF-8 text")
        if edit == "truncate":
            cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
            path = write(folder, "t.csv", encoded[:cut])
            records, error = attempt(read_flip_csv, path)
            if error is not None:
                assert_names(error, path, record=error.record)  # file-level (no header, no rows) or a row
                return
            # loaded: every row before the last is complete; the last kept its id and full sequence
            # (its later cells may be cut: target 0.25 -> 0.2)
            n = len(records)
            assert records[:-1] == expected[: n - 1]
            assert (records[-1].id, records[-1].sequence) == (expected[n - 1].id, expected[n - 1].sequence)
            return
        path = write(folder, "t.csv", encoded)
        records, error = attempt(read_flip_csv, path)
        if edit == "huge_field":
            first, last = line_of(encoded, starts[i]), line_of(encoded, starts[i + 1] if i + 1 < len(starts)
                                                                   else len(encoded))
            assert_names(error, path, problem="field larger than field limit")
            assert first <= int(re.fullmatch(r"line (\d+)", error.record)[1]) <= last, str(error)
        elif want is None:
            assert error is None, error
            assert records == expected
        else:
            assert_names(error, path, *want)


def test_csv_encodings_and_huge_lines_examples(tmp_path):
    """A few fixed cases of the properties above, readable on their own."""
    latin1 = write(tmp_path, "l.csv", "sequence,target\nMKV,1\nMKVé,2\n".encode("latin-1"))
    _, error = attempt(read_flip_csv, latin1)
    assert_names(error, latin1, "line 3", r"not UTF-8 text: byte\(s\) E9 2C 32 0A at column 4")
    utf16 = write(tmp_path, "u.csv", "sequence,target\nMKV,1\n".encode("utf-16"))
    _, error = attempt(read_flip_csv, utf16)
    assert_names(error, utf16, "line 1", "UTF-16 text")
    binary = write(tmp_path, "b.csv", bytes(range(256)) * 4)
    _, error = attempt(read_flip_csv, binary)
    assert_names(error, binary, "line 2", r"not UTF-8 text: byte\(s\) 80 81 82 83 at column 118")  # 0x0A ends line 1
    huge = write(tmp_path, "h.csv", b"sequence,target\nMKV,1\n" + b"M" * 200_000 + b",2\n")
    _, error = attempt(read_flip_csv, huge)
    assert_names(error, huge, "line 3", "field larger than field limit")
    long_ok = write(tmp_path, "ok.csv", b"sequence,target\n" + b"MK" * 60_000 + b",2\n")
    assert read_flip_csv(long_ok)[0].sequence == "MK" * 60_000
    twice = write(tmp_path, "twice.csv", b"sequence,target,target\nMKV,1,2\n")
    _, error = attempt(read_flip_csv, twice)
    assert_names(error, twice, "line 1", r"names column\(s\) \['target'\] more than once")
    long_s = write(tmp_path, "s.csv", "sequence,target\nMKſV,1\nMKﬀ,2\n".encode())
    _, error = attempt(read_flip_csv, long_s)
    assert_names(error, long_s, "row1", "invalid residue 'ſ' at position 3")
    multilabel = write(tmp_path, "m.csv", b'sequence,target\nMKV,","\n')
    _, error = attempt(read_flip_csv, multilabel, task_type="multilabel")
    assert_names(error, multilabel, "row1", "holds no 0/1 values")


# ---- FLIP FASTA --------------------------------------------------------------------------

@dataclass
class Fasta:
    """A FLIP FASTA: header and sequence lines per record and the records a reader must return."""

    headers: list[str]
    bodies: list[list[str]]  # sequence lines
    expected: list[ProteinRecord]

    def encode(self, *, newline: str = "\n", bom: bool = False, comments: bool = False,
               before: str = "") -> tuple[bytes, list[int], list[int]]:
        """The bytes, and the byte offsets of each record's header line and first body line."""
        text, headers, bodies = before, [], []
        for header, body in zip(self.headers, self.bodies):
            if comments:
                text += f"; a comment{newline}{newline}"
            headers.append(len(text.encode()))
            text += header + newline
            bodies.append(len(text.encode()))
            text += "".join(line + newline for line in body)
        head = codecs.BOM_UTF8 if bom else b""
        return (head + text.encode(), [h + len(head) for h in headers], [b + len(head) for b in bodies])


def wrap(text: str, width: int) -> list[str]:
    return [text[k : k + width] for k in range(0, len(text), width)]


@st.composite
def flip_fastas(draw: Any, max_records: int = 4) -> Fasta:
    n = draw(st.integers(1, max_records))
    ids = draw(st.lists(st.text(word_char, min_size=1, max_size=8), min_size=n, max_size=n, unique=True))
    sequences = draw(st.lists(raw_sequences, min_size=n, max_size=n))
    values = draw(st.lists(targets, min_size=n, max_size=n))
    marks = draw(st.lists(st.sampled_from(SPLIT_MARKS), min_size=n, max_size=n))
    key = draw(st.sampled_from(["TARGET", "target", "Target"]))  # attribute keys are case-insensitive
    headers, bodies, expected = [], [], []
    for k in range(n):
        set_value, validation, split = marks[k]
        header = f">{ids[k]} {key}={values[k]!r}"
        if set_value.strip() == set_value:  # attribute values cannot hold spaces
            header += f" SET={set_value}" + (f" VALIDATION={validation}" if validation else "")
        else:
            split = None
        headers.append(header)
        width = draw(st.integers(1, 80), label="width")
        bodies.append(wrap(sequences[k].strip(" \t"), width))
        expected.append(ProteinRecord(ids[k], residues_of(sequences[k]), values[k], split))
    return Fasta(headers, bodies, expected)


def splits_consistent(fasta: Fasta) -> bool:
    """All records carry a split, or none do (mixing is a DataModule error, not a reader one)."""
    return len({r.split is None for r in fasta.expected}) == 1


@settings(max_examples=examples(40))
@given(fasta=flip_fastas(), newline=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans(),
       comments=st.booleans())
def test_flip_fasta_loads_exactly_what_was_written(fasta, newline, bom, comments):
    with scratch() as folder:
        data, _, _ = fasta.encode(newline=newline, bom=bom, comments=comments)
        path = write(folder, "t.fasta", data)
        records, error = attempt(read_flip_fasta, path)
        assert error is None, error
        assert records == fasta.expected


FASTA_EDITS = ["odd_residue", "empty_record", "bad_target", "no_target", "bad_set", "duplicate_id", "non_utf8",
               "text_before_header", "truncate"]


@settings(max_examples=examples(150))
@given(fasta=flip_fastas(), edit=st.sampled_from(FASTA_EDITS), newline=st.sampled_from(["\n", "\r\n"]),
       bom=st.booleans(), data=st.data())
def test_flip_fasta_hostile_edit(fasta, edit, newline, bom, data):
    """One hostile edit in one record: the reader loads the edited file exactly or names the record."""
    i = data.draw(st.integers(0, len(fasta.headers) - 1), label="record")
    expected, record = list(fasta.expected), fasta.expected[i].id
    want: tuple[Any, str] | None = None
    before = ""
    if edit == "odd_residue":  # inside the first sequence line (a ';' or '>' there is not a line start)
        c = data.draw(any_char, label="char")
        line = fasta.bodies[i][0]
        p = data.draw(st.integers(1, len(line)), label="position")
        fasta.bodies[i][0] = line[:p] + c + line[p:]
        if c in ASCII_WHITESPACE or (c.isascii() and c.upper() in ALLOWED_RESIDUES):
            expected[i] = replace(expected[i], sequence=residues_of("".join(fasta.bodies[i])))
        else:
            want = (record, f"invalid residue {re.escape(repr(c.upper() if c.isascii() else c))}")
    elif edit == "empty_record":
        fasta.bodies[i] = data.draw(st.lists(st.text(st.sampled_from(" \t"), max_size=2), max_size=2), label="b")
        want = (record, "empty sequence")
    elif edit == "bad_target":
        text = data.draw(st.text(word_char, min_size=1, max_size=8), label="target")
        fasta.headers[i] = re.sub(r"(?i)(target=)\S*", lambda m: m[1] + text, fasta.headers[i], count=1)
        try:
            value = float(text)
        except ValueError:
            want = (record, "is not a number")
        else:
            if value != value or value in (float("inf"), float("-inf")):
                want = (record, "is not a finite number")
            else:
                expected[i] = replace(expected[i], label=value)
    elif edit == "no_target":
        fasta.headers[i] = re.sub(r"(?i) target=\S*", "", fasta.headers[i])
        want = (record, "header has no TARGET= attribute")
    elif edit == "bad_set":
        text = data.draw(st.text(word_char, min_size=1, max_size=8), label="set")
        if " SET=" not in fasta.headers[i] or not splits_consistent(fasta):
            edit = "none"
        else:
            fasta.headers[i] = re.sub(r"SET=\S*", lambda m: "SET=" + text, fasta.headers[i], count=1)
            split = {"train": "train", "test": "test", "val": "val", "valid": "val",
                     "validation": "val"}.get(text.strip().lower())
            validation = re.search(r"VALIDATION=(\S*)", fasta.headers[i])
            to_val = validation is not None and validation[1].lower() in ("true", "1", "yes")
            if split is None:
                want = (record, "unknown set value")
            elif to_val and split == "test":
                want = (record, "validation=True on a test row")
            else:
                expected[i] = replace(expected[i], split="val" if to_val else split)
    elif edit == "duplicate_id":
        if len(fasta.headers) < 2:
            edit = "none"
        else:
            j = (i + 1) % len(fasta.headers)
            fasta.headers[j] = ">" + record + " " + fasta.headers[j].split(" ", 1)[1]
            want = (record, "duplicated id")
    elif edit == "text_before_header":
        blank = data.draw(st.sampled_from(["", newline, newline * 2]), label="blank lines")
        before = blank + "MKV" + newline
        want = (f"line {blank.count(newline) + 1}", "sequence text before the first '>' header")
    encoded, header_at, body_at = fasta.encode(newline=newline, bom=bom, before=before)
    with scratch() as folder:
        if edit == "non_utf8":
            byte = data.draw(st.integers(0x80, 0xFF), label="byte")
            at = data.draw(st.sampled_from([header_at[i], body_at[i]]), label="where")
            encoded = encoded[:at] + bytes([byte]) + encoded[at:]
            want = (f"line {line_of(encoded, at)}", "not UTF-8 text")
        if edit == "truncate":
            cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
            path = write(folder, "t.fasta", encoded[:cut])
            records, error = attempt(read_flip_fasta, path)
            if error is not None:
                assert_names(error, path, record=error.record)
                return
            # loaded: records before the last are complete, the last kept its id and a prefix of its sequence
            n = len(records)
            assert records[:-1] == expected[: n - 1]
            assert records[-1].id == expected[n - 1].id
            assert expected[n - 1].sequence.startswith(records[-1].sequence)
            return
        path = write(folder, "t.fasta", encoded)
        records, error = attempt(read_flip_fasta, path)
        if want is None:
            assert error is None, error
            assert records == expected
        else:
            assert_names(error, path, *want)


# ---- plain FASTA + labels (per-residue and CSV) ----------------------------------------------

label_char = any_char.filter(lambda c: c not in ASCII_WHITESPACE and c not in ">;")


@st.composite
def labelled(draw: Any) -> tuple[list[str], list[str], list[str], list[str | None]]:
    """ids, sequences (clean), per-residue label strings and splits."""
    n = draw(st.integers(1, 4))
    ids = draw(st.lists(st.text(word_char, min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
    seqs = draw(st.lists(st.text(st.sampled_from(ALLOWED_RESIDUES), min_size=1, max_size=40), min_size=n,
                         max_size=n))
    labels = [draw(st.text(label_char, min_size=len(s), max_size=len(s)), label="labels") for s in seqs]
    splits = draw(st.lists(st.sampled_from(["train", "test"]), min_size=n, max_size=n))
    return ids, seqs, labels, splits


def sequences_fasta(ids: list[str], seqs: list[str]) -> bytes:
    return "".join(f">{i} description with spaces\n{s}\n" for i, s in zip(ids, seqs)).encode()


def labels_fasta(ids: list[str], labels: list[str], splits: list[str], width: int) -> tuple[bytes, list[int]]:
    text, body_at = "", []
    for i, lab, split in zip(ids, labels, splits):
        text += f">{i} SET={split} VALIDATION=False\n"
        body_at.append(len(text.encode()))
        text += "".join(line + "\n" for line in wrap(lab, width))
    return text.encode(), body_at


@settings(max_examples=examples(60))
@given(case=labelled(), width=st.integers(1, 50), layout=st.sampled_from(["fasta", "csv"]),
       edit=st.sampled_from(["none", "none", "longer", "shorter", "missing", "non_utf8"]), data=st.data())
def test_per_residue_labels(case, width, layout, edit, data):
    """Per-residue label strings of any characters load as written (and index the tokens), or the
    labels file and the record are named."""
    ids, seqs, labels, splits = case
    i = data.draw(st.integers(0, len(ids) - 1), label="record")
    written = list(labels)
    if edit == "longer":
        written[i] += data.draw(label_char, label="char")
    elif edit == "shorter":
        written[i] = written[i][:-1]
    keep = [k for k in range(len(ids)) if not (edit == "missing" and k == i)]
    with scratch() as folder:
        fasta = write(folder, "s.fasta", sequences_fasta(ids, seqs))
        if layout == "fasta":
            encoded, body_at = labels_fasta([ids[k] for k in keep], [written[k] for k in keep],
                                            [splits[k] for k in keep], width)
            name = "l.fasta"
        else:
            out = io.StringIO(newline="")
            writer = csv.writer(out, quoting=csv.QUOTE_ALL)
            writer.writerow(["id", "label", "set"])
            body_at = []
            for k in keep:
                body_at.append(len(out.getvalue().encode()))
                writer.writerow([ids[k], written[k], splits[k]])
            encoded, name = out.getvalue().encode(), "l.csv"
        if edit == "non_utf8":
            at = body_at[i]
            encoded = encoded[:at] + b"\xff" + encoded[at:]
        labels_path = write(folder, name, encoded)
        records, error = attempt(read_fasta_with_labels, fasta, labels_path, task_type="token_classification")
        if edit == "none":
            assert error is None, error
            assert [(r.id, r.sequence, r.label, r.split) for r in records] == list(zip(ids, seqs, labels, splits))
            dm = ProteinDataModule(path=str(fasta), labels_path=str(labels_path), task_type="token_classification",
                                   val_fraction=0.0)
            assert dm.label_names == sorted(set("".join(labels)))
            for split, recs in dm.splits.items():
                if not recs:
                    continue
                batch = dm.collate(recs)
                for row, r in zip(batch["labels"].tolist(), recs):
                    assert "".join(dm.label_names[t] for t in row if t != IGNORE_INDEX) == r.label
        elif edit == "missing" and len(ids) == 1:  # nothing left in the labels file
            assert_names(error, labels_path, None, "no FASTA records found" if layout == "fasta" else "no data rows")
        elif edit == "missing":
            assert_names(error, labels_path, ids[i], f"no label for sequence id {re.escape(repr(ids[i]))}")
        elif edit == "non_utf8":
            assert_names(error, labels_path, f"line {line_of(encoded, body_at[i])}", "not UTF-8 text")
        elif not written[i]:  # a one-residue label made empty
            assert_names(error, labels_path, ids[i], "no label: neither" if layout == "fasta" else "missing target")
        else:
            assert_names(error, labels_path, ids[i], f"label string has {len(written[i])} characters but the "
                                                     f"sequence has {len(seqs[i])} residues")
