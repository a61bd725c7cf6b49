"""Analyses of the learned embedding space (extensions.md §3): concept discovery (concepts.py)."""
