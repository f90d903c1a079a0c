"""Run folders and what a run reports (issue: trustworthy runs): last.ckpt is the
latest state, the monitored best is kept beside it and selected for adapter/
and the test metrics, evaluation writes into the run it evaluates (no new
version_N), predictions carry labels, and the feedback a user sees."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from peftlab.model.task_kinds import task_kind
from peftlab.model.loading import load_adapter
from peftlab.persistence.checkpoint_io import load_checkpoint_file
from peftlab.cli import main
from peftlab.experiment import fit_and_test
from peftlab.lightning_cli import build_cli

from tests.tiny_runs import STEPS_PER_EPOCH, tiny_protein_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RUN = tiny_protein_run(3)  # 8 training batches an epoch; validation and test of 4 sequences each
# select on a metric whose best epoch is not the last one in this seeded run (the worst validation loss,
# which the first epoch has), so that "best" and "last" really are different checkpoints
MONITOR = ["--checkpoint.monitor=val/loss", "--checkpoint.mode=max"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def trained(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(checkpoint)["state_dict"]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> Path:
    """A three-epoch run with a monitored validation metric, in a named run folder."""
    run = tmp_path_factory.mktemp("monitored") / "run"
    main(["fit", *RUN, *MONITOR, f"--run_dir={run}"])
    return run


def test_last_ckpt_is_the_final_state_and_the_best_is_kept_beside_it(monitored):
    validation = [r for r in rows(monitored / "metrics.csv") if r.get("val/loss")]
    assert len(validation) == 3
    best_epoch = max(range(3), key=lambda e: float(validation[e]["val/loss"]))
    assert best_epoch != 2, "the setup must select an epoch other than the last"
    best = f"best-epoch={best_epoch}-step={STEPS_PER_EPOCH * (best_epoch + 1)}.ckpt"
    assert sorted(p.name for p in (monitored / "checkpoints").iterdir()) == [best, "last.ckpt"]
    assert load_checkpoint_file(monitored / "checkpoints" / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH
    assert load_checkpoint_file(monitored / "checkpoints" / best)["global_step"] == STEPS_PER_EPOCH * (best_epoch + 1)


class LastCheckpointWatcher(L.Callback):
    """Reads last.ckpt's step when each epoch after the first starts (the previous one is saved by then)."""

    def __init__(self, run: Path) -> None:
        self.run, self.steps = run, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            self.steps.append(load_checkpoint_file(self.run / "checkpoints" / "last.ckpt")["global_step"])


