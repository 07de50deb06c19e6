"""`l2i-tf`: the command group. Each subcommand lives in its own module."""

from __future__ import annotations

import gc
import importlib

import click


class _Group(click.Group):
    """The command group; a file-system error no command turned into a message (a read-only or full disk, a
    permission) ends the command as a one-line error naming the path, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            raise click.ClickException(f"{where}{e.strerror or e}") from None


@click.group(
    cls=_Group,
    epilog="""\b
Examples:
  l2i-tf train                       # interpret the demo classifier on ESC-10
  l2i-tf train-classifier --out runs/classifier.keras
  l2i-tf train-classifier --help
  l2i-tf learn-dictionary --out runs/esc10_dictionary
  l2i-tf export runs/esc10 && l2i-tf explain savedmodels/l2i clip.wav --out out
  l2i-tf explain-bulk savedmodels/l2i 'archive/**/*.ogg' --out out/archive   # Apache Beam, resumable
  l2i-tf report runs/esc10 --examples 3 --out reports/esc10   # an offline HTML page
""",
)
@click.version_option(package_name="l2i_tf")
def main():
    """Listen to Interpret: listenable interpretations of audio classifiers."""


COMMANDS = (
    "train",
    "train_classifier",
    "learn_dictionary",
    "explain",
    "explain_bulk",
    "export",
    "request",
    "report",
    "evaluate",
)
"""The subcommands' modules (``cli/<name>.py``, each defining ``command``)."""


def _commands() -> list[click.Command]:
    """Every subcommand, its module imported with the cyclic garbage collector paused, then frozen (``gc.freeze``):
    importing TensorFlow and Keras makes ~600 000 objects, which the collections the import triggers traverse again
    and again (~0.7 s of CPU, a fifth of every command's start, ``--help`` included); frozen, the job's own
    collections skip them too."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return [importlib.import_module(f"cli.{name}").command for name in COMMANDS]
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


for _command in _commands():
    main.add_command(_command)


def run() -> None:
    """The ``l2i-tf`` program: :func:`main`, then an exit that skips the interpreter's final garbage collections over
    TensorFlow's objects (``gc.freeze``): ~1 s of every command's wall time on 2 cores, spent after its work is done.
    Objects are still freed as their references drop, and exit handlers (log flushing, temporary folders) still run.
    """
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
