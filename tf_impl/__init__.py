"""Keras 3 implementations on the TensorFlow backend (keras.Model.call, keras.ops, tf.data).

The backend is chosen here, the one place, before any module of this package imports keras.
TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()", oneDNN's
"custom operations are on", the CPU-feature notice) are written to file descriptor 2 while
TensorFlow loads, whatever TF_CPP_MIN_LOG_LEVEL says; they are dropped here unless the user asks
for them with ROSETTA_TF_LOGS=1.
"""

import contextlib
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own INFO/WARNING lines


@contextlib.contextmanager
def _start_up_lines_dropped():
    """Point file descriptor 2 at /dev/null while TensorFlow loads (Python's own errors still show:
    a traceback is printed after the descriptor is restored)."""
    if os.environ.get("ROSETTA_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _start_up_lines_dropped():
    import tensorflow  # noqa: F401  (loaded once, here, with the start-up lines dropped)
