"""The LoRA lab: every claim made about LoRA, measured on the demo's own model (docs/lora_lab.md)."""