def test_last_ckpt_is_the_latest_state_during_training_too(tmp_path):
    """Lightning's save_last next to a monitor rewrote last.ckpt only when the best improved; here the
    best stays epoch 0 (the worst validation loss), and last.ckpt must still follow every epoch."""
    cli = build_cli([*RUN, *MONITOR, f"--run_dir={tmp_path / 'run'}"], run=False)
    watcher = LastCheckpointWatcher(tmp_path / "run")
    cli.trainer.callbacks.append(watcher)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert watcher.steps == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert load_checkpoint_file(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 3 * STEPS_PER_EPOCH


def test_the_adapter_is_exported_from_the_selected_checkpoint_and_says_which(monitored):
    best = next((monitored / "checkpoints").glob("best-*.ckpt"))
    adapter = load_file(monitored / "adapter" / "adapter.safetensors")
    of_best, of_last = trained(best), trained(monitored / "checkpoints" / "last.ckpt")
    assert all(torch.equal(adapter[k], of_best[k]) for k in adapter)
    assert any(not torch.equal(adapter[k], of_last[k]) for k in adapter)
    record = json.loads((monitored / "adapter" / "adapter_config.json").read_text())["checkpoint"]
    validation = [float(r["val/loss"]) for r in rows(monitored / "metrics.csv") if r.get("val/loss")]
    assert record["selected"] == "best" and record["file"] == f"checkpoints/{best.name}"
    assert record["monitor"] == "val/loss" and record["mode"] == "max"
    assert record["score"] == pytest.approx(max(validation))
    assert record["global_step"] == load_checkpoint_file(best)["global_step"]
    assert "validation" in record["reason"]


def test_without_a_monitor_the_run_selects_last_and_records_why(tmp_path):
    run = tmp_path / "run"
    main(["fit", *RUN, "--trainer.max_epochs=1", f"--run_dir={run}"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    record = json.loads((run / "adapter" / "adapter_config.json").read_text())["checkpoint"]
    assert record["selected"] == "last" and record["file"] == "checkpoints/last.ckpt"
    assert "no validation metric was monitored" in record["reason"] and record["global_step"] == STEPS_PER_EPOCH


def test_fit_and_test_reports_the_test_metrics_of_the_selected_checkpoint(monitored, tmp_path, capsys):
    summary = fit_and_test([*RUN, *MONITOR, f"--run_dir={tmp_path / 'run'}"], title="t")
    best = next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    assert summary["checkpoint"]["selected"] == "best" and Path(summary["checkpoint"]["path"]) == best
    printed = capsys.readouterr().out
    assert f"tested          checkpoints/{best.name} (best val/loss = " in printed
    assert "random-init backbone" in printed  # the tiny backbone says so next to its numbers
    # the same numbers as `peftlab test` of that checkpoint, and not those of the last one
    record = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert record["checkpoint"] == str(best) and record["metrics"] == pytest.approx(summary["test"])
    main(["test", *RUN, f"--run_dir={tmp_path / 'run'}", "--ckpt_path=last"])
    of_last = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]
    assert of_last["test/loss"] != pytest.approx(summary["test"]["test/loss"], abs=1e-6)


def test_evaluation_writes_into_the_run_it_evaluates_and_opens_no_new_version(tmp_path, capsys):
    one_epoch = [*RUN, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}"]
    main(["fit", *one_epoch])
    run = tmp_path / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    main(["test", *one_epoch, "--ckpt_path=last"])
    main(["predict", *one_epoch, f"--ckpt_path={last}"])
    with pytest.raises(Exception):
        main(["test", *one_epoch, f"--ckpt_path={tmp_path / 'missing.ckpt'}"])
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    record = json.loads((run / "test_metrics.json").read_text())
    assert record["checkpoint"] == str(last) and record["data"] == {
        "module": "SyntheticMotifDataModule", "source": "built in (synthetic)", "split": "test", "split_size": 4,
        "examples": 4}
    assert "random init" in record["backbone"] and set(record["metrics"]) >= {"test/auroc", "test/loss"}
    predictions = rows(run / "predictions.csv")
    assert [list(r) for r in predictions[:1]] == [["id", "probability", "predicted"]] and len(predictions) == 4
    assert all(r["predicted"] == str(int(float(r["probability"]) >= 0.5)) for r in predictions)
    assert f"peftlab: 4 prediction row(s) of {last} written to {run / 'predictions.csv'}" in capsys.readouterr().out


def test_test_with_only_a_run_dir_uses_the_runs_selected_checkpoint(monitored, capsys):
    main(["test", *RUN, f"--run_dir={monitored}"])
    best = next((monitored / "checkpoints").glob("best-*.ckpt"))
    assert json.loads((monitored / "test_metrics.json").read_text())["checkpoint"] == str(best)
    assert f"peftlab: test with checkpoints/{best.name} of {monitored}" in capsys.readouterr().out


@pytest.mark.parametrize("task_type,names,scores,expected", [
    ("binary", ["normal", "pneumonia"], [[0.7], [0.2]], (["id", "probability", "predicted"], ["pneumonia", "normal"])),
    ("binary", None, [[0.5], [0.49]], (["id", "probability", "predicted"], [1, 0])),
    ("multiclass", ["a", "b", "c"], [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], (["id", "a", "b", "c", "predicted"], ["b", "a"])),
    ("multilabel", ["x", "y"], [[0.9, 0.6], [0.1, 0.2]], (["id", "x", "y", "predicted"], ["x;y", ""])),
    ("regression", None, [[1.5], [-2.0]], (["id", "prediction"], None)),
])
def test_prediction_rows_carry_the_predicted_label_beside_the_scores(task_type, names, scores, expected):
    header, table = task_kind(task_type).prediction_table([{"ids": ["p", "q"], "scores": torch.tensor(scores)}], names)
    assert header == expected[0]
    if expected[1] is None:
        assert [r[1] for r in table] == [1.5, -2.0]
    else:
        assert [r[-1] for r in table] == expected[1]


def test_token_predictions_have_one_row_per_content_token_with_its_label():
    scores = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]])
    out = {"ids": ["s"], "scores": scores, "mask": torch.tensor([[True, True, False]])}
    header, table = task_kind("token_classification").prediction_table([out], ["H", "E"])
    assert header == ["id", "position", "H", "E", "predicted"]
    assert [(r[1], r[-1]) for r in table] == [(0, "H"), (1, "E")]


# ---- feedback -------------------------------------------------------------------------------------

def test_the_primary_validation_metric_is_in_the_progress_bar_and_small_data_logs_every_step(tmp_path):
    cli = build_cli(["--config", str(CONFIGS / "protein/backbones/esm2_tiny.yaml"), *RUN[2:], "--trainer.max_epochs=1",
                     f"--run_dir={tmp_path / 'run'}"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "val/auroc" in cli.trainer.progress_bar_metrics and "val/loss" in cli.trainer.progress_bar_metrics
    assert cli.trainer.log_every_n_steps == 1  # 8 batches an epoch: Lightning's 50 would log no training loss
    losses = [r for r in rows(tmp_path / "run" / "metrics.csv") if r.get("train/loss")]
    assert len(losses) == STEPS_PER_EPOCH


def test_a_logging_interval_the_config_sets_is_kept(tmp_path):
    cli = build_cli([*RUN, "--trainer.max_epochs=1", "--trainer.log_every_n_steps=4",
                     f"--run_dir={tmp_path / 'run'}"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.log_every_n_steps == 4
    assert len([r for r in rows(tmp_path / "run" / "metrics.csv") if r.get("train/loss")]) == 2


def test_tensorboard_logging_works_when_asked_for(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the 'tensorboard' extra (part of 'all')")
    main(["fit", *RUN, "--trainer.max_epochs=1", "--trainer.logger=TensorBoardLogger",
          f"--trainer.logger.init_args.save_dir={tmp_path}"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert list(run.glob("events.out.tfevents.*")) and (run / "adapter" / "adapter.safetensors").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_load_adapter_returns_an_eval_mode_model_with_stable_outputs(monitored):
    from tests.conftest import make_batch

    module = load_adapter(monitored / "adapter")
    assert not module.training and not any(m.training for m in module.modules())
    batch = make_batch("esm2")
    with torch.no_grad():
        assert torch.equal(module(batch), module(batch))  # LoRA's dropout (0.05) is off
