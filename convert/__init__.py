"""Offline converters from published Qwen2.5-Omni checkpoints to omni-edge files."""
