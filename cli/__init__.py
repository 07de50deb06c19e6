"""The `l2i-tf` command line: thin click commands, each calling one library function."""

import os
import sys

VERBOSE_FLAGS = ("-v", "--verbose")


def quiet_native_logs(argv: list[str], environ=os.environ) -> None:
    """Unless ``argv`` asks for -v/--verbose, keep TensorFlow's C++ start-up lines (CUDA factories, cudart_stub,
    oneDNN, cpu_feature_guard, TF-TRT) out of the output. They are written while ``import tensorflow`` runs, so
    this must happen before the first TensorFlow import; a level the user set in the environment is kept."""
    if not any(arg in VERBOSE_FLAGS for arg in argv):
        environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# Before any command module imports TensorFlow (cli.main imports them all).
quiet_native_logs(sys.argv[1:])
