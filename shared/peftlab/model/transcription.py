"""Speech recognition with CTC: the head over an encoder's frame features, the
loss, and decoding frame scores into text, and the ``transcription`` task kind
(:class:`Transcription`, at the end) that puts them together.

* :class:`CTCHead`: the frame features (the last layer's, or SUPERB's learned
  layer-weighted sum) through dropout, an optional 2-layer BiLSTM (SUPERB's
  ASR downstream, which Chen et al. 2022 keep for every method) and a linear
  projection to the vocabulary. Its output is ``[B, T, K + 1]``: the ``K``
  vocabulary scores of each frame and, in the last channel, 1 on the
  utterance's frames and 0 on padding, so the loss and the decoder get every
  utterance's frame count through the one tensor a head returns.
* :func:`ctc_loss`: ``torch.nn.functional.ctc_loss`` (blank 0, per-utterance
  loss over its target length, averaged; ``zero_infinity`` off). An utterance
  with fewer frames than its transcript needs is a
  :class:`~peftlab.errors.DataError` naming it, raised before the loss.
* :func:`greedy_decode`: the best symbol per frame, repeats merged, blanks
  dropped (CTC's best path); :class:`BeamSearchDecoder`: torchaudio's
  flashlight beam search, with a lexicon and a KenLM language model when
  given (needs the ``flashlight-text`` package).

The vocabulary (:mod:`peftlab.data.transcripts`) is the task's label names.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics as tm
from torch import Tensor, nn

from peftlab.backbone import Features
from peftlab.data.transcripts import BLANK, WORD_BOUNDARY, ctc_frames_needed
from peftlab.errors import DataError
from peftlab.model.heads import LayerWeightedSum
from peftlab.model.task_kind_base import TaskKind
from peftlab.persistence.atomic import atomic_write
from peftlab.tasks import IGNORE_INDEX


class CTCHead(nn.Module):
    """Frame features -> ``[B, T, K + 1]``: vocabulary scores and, last, the frame mask (1 / 0).

    Args:
        dim: the encoder's feature width.
        num_outputs: the vocabulary size ``K`` (blank included).
        lstm_units: units per direction of a 2-layer BiLSTM before the
            projection (SUPERB's downstream; ``None``: linear projection only).
        dropout: dropout on the features (and between the BiLSTM layers).
        weighted_layers: layers of the learned weighted sum (``None``: the last layer).
    """

    def __init__(self, dim: int, num_outputs: int, lstm_units: int | None = None, dropout: float = 0.1,
                 weighted_layers: int | None = None) -> None:
        super().__init__()
        if num_outputs < 2:
            raise ValueError(f"a CTC head needs the blank and at least one symbol, got {num_outputs} output(s)")
        self.layer_sum = LayerWeightedSum(weighted_layers, dim) if weighted_layers else None
        self.dropout = nn.Dropout(dropout)
        self.lstm = (nn.LSTM(dim, lstm_units, num_layers=2, batch_first=True, bidirectional=True, dropout=dropout)
                     if lstm_units else None)
        self.proj = nn.Linear(2 * lstm_units if lstm_units else dim, num_outputs)

    def forward(self, f: Features) -> Tensor:
        if self.layer_sum is not None:
            f = self.layer_sum(f)
        x = self.dropout(f.hidden)
        lengths = f.mask.sum(1)
        if self.lstm is not None:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True,
                                                       enforce_sorted=False)
            x = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                 total_length=f.hidden.shape[1])[0]
        scores = self.proj(x)
        return torch.cat([scores, f.mask.unsqueeze(-1).to(scores.dtype)], dim=-1)


def split_head_output(output: Tensor) -> tuple[Tensor, Tensor]:
    """``(scores [B, T, K], frame_lengths [B])`` of a :class:`CTCHead` output."""
    return output[..., :-1], (output[..., -1] > 0.5).sum(1)


def ctc_loss(scores: Tensor, frame_lengths: Tensor, labels: Tensor, ids: Sequence[str]) -> Tensor:
    """Mean over utterances of the CTC loss divided by the target length (``F.ctc_loss``'s ``mean``).

    ``labels``: ``[B, S]`` symbol indices padded with :data:`IGNORE_INDEX`.

    Raises:
        DataError: an utterance whose frames are fewer than its transcript needs (CTC
            would give an infinite loss), naming it.
    """
    valid = labels != IGNORE_INDEX
    target_lengths = valid.sum(1)
    for i in range(len(labels)):
        needed = ctc_frames_needed(labels[i][valid[i]].tolist())
        if int(frame_lengths[i]) < needed:
            raise DataError(f"utterance {ids[i]}", None,
                            f"{int(frame_lengths[i])} encoder frame(s) for a transcript of {int(target_lengths[i])} "
                            f"symbol(s), which CTC needs at least {needed} frames for: the audio is too short for "
                            f"its transcript (or it was cropped; check the transcript and the segment)")
    log_probs = scores.float().log_softmax(-1).transpose(0, 1)  # [T, B, K]
    losses = F.ctc_loss(log_probs, labels[valid], frame_lengths, target_lengths, blank=0, reduction="none",
                        zero_infinity=False)
    return (losses / target_lengths.clamp_min(1)).mean()


def symbols_to_text(symbols: Sequence[str]) -> str:
    """Symbols -> text: word boundaries become spaces, spaces collapse, ends are stripped."""
    return " ".join("".join(symbols).replace(WORD_BOUNDARY, " ").split())


def greedy_decode(scores: Tensor, frame_lengths: Tensor, vocabulary: Sequence[str]) -> list[str]:
    """CTC best-path decoding: per utterance, the argmax symbol of each of its frames, runs of one
    symbol merged, blanks (index 0) dropped, the rest written as text."""
    best = scores.argmax(-1).cpu()
    texts = []
    for row, n in zip(best, frame_lengths.tolist()):
        merged = torch.unique_consecutive(row[:n])
        texts.append(symbols_to_text([vocabulary[i] for i in merged.tolist() if i != 0]))
    return texts


def references(labels: Tensor, vocabulary: Sequence[str]) -> list[str]:
    """The reference texts of a batch's label rows (padding skipped)."""
    return [symbols_to_text([vocabulary[i] for i in row.tolist() if i != IGNORE_INDEX]) for row in labels.cpu()]


class BeamSearchDecoder:
    """CTC beam search through torchaudio's flashlight decoder
    (``torchaudio.models.decoder.ctc_decoder``).

    Args:
        vocabulary: the task's label names (``<blank>`` first, ``|`` the word boundary).
        lexicon: a lexicon file (``word c h a r s |`` per line) restricting the
            output to its words; ``None``: lexicon-free decoding.
        lm: a KenLM binary or ARPA file (``None``: no language model).
        beam_size, lm_weight, word_score: the decoder's options (see torchaudio).

    Raises:
        ImportError: the ``flashlight-text`` package (which the decoder needs) is missing.
    """

    def __init__(self, vocabulary: Sequence[str], lexicon: str | None = None, lm: str | None = None,
                 beam_size: int = 50, lm_weight: float = 2.0, word_score: float = 0.0) -> None:
        try:
            importlib.import_module("flashlight.lib.text")  # what torchaudio's decoder needs, imported lazily
            from torchaudio.models.decoder import ctc_decoder
        except ImportError as e:
            raise ImportError("CTC beam search needs the flashlight-text package (pip install flashlight-text; "
                              "a KenLM language model also needs the kenlm package); greedy decoding works "
                              f"without it ({e})") from None
        if list(vocabulary[:2]) != [BLANK, WORD_BOUNDARY]:
            raise ValueError(f"the vocabulary must start with {BLANK!r} and {WORD_BOUNDARY!r}, got {list(vocabulary[:2])}")
        self.vocabulary = list(vocabulary)
        self.decoder = ctc_decoder(lexicon=lexicon, tokens=self.vocabulary, lm=lm, beam_size=beam_size,
                                   lm_weight=lm_weight if lm else 0.0, word_score=word_score, blank_token=BLANK,
                                   sil_token=WORD_BOUNDARY, unk_word="<unk>")
        self.lexicon = lexicon

    def __call__(self, scores: Tensor, frame_lengths: Tensor) -> list[str]:
        """The best hypothesis of each utterance (``scores``: ``[B, T, K]``)."""
        emissions = scores.detach().float().log_softmax(-1).cpu().contiguous()
        hypotheses = self.decoder(emissions, frame_lengths.cpu().to(torch.int32))
        texts = []
        for nbest in hypotheses:
            if not nbest:
                texts.append("")
            elif self.lexicon:
                texts.append(" ".join(nbest[0].words))
            else:
                texts.append(symbols_to_text([self.vocabulary[i] for i in nbest[0].tokens.tolist() if i != 0]))
        return texts


def utterance_wer(hypothesis: str, reference: str) -> float:
    """One utterance's word error rate (torchmetrics)."""
    from torchmetrics.functional.text import word_error_rate

    return float(word_error_rate(hypothesis, reference))


def kaldi_text(rows: Sequence[tuple[Any, str]]) -> str:
    """A Kaldi ``text`` file: ``<utterance id> <transcript>`` per line."""
    return "".join(f"{id_} {text}".rstrip() + "\n" for id_, text in rows)


# ---- the task kind ----------------------------------------------------------------------------------

class Transcription(TaskKind):
    """Speech recognition with CTC (:mod:`peftlab.model.transcription`): a frame-level head
    over the character vocabulary (the label names: ``<blank>``, ``|``, the characters),
    word and character error rates. ``head_hidden_dim`` gives SUPERB's 2-layer BiLSTM
    downstream (units per direction); ``pooling`` is not used.

    Options (``task_options``, stored with the adapter): ``decoder`` ``greedy`` (default) or
    ``beam`` (torchaudio's flashlight CTC beam search, :class:`~peftlab.model.transcription.BeamSearchDecoder`)
    for validation, test and predict alike, so the checkpoint is selected on the WER the test
    reports; ``beam_size``, ``lexicon`` (a ``word c h a r s |`` file restricting the output to its
    words), ``lm`` (a KenLM binary or ARPA file), ``lm_weight`` and ``word_score`` apply to ``beam``."""

    name, primary_metric, cacheable, classifies = "transcription", "wer", False, False
    DECODERS = ("greedy", "beam")
    default_options = {"decoder": "greedy", "beam_size": 50, "lexicon": None, "lm": None, "lm_weight": 2.0,
                       "word_score": 0.0}

    def __init__(self, vocabulary: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        if self.options["decoder"] not in self.DECODERS:
            raise ValueError(f"transcription decoder must be one of {', '.join(self.DECODERS)}, "
                             f"got {self.options['decoder']!r}")
        beam_only = [k for k in ("lexicon", "lm") if self.options[k] is not None]
        if beam_only and self.options["decoder"] != "beam":
            raise ValueError(f"transcription option(s) {', '.join(beam_only)} need decoder: beam (greedy decoding "
                             "uses no lexicon or language model)")
        self.vocabulary = vocabulary
        self._beam: BeamSearchDecoder | None = None  # built on first use (it loads the lexicon and LM)

    def with_options(self, options):
        return Transcription(self.vocabulary, **options) if options else self

    def with_labels(self, label_names):
        if not label_names or label_names[0] != BLANK:
            raise ValueError(f"task_type transcription needs label_names: the character vocabulary, {BLANK!r} "
                             f"first (a transcription DataModule gives it), got {label_names!r}")
        return Transcription(list(label_names), **self.options)

    def decode(self, scores: Tensor, frames: Tensor) -> list[str]:
        """The hypotheses of a batch of head scores, with the configured decoder."""
        if self.options["decoder"] == "greedy":
            return greedy_decode(scores, frames, self.vocabulary)
        if self._beam is None:
            o = self.options
            self._beam = BeamSearchDecoder(self.vocabulary, lexicon=o["lexicon"], lm=o["lm"],
                                           beam_size=o["beam_size"], lm_weight=o["lm_weight"],
                                           word_score=o["word_score"])
        return self._beam(scores, frames)

    def build_head(self, backbone, num_outputs, *, pooling="mean", hidden_dim=None, dropout=0.1,
                   weighted_layers=None, pair_combination=None):
        if pair_combination is not None:
            raise ValueError("transcription takes one utterance per example, not pairs")
        return CTCHead(backbone.embed_dim, num_outputs, hidden_dim, dropout, weighted_layers)

    def build_metrics(self, num_outputs: int) -> tm.MetricCollection:
        return tm.MetricCollection({"wer": tm.text.WordErrorRate(), "cer": tm.text.CharErrorRate()},
                                   compute_groups=False)

    def loss_and_predictions(self, logits, batch):
        scores, frames = split_head_output(logits)
        loss = ctc_loss(scores, frames, batch["labels"], batch["ids"])
        return loss, self.decode(scores, frames), references(batch["labels"], self.vocabulary)

    def predict_output(self, logits, batch):
        scores, frames = split_head_output(logits)
        refs = references(batch["labels"], self.vocabulary) if "labels" in batch else None
        return {"ids": batch["ids"], "hypotheses": self.decode(scores, frames),
                "references": refs}

    def prediction_table(self, outputs, label_names):
        """``id``, ``hypothesis`` and, when the data has transcripts, ``reference`` and the utterance's ``wer``."""
        with_refs = all(out.get("references") is not None for out in outputs)
        header = ["id", "hypothesis"] + (["reference", "wer"] if with_refs else [])
        rows: list[list[Any]] = []
        for out in outputs:
            for i, (id_, hyp) in enumerate(zip(out["ids"], out["hypotheses"])):
                ref = out["references"][i] if with_refs else None
                rows.append([id_, hyp] + ([ref, utterance_wer(hyp, ref)] if with_refs else []))
        return header, rows

    def write_prediction_files(self, outputs, csv_path):
        """The hypotheses as a Kaldi ``text`` file (``<id> <hypothesis>`` per line), the CSV's path
        with the suffix ``.text`` (``predictions.text``)."""
        text = kaldi_text([pair for out in outputs for pair in zip(out["ids"], out["hypotheses"])])
        atomic_write(Path(csv_path).with_suffix(".text"), lambda tmp: Path(tmp).write_text(text))
