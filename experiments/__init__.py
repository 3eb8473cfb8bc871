"""Experiments on the demo: what it needs (lora_medical.py) and how much its results vary (demo_seeds.py); docs/experiments.md."""
