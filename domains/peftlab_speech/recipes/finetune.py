"""Fine-tune a speech encoder (wav2vec2 / HuBERT / WavLM) on an audio task,
test it, and print metrics and cost.

    # offline: random-init HuBERT-shaped encoder, synthetic tones, LoRA
    python domains/peftlab_speech/recipes/finetune.py --config configs/speech/backbones/hubert_tiny.yaml \
        --config configs/methods/lora.yaml --config configs/speech/data/synthetic_tones.yaml

    # Chen et al. 2022: Houlsby adapters on HuBERT base, keyword spotting (needs weights and data);
    # their LoRA / BitFit rows: add --config configs/methods/<method>.yaml after the setup (prefix tuning: not yet)
    python domains/peftlab_speech/recipes/finetune.py --setup chen2022_hubert_adapters \
        --config configs/speech/data/speech_commands.yaml --data.path speech_commands_v0.02

    # PEFT-SER: LoRA on WavLM for emotion, UAR reported
    python domains/peftlab_speech/recipes/finetune.py --setup peft_ser_wavlm_lora \
        --config configs/speech/data/emotion_csv.yaml --data.path crema_d.csv

    # speech recognition (CTC over characters, WER): LoRA on the tiny random-init encoder, speechocean762's
    # Kaldi directories; Chen et al.'s ASR row: --setup chen2022_hubert_asr --config configs/speech/data/librispeech.yaml
    python domains/peftlab_speech/recipes/finetune.py --config configs/speech/backbones/hubert_tiny.yaml \
        --config configs/methods/lora.yaml --config configs/speech/data/speechocean762.yaml \
        --data.init_args.path ../shared/data/speechocean762

``--setup NAME`` prepends ``configs/speech/setups/NAME.yaml``; every other argument
goes to the Lightning CLI, so any field can be overridden.
"""

from __future__ import annotations

import sys
from pathlib import Path

from peftlab.experiment import recipe_main

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "speech" / "setups"
SETUPS = ("chen2022_hubert_adapters", "chen2022_hubert_asr", "peft_ser_wavlm_lora")


def main(argv: list[str]) -> dict:
    return recipe_main(argv, CONFIGS, SETUPS, title="peftlab speech fine-tuning")


if __name__ == "__main__":
    main(sys.argv[1:])
