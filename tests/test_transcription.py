"""The transcription task's core parts: transcript normalisation and the character
vocabulary, the CTC head, loss and decoders, and the task kind's metrics and prediction table."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from peftlab.backbone import Features
from peftlab.data import DataError
from peftlab.data.transcripts import (BLANK, WORD_BOUNDARY, TextNormalizer, character_vocabulary, ctc_frames_needed,
                                      encode_transcript)
from peftlab.model.task_kinds import task_kind
from peftlab.model.transcription import (BeamSearchDecoder, CTCHead, ctc_loss, greedy_decode, references,
                                         split_head_output)
from peftlab.tasks import IGNORE_INDEX, lower_is_better

VOCAB = [BLANK, WORD_BOUNDARY, "A", "B", "C", "D", "T"]


def test_normalisation_case_punctuation_apostrophes_and_char_map():
    norm = TextNormalizer(case="upper", strip_punctuation=True, char_map={"é": "e"})
    assert norm("  Don't stop, café-au-lait!  'quoted' ") == "DON'T STOP CAFE AU LAIT QUOTED"
    assert TextNormalizer(case="lower")("HELLO, World.") == "hello world"
    assert TextNormalizer(case=None, strip_punctuation=False)("Hi,  there") == "Hi, there"
    with pytest.raises(ValueError, match="case must be one of"):
        TextNormalizer(case="title")


def test_vocabulary_from_transcripts_and_given():
    vocab = character_vocabulary([("u1", "CAB"), ("u2", "BAD CAT")], None, "src")
    assert vocab.names == [BLANK, WORD_BOUNDARY, "A", "B", "C", "D", "T"] and vocab.num_outputs == 7
    given = character_vocabulary([("u1", "AB")], ["B", "A", "'"], "src")
    assert given.names == [BLANK, WORD_BOUNDARY, "B", "A", "'"]
    with pytest.raises(DataError, match="src, record u2: empty transcript"):
        character_vocabulary([("u1", "A"), ("u2", "")], None, "src")
    with pytest.raises(DataError, match="duplicates: \\['A'\\]"):
        character_vocabulary([], ["A", "A"], "src")


def test_encoding_names_the_utterance_and_character_outside_the_vocabulary():
    vocab = character_vocabulary([("u1", "CAB")], None, "src")
    assert encode_transcript("CAB BA", vocab, "src", "u9") == [4, 2, 3, 1, 3, 2]
    with pytest.raises(DataError, match="src, record u9: character 'Z' of transcript 'CAZ' is not in the vocabulary"):
        encode_transcript("CAZ", vocab, "src", "u9")
    assert encode_transcript("CAZ BZ", vocab, "src", "u9", unknown_chars="drop") == [4, 2, 1, 3]
    with pytest.raises(DataError, match="no character of the vocabulary left"):
        encode_transcript("ZZ", vocab, "src", "u9", unknown_chars="drop")


def test_ctc_frames_needed_counts_a_blank_between_repeats():
    assert ctc_frames_needed([2, 3, 4]) == 3
    assert ctc_frames_needed([2, 2, 2]) == 5  # A - A - A


def one_hot_scores(frames: list[int], k: int = len(VOCAB)) -> torch.Tensor:
    return F.one_hot(torch.tensor(frames), k).float()[None] * 10.0


def test_greedy_decoding_merges_repeats_drops_blanks_and_stops_at_the_frame_count():
    # C C - A A - A | B A D | -  then padding frames that must be ignored
    scores = one_hot_scores([4, 4, 0, 2, 2, 0, 2, 1, 3, 2, 5, 1, 0, 6, 6])
    assert greedy_decode(scores, torch.tensor([13]), VOCAB) == ["CAA BAD"]
    assert greedy_decode(scores, torch.tensor([15]), VOCAB) == ["CAA BAD T"]


def test_ctc_loss_is_torchs_mean_and_refuses_utterances_too_short_for_their_transcript():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 6, len(VOCAB), generator=g)
    labels = torch.tensor([[4, 2, 6], [3, 3, IGNORE_INDEX]])
    frames = torch.tensor([6, 4])
    expected = F.ctc_loss(scores.log_softmax(-1).transpose(0, 1), torch.tensor([4, 2, 6, 3, 3]), frames,
                          torch.tensor([3, 2]), blank=0, reduction="mean")
    torch.testing.assert_close(ctc_loss(scores, frames, labels, ["a", "b"]), expected)
    # "BB" needs 3 frames (B, blank, B): 2 are too few
    with pytest.raises(DataError, match="utterance b: 2 encoder frame\\(s\\) .* at least 3 frames"):
        ctc_loss(scores, torch.tensor([6, 2]), labels, ["a", "b"])


@pytest.mark.parametrize("lstm_units", [None, 8])
def test_ctc_head_scores_every_frame_and_carries_the_frame_mask(lstm_units):
    torch.manual_seed(0)
    head = CTCHead(16, len(VOCAB), lstm_units=lstm_units, dropout=0.0).eval()
    hidden = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    out = head(Features(hidden=hidden, mask=mask))
    scores, frames = split_head_output(out)
    assert out.shape == (2, 9, len(VOCAB) + 1) and frames.tolist() == [9, 5]
    # the padded frames of utterance 1 do not change its valid frames' scores (the BiLSTM is packed)
    alone = split_head_output(head(Features(hidden=hidden[1:, :5], mask=mask[1:, :5])))[0]
    torch.testing.assert_close(scores[1:, :5], alone)


def test_transcription_kind_needs_the_vocabulary_and_computes_wer_and_cer():
    with pytest.raises(ValueError, match="task_type transcription needs label_names"):
        task_kind("transcription").with_labels(None)
    kind = task_kind("transcription").with_labels(VOCAB)
    assert kind.primary_metric == "wer" and lower_is_better("val/wer") and lower_is_better("test/cer")
    metrics = kind.build_metrics(len(VOCAB))
    metrics.update(["CAT BAD", "DAB"], ["CAT BAT", "DAB"])
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values == pytest.approx({"wer": 1 / 3, "cer": 1 / 10})
    # the module's batch path: scores from the head, labels padded with IGNORE_INDEX
    scores = torch.cat([one_hot_scores([4, 2, 6, 0]), torch.ones(1, 4, 1)], -1)
    batch = {"labels": torch.tensor([[4, 2, 6]]), "ids": ["u1"]}
    loss, hyps, refs = kind.loss_and_predictions(scores, batch)
    assert hyps == refs == ["CAT"] and loss.item() < 1e-3
    assert references(torch.tensor([[3, 2, 5, IGNORE_INDEX]]), VOCAB) == ["BAD"]


def test_prediction_table_per_utterance_wer_and_kaldi_text(tmp_path):
    kind = task_kind("transcription").with_labels(VOCAB)
    out = [{"ids": ["u1", "u2"], "hypotheses": ["CAT BAD", ""], "references": ["CAT BAT", "DAB"]}]
    header, rows = kind.prediction_table(out, VOCAB)
    assert header == ["id", "hypothesis", "reference", "wer"]
    assert rows == [["u1", "CAT BAD", "CAT BAT", 0.5], ["u2", "", "DAB", 1.0]]
    kind.write_prediction_files(out, tmp_path / "predictions.csv")
    assert (tmp_path / "predictions.text").read_text() == "u1 CAT BAD\nu2\n"
    header, rows = kind.prediction_table([{"ids": ["u1"], "hypotheses": ["CAT"], "references": None}], VOCAB)
    assert header == ["id", "hypothesis"] and rows == [["u1", "CAT"]]


def test_beam_search_without_lexicon_agrees_with_greedy_and_a_lexicon_corrects_a_word(tmp_path):
    pytest.importorskip("flashlight.lib.text", reason="flashlight-text is in the speech extra (pyproject.toml)")
    probs = torch.full((1, 7, len(VOCAB)), 0.01)
    for t, (best, second) in enumerate([(4, 0), (0, 4), (2, 0), (0, 2), (5, 6), (0, 5), (0, 6)]):
        probs[0, t, best], probs[0, t, second] = 0.6, 0.3  # frame 4: D 0.6, T 0.3
    scores = probs.log()
    frames = torch.tensor([7])
    assert greedy_decode(scores, frames, VOCAB) == ["CAD"]
    assert BeamSearchDecoder(VOCAB, beam_size=20)(scores, frames) == ["CAD"]
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("CAT C A T |\nBAT B A T |\n")
    assert BeamSearchDecoder(VOCAB, lexicon=str(lexicon), beam_size=20)(scores, frames) == ["CAT"]
    # the same decoders through the task kind's options (task_options of a run, stored with the adapter)
    batch = {"labels": torch.tensor([[4, 2, 6]]), "ids": ["u1"]}
    scores_with_frames = torch.cat([scores, torch.ones(1, 7, 1)], -1)
    greedy = task_kind("transcription").with_options({}).with_labels(VOCAB)
    beam = task_kind("transcription").with_options({"decoder": "beam", "lexicon": str(lexicon),
                                                     "beam_size": 20}).with_labels(VOCAB)
    assert greedy.loss_and_predictions(scores_with_frames, batch)[1] == ["CAD"]
    assert beam.loss_and_predictions(scores_with_frames, batch)[1] == ["CAT"]
    assert beam.predict_output(scores_with_frames, {"ids": ["u1"]})["hypotheses"] == ["CAT"]


def test_decoder_options_are_checked():
    with pytest.raises(ValueError, match="decoder must be one of greedy, beam, got 'viterbi'"):
        task_kind("transcription").with_options({"decoder": "viterbi"})
    with pytest.raises(ValueError, match="lexicon need decoder: beam"):
        task_kind("transcription").with_options({"lexicon": "words.txt"})
    with pytest.raises(ValueError, match="has no option.*beam_width; its options: decoder, beam_size"):
        task_kind("transcription").with_options({"beam_width": 5})


def test_beam_search_without_flashlight_says_which_package_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashlight.lib.text", None)  # import of it raises ImportError
    with pytest.raises(ImportError, match="CTC beam search needs the flashlight-text package"):
        BeamSearchDecoder(VOCAB)
