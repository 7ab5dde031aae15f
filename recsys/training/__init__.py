"""Training loops, samplers and model-version checkpoints."""
