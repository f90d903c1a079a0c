"""Core pieces without a domain: pooling and heads, losses and metrics, split
and batching logic, layer selection, adapter files."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab import PeftModule, build_method, select_layers
from peftlab.backbone import Features
from peftlab.errors import AdapterFileError
from peftlab.model.loading import load_adapter
from peftlab.persistence.adapter import save_adapter
from peftlab.data import LengthGroupedBatchSampler, seeded_split
from peftlab.model.heads import Pooling, TaskHead
from peftlab.model.task_kinds import task_kind
from peftlab.tasks import TASK_TYPES

from tests.conftest import make_backbone


def features() -> Features:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[False, True, True, False], [False, True, False, False]])
    return Features(hidden=hidden, mask=mask, cls=hidden[:, 0])


def test_mean_pooling_ignores_masked_tokens():
    f = features()
    pooled = Pooling("mean", 3)(f)
    torch.testing.assert_close(pooled[0], f.hidden[0, 1:3].mean(0))
    torch.testing.assert_close(pooled[1], f.hidden[1, 1])


def test_attention_pooling_puts_no_weight_on_masked_tokens():
    f = features()
    pool = Pooling("attention", 3)
    pooled = pool(f)
    torch.testing.assert_close(pooled[1], f.hidden[1, 1])  # one content token gets all the weight
    f.hidden[0, 3] += 1000.0  # a masked token: must not move the result
    torch.testing.assert_close(pool(f), pooled)


def test_cls_pooling_needs_a_summary_token():
    f = features()
    torch.testing.assert_close(Pooling("cls", 3)(f), f.hidden[:, 0])
    f.cls = None
    with pytest.raises(ValueError, match="needs a backbone with a class/BOS token"):
        Pooling("cls", 3)(f)


@pytest.mark.parametrize("task,k,shape", [("binary", 1, (2, 1)), ("multiclass", 5, (2, 5)),
                                          ("multilabel", 14, (2, 14)), ("regression", 1, (2, 1)),
                                          ("token_classification", 3, (2, 4, 3))])
def test_head_output_shapes(task, k, shape):
    assert TaskHead(3, task, k)(features()).shape == shape


def test_losses_and_metric_inputs_per_task():
    logits = torch.tensor([[2.0], [-1.0]])
    loss, preds, target = task_kind("binary").loss_and_predictions(logits, {"labels": torch.tensor([1.0, 0.0])})
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), torch.tensor([1.0, 0.0])))
    torch.testing.assert_close(preds, logits.squeeze(1).sigmoid())
    assert target.dtype == torch.long
    # token task: positions labelled -100 do not count
    logits = torch.zeros(1, 3, 2)
    logits[0, :, 1] = 5.0
    loss, preds, target = task_kind("token_classification").loss_and_predictions(
        logits, {"labels": torch.tensor([[-100, 1, 0]])})
    metric = task_kind("token_classification").build_metrics(2)
    metric.update(preds, target)
    assert metric.compute()["accuracy"].item() == pytest.approx(0.5)


def test_regression_metrics_are_spearman_pearson_mse_mae():
    m = task_kind("regression").build_metrics(1)
    m.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
    out = m.compute()
    assert out["spearman"].item() == pytest.approx(0.8)
    assert out["mse"].item() == pytest.approx(0.5) and out["mae"].item() == pytest.approx(0.5)


def test_seeded_split_is_reproducible_and_disjoint():
    a, b = seeded_split(100, 0.1, 0.2, seed=3), seeded_split(100, 0.1, 0.2, seed=3)
    assert a == b and seeded_split(100, 0.1, 0.2, seed=4) != a
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (70, 10, 20)
    assert sorted(a["train"] + a["val"] + a["test"]) == list(range(100))
    with pytest.raises(ValueError, match="sum below 1"):
        seeded_split(10, 0.5, 0.5, seed=0)


def test_length_grouped_batches_cover_everything_and_cut_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, seed=0, window_batches=5)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(200)) and len(batches) == len(sampler)
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    naive = [list(range(i, i + 8)) for i in range(0, 200, 8)]
    naive_padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in naive)
    assert padding < naive_padding / 3
    assert list(sampler) != batches  # a new order every epoch


def test_select_layers_spellings():
    assert select_layers(12, None) == list(range(12))
    assert select_layers(12, "last:8") == list(range(4, 12))
    assert select_layers(12, "first:2") == [0, 1]
    assert select_layers(12, [-1, 0]) == [0, 11]
    with pytest.raises(ValueError, match="'last:N' or 'first:N'"):
        select_layers(12, "top8")


def _saved(tmp_path):
    module = PeftModule(make_backbone("toy"), build_method("lora", r=2), task_type="binary", num_outputs=1)
    return module, save_adapter(module, tmp_path / "a")


def test_adapter_directory_holds_only_trained_tensors(tmp_path):
    module, directory = _saved(tmp_path)
    from safetensors.torch import load_file
    tensors = load_file(directory / "adapter.safetensors")
    assert set(tensors) == {n for n, p in module.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("head.") for n in tensors)
    meta = json.loads((directory / "adapter_config.json").read_text())
    assert meta["method"]["name"] == "lora" and meta["method"]["init_args"]["r"] == 2
    assert meta["backbone_identity"]["fingerprint"] == make_backbone("toy").identity()["fingerprint"]


def test_truncated_or_missing_adapter_files_give_clear_errors(tmp_path):
    _, directory = _saved(tmp_path)
    weights = directory / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match="adapter.safetensors: not a readable safetensors file"):
        load_adapter(directory)
    weights.unlink()
    with pytest.raises(AdapterFileError, match="adapter.safetensors: file not found"):
        load_adapter(directory)
    (directory / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="adapter_config.json: not valid JSON"):
        load_adapter(directory)
    with pytest.raises(AdapterFileError, match="no adapter config here"):
        load_adapter(tmp_path / "nowhere")


def test_adapter_with_other_method_tensors_is_refused(tmp_path):
    _, directory = _saved(tmp_path)
    meta = json.loads((directory / "adapter_config.json").read_text())
    meta["method"]["init_args"]["r"] = 4  # config no longer matches the tensors
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterFileError, match=r"tensor shapes do not match method lora.*\(2, 32\) != \(4, 32\)"):
        load_adapter(directory)


def test_optimizer_groups_and_warmup_cosine_schedule():
    module = PeftModule(make_backbone("toy"), build_method("lora", r=2), task_type="binary", num_outputs=1,
                        lr=1e-3, head_lr=5e-3, warmup_fraction=0.1)
    config = module.configure_optimizers()  # without a trainer: 1000 planned steps
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["head"]["initial_lr"] == 5e-3 and groups["backbone"]["initial_lr"] == 1e-3
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in module.head.parameters()}
    assert len(groups["backbone"]["params"]) == 2 * 2 * 2  # lora_A and lora_B on qkv and proj of 2 blocks
    lrs = []
    for _ in range(1000):
        lrs.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3 / 101)  # linear warm-up over 100 steps
    assert max(lrs) == pytest.approx(1e-3, rel=1e-3) and lrs.index(max(lrs)) in (99, 100)
    assert lrs[550] == pytest.approx(0.5e-3, rel=1e-2)  # cosine half-way point
    assert lrs[-1] < 1e-7


def test_binary_balanced_accuracy_and_per_class_auroc():
    m = task_kind("binary").build_metrics(1)
    m.update(torch.tensor([0.9, 0.8, 0.7, 0.2, 0.6]), torch.tensor([1, 1, 1, 0, 0]))
    out = m.compute()
    # sensitivity 3/3, specificity 1/2
    assert out["balanced_accuracy"].item() == pytest.approx(0.75)
    mc = task_kind("multiclass").build_metrics(3)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    mc.update(probs, torch.tensor([0, 1, 2, 1]))
    per_class = mc.compute()["auroc_per_class"]
    assert per_class.shape == (3,) and per_class[2].item() == pytest.approx(1.0)


def test_data_error_names_file_and_record_and_survives_pickling():
    import pickle

    from peftlab.data import DataError
    err = DataError("data/x.csv", "row7", "target 'abc' is not a number")
    assert str(err) == "data/x.csv, record row7: target 'abc' is not a number"
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DataError) and str(back) == str(err) and back.record == "row7"


def test_assign_splits_carves_missing_splits_and_refuses_partial_marks():
    from types import SimpleNamespace

    from peftlab.data import DataError, assign_splits
    recs = [SimpleNamespace(id=f"r{i}", split="train" if i < 18 else "test") for i in range(20)]
    out = assign_splits(recs, 0.25, 0.1, seed=0, source="f.csv")
    assert [len(out[s]) for s in ("train", "val", "test")] == [14, 4, 2]  # val carved from the 18 train rows
    assert {r.id for r in out["val"]} <= {f"r{i}" for i in range(18)}
    recs[3].split = None
    with pytest.raises(DataError, match=r"^f.csv, record r3: has no split"):
        assign_splits(recs, 0.25, 0.1, seed=0, source="f.csv")


def test_layer_weighted_sum_trains_one_weight_per_layer_and_round_trips(tmp_path):
    from peftlab.model.heads import LayerWeightedSum

    toy = make_backbone("toy")  # 2 blocks: embeddings + 2 layer outputs
    module = PeftModule(toy, build_method("linear_probe"), task_type="multiclass", num_outputs=3,
                        layer_weighted_sum=True)
    assert isinstance(module.head.layer_sum, LayerWeightedSum)
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 3 + (32 * 3 + 3)
    batch = {"tokens": torch.randint(1, 33, (2, 7)), "labels": torch.tensor([0, 2]), "ids": ["a", "b"]}
    module._step(batch)[0].backward()
    assert module.head.layer_sum.weights.grad.abs().sum() > 0
    with torch.no_grad():
        module.head.layer_sum.weights.copy_(torch.tensor([0.0, 5.0, -5.0]))
    save_adapter(module, tmp_path)
    reloaded = load_adapter(tmp_path).eval()
    module.eval()
    torch.testing.assert_close(reloaded(batch), module(batch), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs per-layer token states"):
        from peftlab_medical import TimmBackbone
        PeftModule(TimmBackbone(name="resnet50"), build_method("linear_probe"), task_type="binary",
                   num_outputs=1, layer_weighted_sum=True)


@pytest.mark.parametrize("task", TASK_TYPES)
def test_every_task_type_has_a_kind_whose_primary_metric_it_logs(task):
    kind = task_kind(task)
    assert kind.name == task
    assert kind.primary_metric in kind.build_metrics(1 if task in ("binary", "regression") else 3)


def test_an_unknown_task_type_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown task_type 'segmentaton'; expected one of binary"):
        task_kind("segmentaton")
