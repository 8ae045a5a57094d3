"""The built-in tasks: each a factory from TrialSettings to a Task (model, data, loss, metric)."""
