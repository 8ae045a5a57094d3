"""Hyperparameter sweeps over batch size, epochs and learning-rate coupling on Optuna."""
