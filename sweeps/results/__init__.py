"""Reading a study back: analysis, figures, notes, checkpoints and dashboard artifacts."""
