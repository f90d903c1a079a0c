"""The model: PeftModule (the one LightningModule: backbone + method + task head,
loss, metrics, optimiser, checkpoints of trained state), task heads, metrics, the
frozen-feature cache, and loading a trained adapter back into a model."""
