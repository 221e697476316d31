"""The `pam` command line: one entry point that dispatches lazily to each part of the stack.

`pam serve` must never import torch, so every subcommand lives in its own module under
`pam.commands` and is imported only when it runs.
"""
