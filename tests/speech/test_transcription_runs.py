"""Speech recognition through the command line on a tiny Kaldi corpus written here: fit selects
the checkpoint with the lowest validation WER, test reports WER and CER, predict writes the
hypotheses (CSV and Kaldi text), and the exported adapter decodes with the vocabulary it was
trained with."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from peftlab.cli import main
from peftlab.model.loading import load_adapter
from peftlab_speech.data import KaldiDataModule

from tests.speech.test_transcription_data import kaldi_dir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
WORDS = ["cab", "bat", "a cat", "tab", "act", "bad cab", "at a bat", "cat"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asr")
    kaldi_dir(root / "train", {f"tr{i}": (0.3 + 0.05 * i, w) for i, w in enumerate(WORDS)})
    kaldi_dir(root / "test", {"te0": (0.4, "tab cab"), "te1": (0.3, "bat"), "te2": (0.35, "cat")})
    return root


def run_args(corpus: Path, run: Path) -> list[str]:
    return ["--config", str(CONFIGS / "speech/backbones/hubert_tiny.yaml"), "--config", str(CONFIGS / "methods/lora.yaml"),
            "--config", str(CONFIGS / "speech/data/speechocean762.yaml"), f"--data.init_args.path={corpus}",
            "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25", "--trainer.max_epochs=3",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--model.lr=1e-2", "--seed_everything=0", f"--run_dir={run}"]


def test_fit_test_predict_and_the_adapter_decode_alike(corpus, tmp_path):
    run = tmp_path / "run"
    main(["fit", *run_args(corpus, run)])
    data = KaldiDataModule(path=str(corpus), val_fraction=0.25)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["head"]["task_type"] == "transcription" and config["label_names"] == data.label_names
    assert config["checkpoint"]["monitor"] == "val/wer" and config["checkpoint"]["mode"] == "min"
    val_wer = [float(r["val/wer"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/wer")]
    assert len(val_wer) == 3 and config["checkpoint"]["score"] == pytest.approx(min(val_wer))

    main(["test", *run_args(corpus, run)])
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert {"test/wer", "test/cer", "test/loss"} <= set(metrics) and metrics["test/cer"] >= 0

    main(["predict", *run_args(corpus, run)])
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "hypothesis", "reference", "wer"]
    assert sorted((r["id"], r["reference"]) for r in rows) == [("te0", "TAB CAB"), ("te1", "BAT"), ("te2", "CAT")]
    kaldi = (run / "predictions.text").read_text().splitlines()
    assert sorted(kaldi) == sorted(f"{r['id']} {r['hypothesis']}".rstrip() for r in rows)

    # audio without transcripts (predict_path: here the test recordings as a bare folder): hypotheses only,
    # the same ones as for the same audio with its transcripts
    main(["predict", *run_args(corpus, run), f"--data.init_args.predict_path={corpus / 'test' / 'wav'}"])
    with open(run / "predictions.csv", newline="") as f:
        bare = list(csv.DictReader(f))
    assert list(bare[0]) == ["id", "hypothesis"]
    assert sorted((r["id"], r["hypothesis"]) for r in bare) == sorted((r["id"], r["hypothesis"]) for r in rows)

    module = load_adapter(run / "adapter")
    assert module.task.vocabulary == data.label_names
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        out = module.predict_step(batch, 0)
    by_id = {r["id"]: r["hypothesis"] for r in rows}
    assert out["hypotheses"] == [by_id[i] for i in batch["ids"]]


def test_a_sweep_cell_reports_wer_as_lower_is_better(corpus, tmp_path):
    output = tmp_path / "out"
    spec = {"root": str(CONFIGS.parent), "output": str(output), "seeds": [0],
            "overrides": {"trainer.max_epochs": 1, "trainer.accelerator": "cpu", "trainer.enable_model_summary": False,
                          "data.init_args.batch_size": 4, "data.init_args.val_fraction": 0.25},
            "tasks": [{"name": "tiny-asr", "configs": ["configs/speech/backbones/hubert_tiny.yaml",
                                                       "configs/speech/data/speechocean762.yaml"],
                       "overrides": {"data.path": str(corpus)}}],
            "methods": [{"name": "lora", "configs": ["configs/methods/lora.yaml"]}]}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(spec))
    assert main(["sweep", "--config", str(tmp_path / "grid.yaml"), "--cold"]) in (0, None)
    with open(output / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok" and row["primary_metric"] == "test/wer"
    assert float(row["primary_value"]) == float(row["test/wer"]) and "test/cer" in row
    assert "test/wer (lower is better)" in (output / "results.md").read_text()
