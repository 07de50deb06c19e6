"""The `l2i-tf` command line: thin click commands, each calling one library function."""

import os

# Before TensorFlow is imported by any command module: keep its C++ info lines out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
