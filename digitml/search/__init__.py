"""Hyperparameter search with Keras Tuner, every trial a child MLflow run of one search run.

- `workflow.py`: `run_search`, the whole search, then the best configuration retrained,
  tested and registered
- `space.py`: the search file's hyperparameters (named by config path) and a trial's config
- `tuner.py`: `DigitTuner`, which runs a trial with digitml's training loop, and the oracles
  (what to try), their state saved atomically and reloaded exactly
- `hyperband.py`: Hyperband's continuation from the previous round's weights, and its schedule
- `runs.py`: the search's MLflow runs: parent, trials, summary, best retraining
- `progress.py`: the line printed after each trial, with its time-left estimate
- `distributed.py`: chief and workers: roles, oracle address, worker ids, tuning folders

Nothing is imported here: `digitml tune --help` and option errors answer before TensorFlow loads.
"""
