"""The method x backbone matrix.

Every registered method runs through the same test bodies on two backbones
that implement the Backbone contract differently: fair-esm's ESM-2 (time-first
blocks, BOS token, separate q/k/v) and the toy transformer (batch-first, class
token, fused qkv). The registry drives the table: a registered method without
cases here fails ``test_every_registered_method_has_cases``.

Trainable counts are written out from the architecture (dimensions), not read
back from the implementation.
"""

from __future__ import annotations

import pytest
import torch

from peftlab import METHODS, BackboneMismatchError, PeftModule, build_method
from peftlab.model.loading import load_adapter
from peftlab.persistence.adapter import save_adapter

from tests.conftest import BACKBONE_KINDS, TINY_ESM, TINY_TOY, make_backbone, make_batch
from tests.method_checks import (SMALL_OPTIONS, TARGET_SHAPE_METHODS, adapter_family_count,
                                  check_empty_prefix_matches_library, check_method_guarantees, target_shape_count)

CASES: dict[str, list[dict]] = {
    "full": [{}],
    "linear_probe": [{}],
    "bitfit": [{}],
    "lora": [{"r": 4}, {"r": 4, "use_dora": True}, {"r": 4, "init": "gaussian"}, {"r": 2, "use_rslora": True, "targets": "mlp", "layers": "last:1"}],
    "ia3": [{}],
    "adapter": [{"placement": "houlsby", "bottleneck": 8}, {"placement": "pfeiffer", "bottleneck": 8},
                {"placement": "parallel", "bottleneck": 8, "scale": 0.5}],
    "prompt": [{"num_tokens": 3}, {"num_tokens": 3, "deep": True}],
    "ssf": [{}, {"layers": [0]}],
    "adaptformer": [{"bottleneck": 8}],
    **{name: [opts] for name, opts in SMALL_OPTIONS.items()},
    "ln_tuning": [{}, {"layers": [-1]}],
    "combined": [SMALL_OPTIONS["combined"],
                 {"parts": [{"name": "adapter", "placement": "pfeiffer", "bottleneck": 8}, {"name": "prompt", "num_tokens": 2}]}],
}
MATRIX = [(kind, name, opts) for kind in BACKBONE_KINDS for name, cases in CASES.items() for opts in cases]
IDS = [f"{k}-{n}-{'-'.join(f'{a}={b}' for a, b in o.items()) or 'default'}"[:80] for k, n, o in MATRIX]


def dims(kind: str) -> dict[str, int]:
    if kind == "esm2":
        d = TINY_ESM["embed_dim"]
        return {"D": d, "F": 4 * d, "L": TINY_ESM["num_layers"], "vocab": 33}
    d = TINY_TOY["dim"]
    return {"D": d, "F": TINY_TOY["mlp_ratio"] * d, "L": TINY_TOY["depth"], "vocab": 33, "max_len": 128}


def expected_backbone_trainable(kind: str, name: str, opts: dict) -> int:
    k = dims(kind)
    D, F, L = k["D"], k["F"], k["L"]
    linear = lambda i, o: i * o + o  # noqa: E731
    if name == "linear_probe":
        return 0
    if name == "full":
        if kind == "esm2":
            block = 4 * linear(D, D) + 2 * 2 * D + linear(D, F) + linear(F, D)
            return k["vocab"] * D + L * block + 2 * D
        block = 2 * 2 * D + linear(D, 3 * D) + linear(D, D) + linear(D, F) + linear(F, D)
        return k["vocab"] * D + D + (k["max_len"] + 1) * D + L * block + 2 * D
    if name == "bitfit":  # every bias: attention, two norms, MLP; plus the final norm
        attn_bias = 4 * D if kind == "esm2" else 3 * D + D
        return L * (attn_bias + 2 * D + F + D) + D
    if name == "lora":
        r = opts["r"]
        layers = 1 if opts.get("layers") == "last:1" else L
        if opts.get("targets") == "mlp":
            shapes = [(D, F), (F, D)]
        elif kind == "esm2":
            shapes = [(D, D)] * 4
        else:
            shapes = [(D, 3 * D), (D, D)]
        per_layer = sum(r * (i + o) for i, o in shapes)
        if opts.get("use_dora"):
            per_layer += sum(o for _, o in shapes)  # one magnitude per output feature
        return layers * per_layer
    if name == "ia3":  # output scales on k and v (fused qkv: all three), input scale on the MLP output layer
        return L * ((2 * D if kind == "esm2" else 3 * D) + F)
    if name == "adapter":
        b = opts["bottleneck"]
        one = linear(D, b) + linear(b, D)
        return L * one * (2 if opts["placement"] == "houlsby" else 1)
    if name == "prompt":
        return opts["num_tokens"] * D * (L if opts.get("deep") else 1)
    if name == "ssf":  # scale + shift per output channel of 4 (or qkv + proj) linears, 2 norms, fc1, fc2
        return (1 if opts.get("layers") else L) * 2 * (7 * D + F)
    if name == "adaptformer":
        b = opts["bottleneck"]
        return L * (linear(D, b) + linear(b, D))
    attention = [(D, D)] * 4 if kind == "esm2" else [(D, 3 * D), (D, D)]  # (in, out) of the default targets
    if name in TARGET_SHAPE_METHODS:
        return L * target_shape_count(name, opts, attention)
    if name in ("compacter", "loreft", "prefix"):
        return adapter_family_count(name, opts, D, L)
    if name == "ln_tuning":  # two norms per block (scale and shift), plus the final norm
        return (1 if opts.get("layers") else L) * 2 * 2 * D + (0 if opts.get("layers") else 2 * D)
    if name == "partial":  # the top block, all of it
        return (expected_backbone_trainable(kind, "full", {}) - (k["vocab"] * D + 2 * D)
                - (0 if kind == "esm2" else D + (k["max_len"] + 1) * D)) // L
    if name == "combined":
        return sum(expected_backbone_trainable(kind, part["name"], {k2: v for k2, v in part.items() if k2 != "name"})
                   for part in opts["parts"])
    raise AssertionError(f"no expected count for {name}")


