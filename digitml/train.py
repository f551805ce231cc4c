"""Fit a model from a TrainConfig: optimizer, LR schedule, augmentation, callbacks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from digitml.config import AugmentationConfig, TrainConfig
from digitml.data import NUM_CLASSES, Splits
from digitml.ensembles import averaged, averaged_accuracy, side_by_side
from digitml.models import build_model
from digitml.precision import dtype_policy, float32_model, resolve_precision

ONECYCLE_WARMUP_FRACTION = 0.3
ONECYCLE_START_DIVISOR = 25.0
FINAL_LR_FRACTION = 1e-3
PREDICT_BATCH = 1024
TRAINED_WEIGHTS = "trained.weights.h5"  # in the backup folder, once the fit has ended


@dataclass
class TrainResult:
    """The fitted network (in float32, see `float32_model`), its Keras history, the fit time."""

    model: keras.Model
    history: dict[str, list[float]]
    train_seconds: float


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    return math.ceil(train_size / batch_size)


def learning_rate_schedule(
    config: TrainConfig, train_size: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, a cosine decay, or OneCycle (linear warm-up to the peak, cosine down)."""
    total_steps = steps_per_epoch(train_size, config.batch_size) * config.epochs
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate, total_steps, alpha=FINAL_LR_FRACTION
        )
    warmup_steps = int(total_steps * ONECYCLE_WARMUP_FRACTION)
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate / ONECYCLE_START_DIVISOR,
        decay_steps=total_steps - warmup_steps,
        alpha=FINAL_LR_FRACTION * ONECYCLE_START_DIVISOR,
        warmup_target=config.learning_rate,
        warmup_steps=warmup_steps,
    )


def make_optimizer(config: TrainConfig, train_size: int) -> keras.optimizers.Optimizer:
    rate = learning_rate_schedule(config, train_size)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)
    if config.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate)
    return keras.optimizers.Adam(rate)


def augmenter(augmentation: AugmentationConfig, seed: int) -> keras.Sequential | None:
    """Random rotation/translation/zoom filling with black (reflecting would smear strokes)."""
    if not augmentation.enabled:
        return None
    transforms = []
    if augmentation.rotation:
        transforms.append(
            keras.layers.RandomRotation(augmentation.rotation, fill_mode="constant", seed=seed)
        )
    if augmentation.translation:
        transforms.append(
            keras.layers.RandomTranslation(
                augmentation.translation, augmentation.translation, fill_mode="constant", seed=seed
            )
        )
    if augmentation.zoom:
        transforms.append(
            keras.layers.RandomZoom(augmentation.zoom, fill_mode="constant", seed=seed)
        )
    return keras.Sequential(transforms, name="augmentation")


def training_dataset(splits: Splits, config: TrainConfig) -> tf.data.Dataset:
    """Shuffled (seeded), batched, optionally augmented training batches."""
    dataset = tf.data.Dataset.from_tensor_slices((splits.train_images, splits.train_labels))
    dataset = dataset.shuffle(
        len(splits.train_labels), seed=config.seed, reshuffle_each_iteration=True
    )
    dataset = dataset.batch(config.batch_size)
    augment = augmenter(config.augmentation, config.seed)
    if augment is not None:
        # One batch at a time, so the random transforms are drawn in batch order and a seed
        # repeats a training exactly (parallel calls drew them in whichever order they ran); no
        # slower here, as prefetching already overlaps it with training.
        dataset = dataset.map(
            lambda images, labels: (augment(images, training=True), labels),
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def training_callbacks(config: TrainConfig) -> list[keras.callbacks.Callback]:
    """The callbacks the config asks for; their settings' names are Keras' argument names."""
    callbacks: list[keras.callbacks.Callback] = []
    if config.early_stopping is not None:
        callbacks.append(keras.callbacks.EarlyStopping(**dataclasses.asdict(config.early_stopping)))
    if config.reduce_lr is not None:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(**dataclasses.asdict(config.reduce_lr)))
    return callbacks


class EpochBackup(keras.callbacks.BackupAndRestore):
    """Keras' backup of every epoch, for resuming, and what a kill during a backup leaves.

    Keras writes an epoch's weights, then its record (`{"epoch": N, "batch": 0}`), after copying
    both earlier files aside (`double_checkpoint`). Weights cut short: Keras falls back on the
    previous epoch's copy; with none (a kill during the first backup), training starts over. A
    record cut short (Keras fails on it): the weights beside it are whole, and their epoch is the
    one after the previous record's, so the record is written again."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        try:
            super().on_train_begin(logs)
        except OSError as error:
            if error.errno is not None:  # the file system's refusal (permissions), not the file's
                raise
            # HDF5's "unable to open file": the only weights are cut short, nothing to resume.
            print(
                f"The backup in {self.backup_dir} cannot be read ({error}): training starts "
                "over from the first epoch",
                file=sys.stderr,
                flush=True,
            )
            shutil.rmtree(self.backup_dir, ignore_errors=True)
        except json.JSONDecodeError:
            self._rewrite_epoch_record()
            super().on_train_begin(logs)

    def _rewrite_epoch_record(self) -> None:
        previous = Path(self._prev_training_metadata_path)
        epoch = json.loads(previous.read_text())["epoch"] + 1 if previous.is_file() else 1
        Path(self._training_metadata_path).write_text(json.dumps({"epoch": epoch, "batch": 0}))


class EpochLinePrinter(keras.callbacks.Callback):
    """One line per epoch, for logs and pipes where Keras' progress bar would be noise."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " - ".join(f"{key} {value:.4f}" for key, value in (logs or {}).items())
        seconds = time.perf_counter() - self._started
        print(f"epoch {epoch + 1}/{self.params['epochs']} - {values} - {seconds:.1f}s", flush=True)


