"""What the runner writes for optuna-dashboard, behind three hooks the runner calls.

- at study open: the study note (resolved config, plan table, budget spent so far);
- per trial: its note (a sweep-loop callback, in the bookkeeper) and, only for a trial that
  enters the study's best `dashboard.keep_checkpoints`, its best weights as an artifact
  (`sweeps.trial.checkpoints`: serialised by the objective right after training, written by the
  bookkeeper);
- after the sweep (run by the bookkeeper, which has the trials cached): the study note again
  (final budget spent) and the report's figures as dashboard plots, all in one transaction,
  built without importing plotly.
"""

from __future__ import annotations

import logging

import optuna

from storage.batch import set_study_system_attrs
from storage.dashboard_formats import chunks, plot_data_key_prefix
from storage.optuna_private import study_id_of, study_storage
from sweeps.config.study_file import SweepConfig
from sweeps.publish.notes import TrialNotes, study_note, write_study_note
from sweeps.results.analysis import analyse
from sweeps.results.figures import Figure, figures_of, to_json
from sweeps.trial.checkpoints import CheckpointKeeper, artifact_dir, open_artifact_store

logger = logging.getLogger("sweeps")
PLOT_PREFIX = "sweeps-"  # dashboard graph-object ids of the report's figures


def publish_figures(study: optuna.Study, figures: dict[str, Figure]) -> None:
    """Save figures as optuna-dashboard plots (its `save_plotly_graph_object` format), one transaction."""
    storage, study_id = study_storage(study), study_id_of(study)
    system = storage.get_study_system_attrs(study_id)
    attrs: dict[str, str] = {}
    for key, fig in figures.items():
        prefix = plot_data_key_prefix(f"{PLOT_PREFIX}{key}")
        parts = chunks(to_json(fig), prefix)
        old = sum(1 for k in system if k.startswith(prefix))
        attrs.update(parts)
        attrs.update({f"{prefix}{i}": "" for i in range(len(parts), old)})
    set_study_system_attrs(storage, study_id, attrs)



class DashboardHooks:
    """Built by the runner once the study is open; every hook is a no-op with `dashboard.notes: false`."""

    def __init__(self, config: SweepConfig, storage_url: str, study: optuna.Study, n_train: int,
                 tokens_per_example: int | None = None):
        self.config = config
        self.n_train = n_train
        self.tokens_per_example = tokens_per_example
        section = config.dashboard
        self.callbacks = [TrialNotes(config)] if section.notes else []
        self.keeper: CheckpointKeeper | None = None
        if section.keep_checkpoints > 0:
            store = open_artifact_store(artifact_dir(config, storage_url, study.study_name))
            self.keeper = CheckpointKeeper(study, store, section.keep_checkpoints)
        if section.notes:
            write_study_note(study, study_note(study, config, n_train, tokens_per_example=tokens_per_example))

    def after_sweep(self, study: optuna.Study) -> None:
        if not self.config.dashboard.notes:
            return
        try:
            write_study_note(study, study_note(study, self.config, self.n_train,
                                               tokens_per_example=self.tokens_per_example))
            analysis = analyse(study, with_importances=False)  # the dashboard plots importances itself
            if analysis.complete:
                publish_figures(study, figures_of(analysis, self.config, self.n_train, self.tokens_per_example))
        except optuna.exceptions.OptunaError:
            raise
        except Exception:  # a report figure must never fail a finished sweep
            logger.exception("could not write the report's figures to the dashboard")
