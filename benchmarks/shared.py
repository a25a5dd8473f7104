"""Helpers every benchmark script shares: atomic writes, lists of names
from the command line, and thread limits."""

import os
import tempfile

import keras


def write_atomic(path, text):
    """Writes `text` (str or bytes) to `path` through a temporary file and a
    rename: the file is either absent, the old one, or complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=".tmp_", suffix=os.path.basename(path)
    )
    try:
        binary = isinstance(text, bytes)
        mode, encoding = ("wb", None) if binary else ("w", "utf-8")
        with os.fdopen(handle, mode, encoding=encoding) as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def names(text, allowed, flag):
    """Returns the comma-separated names in `text`, or exits with a message
    naming the allowed ones if any is unknown or none is given."""
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in allowed]
    if unknown or not chosen:
        raise SystemExit(
            f"{flag}: unknown or empty {unknown or text!r}; "
            f"choose from {','.join(allowed)}"
        )
    return chosen


def limit_threads(threads):
    """Makes the active backend compute with `threads` threads.

    Must run before the backend computes anything (tensorflow's context and
    jax's CPU client read their thread settings once).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif backend == "jax":
        flags = f"intra_op_parallelism_threads={threads}"
        if threads == 1:
            flags = "--xla_cpu_multi_thread_eigen=false " + flags
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}"
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)
