"""Generate the README's method table from the code: every method config in
configs/methods/, its registered method's family, what it trains, whether it
merges, and the trainable parameters it gives on each reference backbone
(built at full size with random weights: counts do not depend on the weights).

    python scripts/method_table.py            # print the table
    python scripts/method_table.py --write    # put it into README.md between the markers
    python scripts/method_table.py --check    # exit 1 if README.md's table is out of date (tests run this)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- method-table:start (scripts/method_table.py --write) -->", "<!-- method-table:end -->"


def reference_backbones() -> dict:
    """Name -> factory of the three reference backbones (full size, random init, no download)."""
    from peftlab_medical import TimmBackbone
    from peftlab_protein import ESM2Backbone
    from peftlab_speech.backbones import TorchaudioEncoder

    return {"ESM-2 35M": lambda: ESM2Backbone(name="esm2_t12_35M_UR50D"),
            "ViT-S/16": lambda: TimmBackbone(name="vit_small_patch16_224"),
            "wav2vec2 base": lambda: TorchaudioEncoder(name="wav2vec2_base")}


def method_configs() -> list[tuple[Path, dict]]:
    """(config file, its model section) for every configs/methods/*.yaml."""
    return [(p, yaml.safe_load(p.read_text())["model"]) for p in sorted((ROOT / "configs/methods").glob("*.yaml"))]


def build(model_section: dict, source: Path):
    from peftlab.persistence.adapter import import_class
    from peftlab.methods import Method

    spec = model_section["method"]
    return import_class(spec["class_path"], Method, source)(**spec.get("init_args", {}))


def count(backbone, model_section: dict, source: Path, plain_total: int) -> str:
    """Trainable backbone parameters (share of the plain backbone's), or why the method refuses it."""
    from peftlab import PeftModule
    from peftlab.methods import count_parameters

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = PeftModule(backbone, build(model_section, source), task_type="multiclass", num_outputs=2,
                                layer_weighted_sum=model_section.get("layer_weighted_sum", False))
    except ValueError as e:
        return f"refused: {str(e).split(':')[0]}"
    trained = count_parameters(module.backbone, trainable_only=True)
    return f"{trained:,} ({100 * trained / plain_total:.2f}%)" if trained else "0"


def table() -> str:
    import copy

    from peftlab.methods import count_parameters

    plain = {name: factory() for name, factory in reference_backbones().items()}  # deep-copied per method
    totals = {name: count_parameters(b) for name, b in plain.items()}
    header = ["config", "method", "family", "what trains", "merges"] + [f"{n} ({totals[n] / 1e6:.1f}M)" for n in plain]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * 5 + "---:|" * len(plain)]
    for path, section in method_configs():
        method = build(section, path)
        cls = type(method)
        merges = "yes" if method.mergeable else ("n/a (adds nothing)" if not cls.adds_modules else "no")
        extra = " + weighted layer sum" if section.get("layer_weighted_sum") else ""
        if getattr(method, "quantize", None):  # QLoRA: 4-bit needs CUDA; it trains what plain LoRA trains
            extra += f" on a {method.quantize} backbone (CUDA)"
            section = copy.deepcopy(section)
            section["method"]["init_args"]["quantize"] = None
        counts = [count(copy.deepcopy(b), section, path, totals[n]) for n, b in plain.items()]
        rows.append(f"| `{path.stem}` | `{method.name}`{extra} | {cls.family} | {cls.trains} | {merges} | "
                    + " | ".join(counts) + " |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs")
    args = parser.parse_args(argv)
    text = table()
    readme = ROOT / "README.md"
    if not (args.write or args.check):
        print(text, end="")
        return 0
    content = readme.read_text()
    if START not in content or END not in content:
        print(f"{readme}: no table markers ({START} ... {END})", file=sys.stderr)
        return 1
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{text}{END}{tail}"
    if args.check:
        if new != content:
            print("README.md's method table is out of date: run python scripts/method_table.py --write",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
