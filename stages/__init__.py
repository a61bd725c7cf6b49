"""Thin stage entry points: each stages/<name>.py has a click command `cli` (the `avl <name>`
subcommand) and `main(argv) -> int` (`python -m stages.<name>`, as dvc.yaml runs it)."""
