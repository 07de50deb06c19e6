"""Library errors -> click errors with the flag that fixes them (the library's messages carry data, not flags)."""

from __future__ import annotations

import click

from l2i_tf import audio, feature_cache, runs, timeline, training
from l2i_tf.dictionary import DictionaryMismatchError
from l2i_tf.explain_files import FixedByExportError, UnknownClassError

RUN_FOLDER_HINTS = {
    "exists": "pass --resume to continue it or --overwrite to replace it",
    "no_checkpoint": "train it first, without --resume",
    "busy": "wait for that job to end, or use another --out",
    "incomplete": "point at the folder `l2i-tf train --out` wrote",
    "incompatible": "retrain it with `l2i-tf train --overwrite` and the same settings",
    "clash": "use another --out, or move them out of it",
}
OPTION_FLAGS = {"top_n": "--top", "class_names": "--class-names"}


def unsafe_model(error: runs.UnsafeModelError, param_hint: str) -> click.BadParameter:
    return click.BadParameter(f"{error}: if you trust it, pass --unsafe-load to opt in", param_hint=param_hint)


def run_folder(error: runs.RunFolderError, param_hint: str) -> click.BadParameter:
    return click.BadParameter(f"{error}; {RUN_FOLDER_HINTS[error.reason]}", param_hint=param_hint)


def flag(option: str) -> str:
    """The CLI flag of a library setting (``top_n`` -> ``--top``)."""
    return OPTION_FLAGS.get(option, "--" + option.replace("_", "-"))


def fixed_by_export(error) -> click.BadParameter:
    """An option that an export fixed (:class:`l2i_tf.explain_files.FixedByExportError`), in flag terms."""
    option = flag(error.option)
    return click.BadParameter(
        f"{option} {error.value!r} differs from this SavedModel's {error.fixed!r}, fixed at export; re-export with "
        f"{option} {error.value} or explain from the run folder",
        param_hint=option,
    )


def audio_setting(error: audio.AudioSettingError) -> click.BadParameter:
    """A sample rate or STFT size that cannot be used, named by its flag."""
    if error.limit is None:
        message = f"must be a positive integer, got {error.value!r}"
    else:
        other, bound = error.limit
        relation = "must not exceed" if error.field == "frame_step" else "must be at least"
        message = f"{error.value} {relation} the frame length {bound} ({flag(other)})"
    return click.BadParameter(message, param_hint=flag(error.field))


def sample_rate_mismatch(error: training.SampleRateMismatchError) -> click.BadParameter:
    """A rate that contradicts the classifier's sidecar: --sample-rate's, or a resumed run's."""
    if error.source == "sample_rate":
        message = (
            f"{error.given} Hz but the classifier expects {error.expected} Hz (its sidecar {error.sidecar}); "
            "leave out --sample-rate to take the sidecar's"
        )
        return click.BadParameter(message, param_hint="--sample-rate")
    return click.BadParameter(str(error), param_hint="--classifier")


def disk_space(error: feature_cache.DiskSpaceError, param_hint: str, more: str = "") -> click.BadParameter:
    """Feature shards that will not fit on the run folder's disk (found before they are written); ``more``: another
    way out."""
    return click.BadParameter(
        f"{error}; free that much or put the run folder on a larger disk{more}", param_hint=param_hint
    )


def dictionary_mismatch(error: DictionaryMismatchError, given: bool) -> click.BadParameter:
    """A dictionary learnt on another STFT (or K): --dictionary's when ``given``, else a resumed run's own (named
    by the flags whose values differ)."""
    if given:
        hint = "--dictionary"
    else:
        hint = "/".join(flag(name) for name in error.differences if name != "window") or "--resume"
    return click.BadParameter(str(error), param_hint=hint)


SOURCE_ERRORS = (
    runs.UnsafeModelError,
    runs.RunFolderError,
    runs.CustomObjectsError,
    FileNotFoundError,
    FixedByExportError,
    UnknownClassError,
    timeline.WindowError,
)
"""What opening a run folder or an export for explaining can raise (l2i-tf explain, l2i-tf report)."""


def source_error(error: Exception, param_hint: str = "SOURCE") -> click.BadParameter:
    """One of :data:`SOURCE_ERRORS` as a click error with its flag."""
    if isinstance(error, runs.UnsafeModelError):
        return unsafe_model(error, param_hint)
    if isinstance(error, runs.RunFolderError):
        return run_folder(error, param_hint)
    if isinstance(error, FixedByExportError):
        return fixed_by_export(error)
    if isinstance(error, UnknownClassError):
        return click.BadParameter(str(error), param_hint="--class")
    if isinstance(error, timeline.WindowError):
        return click.BadParameter(str(error), param_hint="--window-seconds")
    return click.BadParameter(str(error), param_hint=param_hint)
