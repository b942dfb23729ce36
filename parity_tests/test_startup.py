"""What a user sees on stderr: no TensorFlow C++ start-up lines unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = "import tf_impl.mlp, keras; print(float(keras.ops.sum(keras.ops.ones(3))))"


def run(extra_env: dict) -> subprocess.CompletedProcess:
    # with oneDNN on (TF's default; TF_ENABLE_ONEDNN_OPTS=0 makes TF itself silent)
    env = {k: v for k, v in os.environ.items() if k != "ROSETTA_TF_LOGS"} | extra_env
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=120
    )


def test_tensorflow_start_up_lines_are_dropped_unless_asked_for():
    quiet, loud = run({}), run({"ROSETTA_TF_LOGS": "1"})
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3.0", quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    # the lines exist (so the first assertion can fail): asked for, they are shown
    assert loud.returncode == 0 and "oneDNN" in loud.stderr, loud.stderr


def test_keras_retracing_notice_is_dropped_by_parity_only():
    """tasks.parity drops TensorFlow's "triggered tf.function retracing" notice (parity builds a
    Keras model per case; each traces once), and only that message of the "tensorflow" logger."""
    import logging

    import tasks.parity  # noqa: F401  (installs the filter)

    logger = logging.getLogger("tensorflow")

    def record(msg: str) -> logging.LogRecord:
        return logger.makeRecord("tensorflow", logging.WARNING, __file__, 1, msg, (), None)

    notice = "5 out of the last 5 calls to <function f> triggered tf.function retracing. Tracing"
    assert not logger.filter(record(notice))
    assert logger.filter(record("Gradients do not exist for variables"))
