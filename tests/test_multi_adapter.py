"""Several adapters on one backbone (peftlab.multi_adapter and ``peftlab
predict-adapters``): LoRA adapters trained differently on the same tiny ESM-2
share one backbone through peft's named adapters and, switching between them,
predict exactly what each predicts loaded alone; IA3 and non-peft methods work
too (on copies); the CLI writes one CSV per adapter with those values; another
backbone is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from peftlab import BackboneMismatchError, PeftModule, build_method
from peftlab.model.loading import load_adapter
from peftlab.persistence.adapter import save_adapter
from peftlab.cli import main
from peftlab.multi_adapter import AdapterView, MultiAdapterModel, default_adapter_name
from peftlab_protein import ESM2Backbone
from peftlab_protein.synthetic import SyntheticMotifDataModule

from tests.conftest import TINY_ESM

ROOT = Path(__file__).resolve().parents[1]
DATA_YAML = ROOT / "configs" / "protein" / "data" / "synthetic_motif.yaml"
DATA = dict(num_sequences=40, batch_size=8)
DATA_ARGS = ["--data.num_sequences=40", "--data.batch_size=8"]


def train_adapter(directory: Path, method, task_type: str, lr: float, data_seed: int, seed: int = 0,
                  backbone_seed: int = 0, steps: int = 4) -> Path:
    """A few optimiser steps on the synthetic motif task, then save_adapter."""
    torch.manual_seed(seed)
    module = PeftModule(ESM2Backbone(**TINY_ESM, seed=backbone_seed), method, task_type=task_type, num_outputs=1,
                        head_dropout=0.0)
    data = SyntheticMotifDataModule(**DATA, seed=data_seed)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    module.train()
    for step, batch in enumerate(data.train_dataloader()):
        if step == steps:
            break
        loss = module._step({**batch, "labels": batch["labels"].float()})[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_adapter(module.eval(), directory)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        # two LoRA adapters, trained differently: ranks, targets, layers, heads, learning rates, data
        "alpha": train_adapter(root / "alpha", build_method("lora", r=2, targets="qv"), "binary", 5e-2, 0),
        "beta": train_adapter(root / "beta", build_method("lora", r=4, alpha=8, targets="attention", layers=[-1]),
                              "regression", 1e-1, 1, seed=1),
        "gamma": train_adapter(root / "gamma", build_method("ia3"), "binary", 5e-2, 2),
        "delta": train_adapter(root / "delta", build_method("ssf"), "binary", 5e-2, 3),
        "other": train_adapter(root / "other", build_method("lora", r=2), "binary", 5e-2, 0, backbone_seed=1),
    }


def predict_batches() -> list[dict]:
    data = SyntheticMotifDataModule(**DATA, seed=0)
    return list(data.predict_dataloader())


def alone(directory: Path) -> PeftModule:
    return load_adapter(directory).eval()


def test_lora_adapters_share_one_backbone_and_switch_exactly(adapters):
    model = MultiAdapterModel([adapters["alpha"], adapters["beta"]])
    assert model.names == ["alpha", "beta"] and model.shared == {"alpha": True, "beta": True}
    assert all(isinstance(m, AdapterView) and m.backbone is model.backbone for m in model.adapters.values())
    # one backbone: its base weights once, plus both adapters' LoRA tensors
    base = sum(p.numel() for p in ESM2Backbone(**TINY_ESM).parameters())
    lora = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in model.backbone.parameters()) == base + lora
    assert any(".alpha." in n for n, _ in model.backbone.named_parameters())
    assert any(".beta." in n for n, _ in model.backbone.named_parameters())

    refs = {name: alone(adapters[name]) for name in ("alpha", "beta")}
    batches = predict_batches()
    for name in ("alpha", "beta", "alpha", "beta"):  # switching back and forth
        for batch in batches:
            got = model.predict(batch, adapter=name)
            with torch.no_grad():
                want = refs[name].predict_step(batch, 0)
            assert got["ids"] == want["ids"]
            torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-6)
    # the two adapters really differ (and the active-adapter default follows set_adapter)
    batch = batches[0]
    assert not torch.allclose(model(batch, adapter="alpha"), model(batch, adapter="beta"))
    model.set_adapter("beta")
    torch.testing.assert_close(model(batch), model(batch, adapter="beta"), rtol=0, atol=0)
    with pytest.raises(KeyError, match="no adapter 'gamma'"):
        model.predict(batch, adapter="gamma")


def test_ia3_and_non_peft_methods_get_backbones_of_their_own(adapters):
    model = MultiAdapterModel({"a": adapters["alpha"], "g": adapters["gamma"], "d": adapters["delta"],
                               "b": adapters["beta"]})
    assert model.shared == {"a": True, "g": True, "d": False, "b": True}
    backbones = {name: model.module(name).backbone for name in model.names}
    assert backbones["a"] is backbones["b"] is model.backbone
    assert backbones["g"] is not model.backbone and backbones["d"] not in (model.backbone, backbones["g"])
    batch = predict_batches()[0]
    for name, key in (("d", "delta"), ("a", "alpha"), ("g", "gamma"), ("b", "beta"), ("a", "alpha")):
        with torch.no_grad():
            want = alone(adapters[key]).predict_step(batch, 0)["scores"]
        torch.testing.assert_close(model.predict(batch, adapter=name)["scores"], want, rtol=0, atol=1e-6)


def read_csv(path: Path) -> dict[str, list[float]]:
    """id -> the score columns (the ``predicted`` label column left out)."""
    with open(path, newline="") as f:
        return {row["id"]: [float(v) for k, v in row.items() if k not in ("id", "predicted")]
                for row in csv.DictReader(f)}


def test_cli_writes_one_csv_per_adapter_with_each_adapters_predictions(adapters, tmp_path, capsys):
    out = tmp_path / "predictions"
    status = main(["predict-adapters", "--adapters", f"first={adapters['alpha']}", f"second={adapters['beta']}",
                   "--data-config", str(DATA_YAML), *DATA_ARGS, "--output-dir", str(out), "--accelerator", "cpu"])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["first.csv", "second.csv"]
    printed = capsys.readouterr().out
    assert "'first' (lora, shared backbone (peft))" in printed and str(out / "second.csv") in printed
    for name, key in (("first", "alpha"), ("second", "beta")):
        rows = read_csv(out / f"{name}.csv")
        ref = alone(adapters[key])
        expected = {}
        for batch in predict_batches():
            with torch.no_grad():
                pred = ref.predict_step(batch, 0)
            expected.update(zip(pred["ids"], pred["scores"].reshape(len(pred["ids"]), -1).tolist()))
        assert rows.keys() == expected.keys() and len(rows) == 4  # the test split
        for id_, values in expected.items():
            assert rows[id_] == pytest.approx(values, abs=1e-6)
    header = open(out / "second.csv").readline().strip()
    assert header == "id,prediction"  # the regression adapter's own head
    with open(out / "first.csv", newline="") as f:  # the binary one: probability and the predicted label
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "probability", "predicted"]
    assert all(r["predicted"] == str(int(float(r["probability"]) >= 0.5)) for r in rows)


def test_backbone_config_and_derived_names(adapters, tmp_path):
    # names from the folders; AdapterExport's "adapter" folder is named after its parent
    assert default_adapter_name(tmp_path / "version_3" / "adapter") == "version_3"
    assert default_adapter_name(tmp_path / "gb1.v2") == "gb1_v2"
    backbone_yaml = tmp_path / "backbone.yaml"
    backbone_yaml.write_text("model:\n  backbone:\n    class_path: peftlab_protein.ESM2Backbone\n    init_args:\n"
                             + "".join(f"      {k}: {v}\n" for k, v in TINY_ESM.items())
                             + "      gradient_checkpointing: true\n")
    out = tmp_path / "out"
    assert main(["predict-adapters", "--adapters", str(adapters["alpha"]), str(adapters["delta"]),
                 "--backbone-config", str(backbone_yaml), "--data-config", str(DATA_YAML),
                 "--data.num_sequences", "40", "--data.batch_size=8", "--split", "val",
                 "--output-dir", str(out), "--accelerator", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha.csv", "delta.csv"]
    val_ids = {r.id for r in SyntheticMotifDataModule(**DATA, seed=0).splits["val"]}
    assert set(read_csv(out / "alpha.csv")) == val_ids == set(read_csv(out / "delta.csv"))


def test_adapters_from_another_backbone_are_refused(adapters, tmp_path, capsys):
    with pytest.raises(BackboneMismatchError, match="every adapter must have been trained on the same backbone.*"
                                                    "adapter 'other'.*fingerprint"):
        MultiAdapterModel([adapters["alpha"], adapters["other"]])
    with pytest.raises(BackboneMismatchError, match="adapter 'alpha'.*compared with the backbone given"):
        MultiAdapterModel([adapters["alpha"]], backbone=ESM2Backbone(**TINY_ESM, seed=1))
    status = main(["predict-adapters", "--adapters", str(adapters["other"]), str(adapters["beta"]),
                   "--data-config", str(DATA_YAML), *DATA_ARGS, "--output-dir", str(tmp_path / "x"),
                   "--accelerator", "cpu"])
    assert status == 2 and not (tmp_path / "x").exists()
    assert "trained on the same backbone" in capsys.readouterr().err
    # force: the user vouches for the weights
    forced = MultiAdapterModel([adapters["alpha"], adapters["other"]], force=True)
    assert forced.shared == {"alpha": True, "other": True}


def test_clear_errors_for_names(adapters, tmp_path):
    with pytest.raises(ValueError, match="would both be called 'alpha'"):
        MultiAdapterModel([adapters["alpha"], adapters["alpha"]])
    with pytest.raises(ValueError, match="adapter name 'layers' is also a module"):
        MultiAdapterModel({"layers": adapters["alpha"]})
    with pytest.raises(ValueError, match="adapter name 'a.b'"):
        MultiAdapterModel({"a.b": adapters["alpha"]})


def test_an_adapter_config_naming_a_function_is_refused_as_load_adapter_refuses_it(adapters, tmp_path):
    import json
    import shutil

    from peftlab.errors import AdapterFileError

    directory = tmp_path / "tampered"
    shutil.copytree(adapters["alpha"], directory)
    config = directory / "adapter_config.json"
    meta = json.loads(config.read_text())
    marker = tmp_path / "pwned"
    meta["backbone"] = {"class_path": "os.system", "init_args": {"command": f"touch {marker}"}}
    config.write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=rf"{config}: names 'os.system', which is not a class of peftlab's packages"):
        MultiAdapterModel([directory])  # the backbone comes from the first adapter's recorded spec
    assert not marker.exists()
