"""Keras 3 implementations on the TensorFlow backend (keras.Model.call, keras.ops, tf.data).

The backend is chosen here, the one place, before any module of this package imports keras.
"""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up notices off stderr
