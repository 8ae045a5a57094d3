"""The training loop and its own arithmetic: counting and budget, LR coupling and schedule."""
