"""Thin DVC entry points: `python -m stages.<name>`, each `main(argv) -> int`."""
