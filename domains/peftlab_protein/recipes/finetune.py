"""Fine-tune ESM-2 on a protein task, test it, and print metrics and cost.

    # the offline demo (random-init ESM-2, synthetic task, LoRA)
    python domains/peftlab_protein/recipes/finetune.py --config configs/protein/backbones/esm2_tiny.yaml --config configs/methods/lora.yaml --config configs/protein/data/synthetic_motif.yaml

    # a published setup (needs the ESM-2 650M weights and the FLIP data)
    python domains/peftlab_protein/recipes/finetune.py --setup sledzieski2024 \\
        --config configs/protein/data/flip_gb1.yaml --data.path two_vs_rest.csv

``--setup NAME`` prepends ``configs/protein/setups/NAME.yaml`` (``sledzieski2024``,
``schmirler2024``); every other argument is passed to the Lightning CLI, so any
field can be overridden (``--model.method.init_args.r 16``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from peftlab.experiment import recipe_main

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "protein" / "setups"
SETUPS = ("sledzieski2024", "schmirler2024")


def main(argv: list[str]) -> dict:
    return recipe_main(argv, CONFIGS, SETUPS, title="peftlab protein fine-tuning")


if __name__ == "__main__":
    main(sys.argv[1:])