def test_every_registered_method_has_cases():
    assert set(METHODS) == set(CASES), "add cases (and an expected count) for new methods"


@pytest.mark.parametrize("kind,name,opts", MATRIX, ids=IDS)
def test_method_guarantees(kind, name, opts, tmp_path):
    check_method_guarantees(lambda: make_backbone(kind), make_batch(kind), name, opts,
                            expected_backbone_trainable(kind, name, opts), dims(kind)["D"], tmp_path)


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_adapter_refuses_another_backbone(kind, tmp_path):
    module = PeftModule(make_backbone(kind), build_method("lora", r=2), task_type="regression", num_outputs=1)
    save_adapter(module, tmp_path)
    with pytest.raises(BackboneMismatchError, match="fingerprint"):
        load_adapter(tmp_path, backbone=make_backbone(kind, seed=1))
    # forcing is possible, and then the trained tensors are loaded as they are
    forced = load_adapter(tmp_path, backbone=make_backbone(kind, seed=1), force=True)
    assert torch.equal(forced.head.mlp[-1].weight, module.head.mlp[-1].weight)


def test_lora_on_a_layer_subset_touches_only_those_blocks():
    module = PeftModule(make_backbone("esm2"), build_method("lora", r=2, targets="kv", layers=[-1]),
                        task_type="regression", num_outputs=1)
    names = [n for n, p in module.backbone.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("model.layers.1.self_attn.") for n in names)
    assert {n.split(".")[4] for n in names} == {"k_proj", "v_proj"}


def test_unknown_preset_and_module_names_are_clear():
    with pytest.raises(ValueError, match="no target preset 'everything'.*presets: "):
        build_method("lora", targets="everything").apply(make_backbone("toy"))
    with pytest.raises(ValueError, match="has no module 'attn.q_proj'.*attn.qkv"):
        build_method("lora", targets=["attn.q_proj"]).apply(make_backbone("toy"))
    with pytest.raises(ValueError, match="out of range: the backbone has 2 blocks"):
        build_method("adapter", layers=[5]).apply(make_backbone("toy"))
    with pytest.raises(ValueError, match="unknown method 'lorax'; registered: "):
        build_method("lorax")


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_prompts_keep_outputs_aligned_and_layers_stripped(kind):
    backbone = make_backbone(kind).eval()
    batch = make_batch(kind)
    plain = backbone(batch, output_layers=True)
    build_method("prompt", num_tokens=4, deep=True).apply(backbone)
    prompted = backbone(batch, output_layers=True)
    assert prompted.hidden.shape == plain.hidden.shape
    assert [t.shape for t in prompted.layers] == [t.shape for t in plain.layers]
    assert torch.equal(prompted.layers[0], plain.layers[0])  # embeddings come before any prompt
    assert torch.equal(prompted.mask, plain.mask)


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_prefix_attention_without_tokens_is_the_backbones_own_attention(kind):
    check_empty_prefix_matches_library(lambda: make_backbone(kind), make_batch(kind))
