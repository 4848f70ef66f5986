"""Placeholder: filled by the finetune protocol."""
