"""transformers-compatible import paths (`from llamacpu.utils.attention_visualizer import ...`)."""
