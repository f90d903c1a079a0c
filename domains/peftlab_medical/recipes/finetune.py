"""Fine-tune a timm image backbone on a medical imaging task, test it, and
print metrics and cost.

    # offline: random-init ViT, synthetic lesion task, LoRA
    python domains/peftlab_medical/recipes/finetune.py --config configs/medical/backbones/vit_tiny.yaml \
        --config configs/methods/lora.yaml --config configs/medical/data/synthetic_lesion.yaml

    # MeLo (needs the ViT-B/16 weights and the data)
    python domains/peftlab_medical/recipes/finetune.py --setup melo \
        --config configs/medical/data/medmnist.yaml --data.path pneumoniamnist.npz --data.image_size 224

    # a Dutt-style comparison: one run per method config, same backbone and data
    for m in full linear_probe bitfit lora ssf adapter adaptformer prompt_deep; do
        python domains/peftlab_medical/recipes/finetune.py --config configs/medical/backbones/vit_base.yaml \
            --config configs/methods/$m.yaml --config configs/medical/data/medmnist.yaml \
            --data.path pneumoniamnist.npz --data.image_size 224
    done

``--setup NAME`` prepends ``configs/medical/setups/NAME.yaml``; every other argument
goes to the Lightning CLI, so any field can be overridden.
"""

from __future__ import annotations

import sys
from pathlib import Path

from peftlab.experiment import recipe_main

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "medical" / "setups"
SETUPS = ("melo",)


def main(argv: list[str]) -> dict:
    return recipe_main(argv, CONFIGS, SETUPS, title="peftlab medical imaging fine-tuning")


if __name__ == "__main__":
    main(sys.argv[1:])
