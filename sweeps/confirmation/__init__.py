"""Companion studies that train chosen configurations again: `sweeps confirm`'s and `sweeps predict --verify`'s."""
