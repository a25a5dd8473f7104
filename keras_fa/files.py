"""Writing files whole or not at all.

Every file keras_fa, its benchmarks and its examples write (results
tables, JSON cells, figures) goes through `atomic_open`: the data is
written to a temporary file beside the target and renamed over it, so a
reader (or a run interrupted half-way) sees the old file or the complete
new one, never a part. The new file is opened like any other, so its
permissions follow the umask, also where it replaces a file.
"""

import contextlib
import os
import uuid


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Opens a temporary file that replaces `path` when the block ends.

    Args:
        path: the file to write; its directory is made if missing.
        mode: `"w"` (text, UTF-8) or `"wb"` (bytes).

    If the block raises, the temporary file is removed and `path` is left
    as it was.

    Example:

    >>> with keras_fa.files.atomic_open("results.md") as f:
    ...     f.write("| rule | accuracy |\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb'. Received: {mode!r}")
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    # A name of our own ("x": never an existing file), so that no other
    # writer's temporary file is reused.
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    encoding = None if mode == "wb" else "utf-8"
    try:
        with open(temporary, mode.replace("w", "x"), encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_atomic(path, data):
    """Writes `data` (str or bytes) to `path` whole or not at all.

    See `atomic_open`; the file's mode follows the umask.
    """
    if not isinstance(data, (str, bytes)):
        raise TypeError(
            f"`data` must be str or bytes. Received: {type(data).__name__}"
        )
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def output_problem(path, directory=False, name="it"):
    """Returns what keeps `path` from being written, or None. Writes
    nothing.

    `path` is a file to write (replacing one there), or with `directory` a
    directory to write into. Whatever is missing of it and its parents
    must be creatable (`atomic_open` creates them): the
    nearest existing parent must be a writable directory, not a file. An
    existing `path` must be a file (a directory with `directory`) and
    writable, and a file's directory writable (`atomic_open` replaces it
    through a temporary file there). The returned text calls `path` itself
    `name` ("it is a file, not a directory") and its parents by their
    absolute paths.
    """
    path = os.path.abspath(path)
    if os.path.lexists(path):
        if directory and not os.path.isdir(path):
            return f"{name} is a file, not a directory"
        if not directory and os.path.isdir(path):
            return f"{name} is a directory, not a file"
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            return f"{name} is not writable"
        if directory:
            return None
        parent = os.path.dirname(path)
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"{name} cannot be replaced: {parent} is not writable"
        return None
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable"
    return None
