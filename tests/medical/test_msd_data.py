"""The Medical Segmentation Decathlon DataModule on tiny NIfTI task folders written here
with nibabel (the real format): splits and the recorded split file, training crops and
whole-volume batches, located errors naming the case, and ``predict`` writing one NIfTI
mask per case with the input's affine plus per-case Dice / HD95 / NSD in predictions.csv, whose NSD
columns average to the logged ``test/nsd_per_class/<class>``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest

from peftlab import PeftModule, build_method
from peftlab.callbacks import EvaluationRecord, PredictionCSVWriter
from peftlab.errors import DataError
from peftlab_medical import MonaiUNETRBackbone
from peftlab_medical.data import MSDDataModule

AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])
AFFINE[:3, 3] = [10.0, -5.0, 3.0]


def write_case(root: Path, name: str, shape=(20, 24, 18), seed: int = 0, label_shape=None, label_value: int = 2,
               label_affine=None, image=None) -> None:
    rng = np.random.default_rng(seed)
    img = rng.normal(size=shape).astype(np.float32) if image is None else image
    lab = np.zeros(label_shape or shape, dtype=np.uint8)
    lab[4:9, 5:10, 4:8] = 1
    lab[10:14, 12:16, 9:13] = label_value
    nib.save(nib.Nifti1Image(img, AFFINE), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(lab, AFFINE if label_affine is None else label_affine),
             root / "labelsTr" / f"{name}.nii.gz")


def task_folder(tmp_path: Path, n: int = 10, **odd) -> Path:
    """An MSD task of ``n`` cases; ``odd`` = {case index: write_case options} for broken ones."""
    root = tmp_path / "Task99_Tiny"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    names = [f"tiny_{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        write_case(root, name, seed=i, **odd.get(str(i), {}))
    (root / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": [{"image": f"./imagesTr/{m}.nii.gz", "label": f"./labelsTr/{m}.nii.gz"} for m in names]}))
    return root


def module(root: Path, **kw) -> MSDDataModule:
    return MSDDataModule(**{"root": str(root), "crop_size": [16, 16, 16], "val_fraction": 0.2,
                            "test_fraction": 0.2, "cache": False, **kw})


def test_split_is_seeded_recorded_and_read_back(tmp_path):
    root = task_folder(tmp_path)
    split_file = tmp_path / "split.json"
    data = module(root, split_file=str(split_file), seed=3)
    assert data.split_sizes() == {"train": 6, "val": 2, "test": 2}
    assert data.num_outputs == 3 and data.label_names == ["background", "Anterior", "Posterior"]
    recorded = json.loads(split_file.read_text())
    assert recorded["seed"] == 3 and recorded["test"] == [c["id"] for c in data.splits["test"]]
    assert module(root, seed=3).splits == data.splits  # the same seed: the same split
    assert module(root, seed=4).splits != data.splits
    again = module(root, split_file=str(split_file), seed=99)  # a recorded split wins over the seed
    assert again.splits == data.splits


def test_training_crops_and_whole_volume_batches(tmp_path):
    data = module(task_folder(tmp_path), batch_size=2, samples_per_volume=2, pos_fraction=1.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["images"].shape == (4, 1, 16, 16, 16) and batch["labels"].shape == (4, 1, 16, 16, 16)
    assert batch["labels"].amax(dim=(1, 2, 3, 4)).min() >= 1  # pos_fraction 1: every crop centred on a label
    assert "shapes" not in batch
    val = next(iter(data.val_dataloader()))
    assert val["images"].shape == (2, 1, 20, 24, 18) and set(val["labels"].unique().tolist()) == {0, 1, 2}
    np.testing.assert_allclose(val["affines"][0].numpy(), AFFINE)
    image = val["images"][0, 0]
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2  # z-score normalised


def test_volumes_of_different_sizes_are_padded_and_keep_their_size(tmp_path):
    root = task_folder(tmp_path, n=4, **{str(i): {"shape": (20, 24, 16 + 2 * i)} for i in range(4)})
    data = MSDDataModule(root=str(root), crop_size=[16, 16, 16], val_fraction=0.0, test_fraction=0.5,
                         cache=False, batch_size=2)
    batch = next(iter(data.test_dataloader()))
    sizes = sorted(tuple(s) for s in batch["shapes"].tolist())
    assert batch["images"].shape[2:] == (20, 24, max(s[2] for s in sizes)) and len(set(sizes)) == 2


@pytest.mark.parametrize("odd,message", [
    ({"label_shape": (20, 24, 17)}, "label shape \\[1, 20, 24, 17\\] does not fit image shape \\[1, 20, 24, 18\\]"),
    ({"label_value": 5}, "label values \\[5\\] are outside the declared classes 0..2"),
    ({"label_affine": np.diag([1.0, 1.0, 1.0, 1.0])}, "label affine differs from the image's"),
    ({"image": np.zeros((20, 24, 18), np.float32)}, "the image is empty"),
    ({"image": np.full((20, 24, 18), np.nan, np.float32)}, "NaN or infinite"),
])
def test_a_bad_case_is_a_data_error_naming_it(tmp_path, odd, message):
    data = module(task_folder(tmp_path, n=5, **{"2": odd}), val_fraction=0.0, test_fraction=0.0, batch_size=5)
    with pytest.raises(DataError, match=message) as info:
        next(iter(data.train_dataloader()))
    assert info.value.record == "tiny_002"


def test_missing_and_corrupt_files_name_the_case(tmp_path):
    root = task_folder(tmp_path, n=3)
    (root / "labelsTr" / "tiny_001.nii.gz").unlink()
    with pytest.raises(DataError, match="tiny_001.nii.gz, record tiny_001: the label file listed in .* does not exist"):
        module(root).setup("fit")
    write_case(root, "tiny_001", seed=1)
    (root / "imagesTr" / "tiny_002.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    data = module(root, val_fraction=0.0, test_fraction=0.0, batch_size=3)
    with pytest.raises(DataError, match="tiny_002.nii.gz, record tiny_002: cannot read the image volume"):
        next(iter(data.train_dataloader()))
    (root / "dataset.json").write_text("{\"labels\": {\"1\": \"a\"}, \"training\": []}")
    with pytest.raises(DataError, match="dataset.json: 'labels' must number the classes 0..K-1"):
        module(root).setup("fit")


def test_predict_writes_a_mask_per_case_with_the_input_affine_and_per_case_scores(tmp_path):
    root = task_folder(tmp_path, n=5)
    data = MSDDataModule(root=str(root), crop_size=[16, 16, 16], val_fraction=0.2, test_fraction=0.4, cache=False,
                         batch_size=2)
    backbone = MonaiUNETRBackbone(img_size=[16, 16, 16], feature_size=4, hidden_size=24, mlp_dim=48, num_heads=2)
    model = PeftModule(backbone, build_method("lora", r=2), task_type="segmentation", num_outputs=data.num_outputs,
                       label_names=data.label_names)
    out = tmp_path / "run" / "predictions.csv"
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[PredictionCSVWriter(output=str(out))], default_root_dir=tmp_path)
    trainer.predict(model, datamodule=data)
    rows = list(csv.DictReader(out.open()))
    test_ids = sorted(c["id"] for c in data.splits["test"])
    assert sorted(r["id"] for r in rows) == test_ids and len(rows) == 2
    assert {"dice/background", "dice/Anterior", "dice/Posterior", "hd95/Posterior", "nsd/Anterior",
            "nsd/Posterior"} <= set(rows[0])
    for row in rows:
        mask = nib.load(row["mask"])
        source = nib.load(root / "imagesTr" / f"{row['id']}.nii.gz")
        assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        assert 0.0 <= float(row["dice/background"]) <= 1.0 and 0.0 <= float(row["nsd/background"]) <= 1.0
    tested = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                       callbacks=[EvaluationRecord()]).test(model, datamodule=data, verbose=False)[0]
    # the metrics file names the data they were computed on: the task folder (not "built in (synthetic)")
    record = json.loads((tmp_path / "test_metrics.json").read_text())["data"]
    assert record["source"] == str(root) and record["module"] == "MSDDataModule" and record["examples"] == 2
    for name in ("Anterior", "Posterior"):  # logged per class name: the mean of the per-case column
        per_case = [float(r[f"nsd/{name}"]) for r in rows]
        assert tested[f"test/nsd_per_class/{name}"] == pytest.approx(np.nanmean(per_case), abs=1e-6)
    assert "test/nsd" in tested and "test/nsd_per_class/background" in tested
