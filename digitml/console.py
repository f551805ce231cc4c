"""What a digitml command prints besides its own lines. Third-party chatter that says nothing
true about a run is silenced here, in one place: set DIGITML_VERBOSE=1 to see it all again."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys

VERBOSE = bool(os.environ.get("DIGITML_VERBOSE"))

if not VERBOSE:
    # TensorFlow's C++ log: CUDA probes on a machine without a GPU ("failed call to cuInit").
    # Read when TensorFlow loads, so `cli` imports this module first.
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL"):  # a level the user set stays
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # Every trial builds a new network, so TensorFlow's retracing warning is expected.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # `evaluate` runs MLflow's classifier evaluation on fixed predictions: its progress notes
    # ("Testing metrics on first row...") say nothing the printed table does not. Nor do its
    # notes on creating a new store's tables and on checking the model's own input example.
    for logger in ("mlflow.models.evaluation", "mlflow.store.db.utils", "mlflow.pyfunc"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    # MLflow draws a progress bar for every artifact download, even of a few files from disk.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# At exit, Python's last garbage collections walk every object TensorFlow, Keras and MLflow made
# (2-3.5 s on a 2-core machine) only to free memory the ending process returns anyway. Frozen
# objects are skipped; the exit handlers registered after this one (MLflow's among them) run
# first, and nothing is left unflushed.
atexit.register(gc.freeze)


def load_tensorflow() -> None:
    """Import TensorFlow (seconds: commands call this once their options are checked) without the
    lines it writes before any log level applies ("Could not find cuda drivers on your machine",
    absl's notice about logging before InitializeLog). An import error still raises, after."""
    if VERBOSE or "tensorflow" in sys.modules:
        return
    from digitml.pyfunc import stderr_discarded

    with stderr_discarded():
        import tensorflow  # noqa: F401
