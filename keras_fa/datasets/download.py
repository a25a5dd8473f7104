"""Downloading a TFDS data set, or saying in seconds why it cannot be.

TFDS retries a download that gets no answer for about 200 s per file. Before
it starts one, `fetch` checks that the hosts the set's files come from
accept a connection within `NETWORK_TIMEOUT_SECONDS`, and raises
`DatasetUnavailableError` with the ways to provide the data if they do not.
A download that fails half-way leaves nothing behind.
"""

import contextlib
import os
import shutil
import socket
import threading
import time
import urllib.parse

# How long `load` waits for a connection to the hosts a TFDS set downloads
# from before it calls the data unavailable, instead of entering TFDS's
# retry loop (about 200 s per file without a network).
NETWORK_TIMEOUT_SECONDS = 3.0


class DatasetUnavailableError(RuntimeError):
    """A TFDS data set is not prepared locally and cannot be downloaded.

    Raised by `load` within seconds, instead of waiting on TFDS's download
    retries, when the data is missing from the data directory and
    `download=False` or the network does not answer. The message names the
    data set, the directory searched and how to provide the data.
    """


def fetch(name, builder, download):
    """Downloads and prepares `builder`'s data, or raises in seconds.

    Args:
        name: the data set's name, as `load` was given it.
        builder: its `tfds` builder, not prepared.
        download: `None` to download if the network answers, `True` to try
            regardless, `False` to refuse.
    """
    if download is False:
        raise DatasetUnavailableError(
            unavailable_message(name, builder, "download=False was given")
        )
    if download is None:
        addresses = download_addresses(builder)
        if not network_available(addresses, NETWORK_TIMEOUT_SECONDS):
            raise DatasetUnavailableError(
                unavailable_message(
                    name,
                    builder,
                    f"no network: {', '.join(addresses)} did not answer "
                    f"within {NETWORK_TIMEOUT_SECONDS:g} s",
                )
            )
    root = os.fspath(builder.data_dir_root)
    # TFDS downloads into <root>/downloads and prepares into
    # <root>/<builder name>/<config>/<version>.
    watched = [
        os.path.join(root, "downloads"),
        os.path.join(root, builder.name),
    ]
    with removing_new_files_on_error(root, watched):
        builder.download_and_prepare()


def unavailable_message(name, builder, reason):
    """The message of `DatasetUnavailableError`: what is missing, where,
    why it cannot be downloaded, and how to provide it."""
    root = os.fspath(builder.data_dir_root)
    return (
        f"TFDS data set {name!r} is not prepared in the data directory "
        f"{root} (looked for {builder.data_dir}), and it cannot be "
        f"downloaded: {reason}. To provide it, run "
        f"`tfds build {name} --data_dir {root}` on a machine with a network "
        f"and copy {os.path.join(root, builder.name)} into the same place "
        "here; or pass `data_dir=` (`--data-dir` in benchmarks/run.py) "
        "pointing at a directory that holds the prepared data; or set "
        "TFDS_DATA_DIR to such a directory."
    )


def download_addresses(builder):
    """The `host:port`s the data set's files are downloaded from."""
    addresses = []
    for url in builder.url_infos or {}:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            port = parts.port or (80 if parts.scheme == "http" else 443)
            address = f"{parts.hostname}:{port}"
            if address not in addresses:
                addresses.append(address)
    return addresses or ["storage.googleapis.com:443"]


def network_available(addresses, timeout):
    """Whether every `host:port` accepts a connection within `timeout` s."""
    answered = set()

    def connect(address):
        host, port = address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError:
            return
        answered.add(address)

    # Threads bound the whole check: a name lookup ignores `timeout`.
    threads = [
        threading.Thread(target=connect, args=(address,), daemon=True)
        for address in addresses
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return answered.issuperset(addresses)


def _paths_under(path):
    if not os.path.exists(path):
        return set()
    paths = {path}
    for directory, subdirectories, files in os.walk(path):
        for entry in subdirectories + files:
            paths.add(os.path.join(directory, entry))
    return paths


@contextlib.contextmanager
def removing_new_files_on_error(root, watched):
    """On an error, removes what appeared in `watched` (and `root` if new)."""
    root_existed = os.path.exists(root)
    before = set().union(*(_paths_under(path) for path in watched))
    try:
        yield
    except BaseException:
        if not root_existed:
            shutil.rmtree(root, ignore_errors=True)
        else:
            new = set().union(*(_paths_under(p) for p in watched)) - before
            # Shortest first: a new directory goes with all it holds.
            for path in sorted(new, key=len):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                elif os.path.lexists(path):
                    os.remove(path)
        raise
