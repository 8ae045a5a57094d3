"""What a sweep writes for optuna-dashboard while it runs: the study's and each trial's notes, the report's figures."""