def train_model(
    config: TrainConfig,
    splits: Splits,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    backup_dir: Path | None = None,
    progress: str = "lines",
    initial_weights: Path | None = None,
) -> TrainResult:
    """Build, compile and fit the configured model; resumes from `backup_dir` when it holds a backup.
    The fitted weights (early stopping's best, if it restores them) are kept there too, so a run
    killed after its fit is not trained again.

    `initial_weights`: a `.weights.h5` file of the same network to start from instead of a random
    start (a Hyperband trial continuing its previous round).

        `progress`: "bar" (Keras' bar, for terminals), "lines" (one line per epoch) or "none".
    """
    keras.utils.set_random_seed(config.seed)
    with dtype_policy(resolve_precision(config.precision)):
        model = build_network(config)
    trained = backup_dir / TRAINED_WEIGHTS if backup_dir is not None else None
    if trained is not None and trained.is_file():
        # A resume of a run killed after its fit: nothing to train. Loaded before compiling, as
        # the optimizer's state saved beside the weights is not needed (Keras warns of it).
        model.load_weights(trained)
        seconds = json.loads(trained.with_suffix(".json").read_text())["train_seconds"]
        return TrainResult(float32_model(averaged(model)), {}, seconds)
    if initial_weights is not None:
        model.load_weights(initial_weights)
    loss, accuracy = training_objective(len(config.architectures), config.label_smoothing)
    model.compile(
        optimizer=make_optimizer(config, len(splits.train_labels)), loss=loss, metrics=[accuracy]
    )
    callbacks = training_callbacks(config) + list(extra_callbacks)
    if backup_dir is not None:
        # Kept until the run is fully logged, so a kill after the last epoch loses no training.
        callbacks.append(
            EpochBackup(str(backup_dir), delete_checkpoint=False, double_checkpoint=True)
        )
    if progress == "lines":  # last, so a printed epoch is one already logged and backed up
        callbacks.append(EpochLinePrinter())
    started = time.perf_counter()
    history = model.fit(
        training_dataset(splits, config),
        validation_data=(splits.val_images, splits.val_labels),
        validation_batch_size=PREDICT_BATCH,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        verbose=1 if progress == "bar" else 0,
    )
    seconds = time.perf_counter() - started
    if trained is not None:
        keep_fitted(model, seconds, trained)
    return TrainResult(float32_model(averaged(model)), history.history, seconds)


def keep_fitted(model: keras.Model, seconds: float, path: Path) -> None:
    """The fitted weights at `path` (their fit time beside them), whole or not at all: written
    under another name, then renamed."""
    path.with_suffix(".json").write_text(json.dumps({"train_seconds": seconds}))
    partial = path.with_name(f"partial-{path.name}")
    model.save_weights(partial)
    os.replace(partial, path)


def build_network(config: TrainConfig) -> keras.Model:
    """The configured architecture, or its members side by side (an ensemble): `members` copies of
    it, then any `other_members`."""
    networks = [build_model(model, params) for model, params in config.architectures]
    return networks[0] if len(networks) == 1 else side_by_side(networks)


def training_objective(members: int, label_smoothing: float) -> tuple[Any, Any]:
    """(loss, accuracy metric): the accuracy of the one network, or of an ensemble's averaged
    prediction."""
    if members == 1:
        accuracy = "accuracy"
    else:
        accuracy = keras.metrics.MeanMetricWrapper(averaged_accuracy, name="accuracy")
    return Crossentropy(label_smoothing), accuracy


@keras.saving.register_keras_serializable(package="digitml")
class Crossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels, with label smoothing (Keras' sparse loss has none): the
    target is 1 - s on the label and s spread over all ten classes.

    For an ensemble's stacked output (batch, members, 10) each member has its own loss, averaged:
    the members learn independently (a loss on their averaged output would let them lean on each
    other).
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "crossentropy", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, labels: Any, probabilities: Any) -> Any:
        targets = keras.ops.one_hot(
            keras.ops.cast(keras.ops.reshape(labels, (-1,)), "int32"), NUM_CLASSES
        )
        if len(probabilities.shape) == 3:  # (batch, members, classes)
            targets = keras.ops.broadcast_to(
                keras.ops.expand_dims(targets, 1), keras.ops.shape(probabilities)
            )
        return keras.losses.categorical_crossentropy(
            targets, probabilities, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Class probabilities without `model.predict`'s per-call overhead."""
    return in_batches(lambda batch: np.asarray(model.predict_on_batch(batch)), images)


def in_batches(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, size: int = PREDICT_BATCH
) -> np.ndarray:
    """`predict`'s class probabilities for `images`, computed `size` images at a time."""
    chunks = [predict(images[start : start + size]) for start in range(0, len(images), size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, NUM_CLASSES), np.float32)
