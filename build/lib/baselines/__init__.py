"""Baseline methods, one small file each. Every file states how it differs from Flow-GRPO."""
