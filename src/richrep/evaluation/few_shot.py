"""Placeholder: filled by the few_shot protocol."""
