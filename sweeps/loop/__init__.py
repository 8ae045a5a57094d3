"""Running a study: the sweep loop (training process), its bookkeeper (Optuna process), workers."""
