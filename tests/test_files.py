"""Tests of keras_fa.files: a file is written whole or not at all, its mode
follows the umask, and `output_problem` says what keeps a path from being
written without writing anything."""

import os
import stat

import pytest

from keras_fa import files


def _listing(path):
    return sorted(os.listdir(path))


@pytest.mark.parametrize("mode, data", [("w", "new ü"), ("wb", b"\x89new")])
def test_atomic_open_replaces_the_file_whole(tmp_path, mode, data):
    path = tmp_path / "out"
    path.write_bytes(b"old")
    with files.atomic_open(path, mode) as file:
        file.write(data)
        # Until the block ends, readers see the old file.
        assert path.read_bytes() == b"old"
    expected = data.encode("utf-8") if mode == "w" else data
    assert path.read_bytes() == expected
    assert _listing(tmp_path) == ["out"]


def test_atomic_open_leaves_the_old_file_on_error(tmp_path, monkeypatch):
    path = tmp_path / "results.md"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with files.atomic_open(path) as file:
            file.write("half")
            raise RuntimeError("disk full")
    assert _listing(tmp_path) == ["results.md"]
    assert path.read_text() == "old"

    def fail(source, destination):
        raise OSError("rename failed")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="rename failed"):
        files.write_atomic(path, "new")
    assert _listing(tmp_path) == ["results.md"]
    assert path.read_text() == "old"


def test_atomic_open_makes_the_directory_and_refuses_other_modes(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    with files.atomic_open(str(path)) as file:
        file.write("x")
    assert path.read_text() == "x"
    for mode in ("a", "r", "w+", "x"):
        with pytest.raises(ValueError, match="'w' or 'wb'"):
            with files.atomic_open(tmp_path / "other", mode):
                pass
    assert _listing(tmp_path) == ["a"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_the_mode_follows_the_umask(tmp_path, umask):
    # A temporary file of tempfile.mkstemp would be 0600 whatever the umask.
    new, replaced = tmp_path / "new", tmp_path / "replaced"
    replaced.write_text("old")
    os.chmod(replaced, 0o600)
    old = os.umask(umask)
    try:
        files.write_atomic(new, "table\n")
        files.write_atomic(replaced, b"figure")
    finally:
        os.umask(old)
    for path in (new, replaced):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("data", [None, 1.5, ["a"], bytearray(b"a")])
def test_write_atomic_refuses_what_is_not_str_or_bytes(tmp_path, data):
    path = tmp_path / "out"
    path.write_text("old")
    with pytest.raises(TypeError, match="`data` must be str or bytes"):
        files.write_atomic(path, data)
    assert _listing(tmp_path) == ["out"]
    assert path.read_text() == "old"


def test_output_problem_of_files(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    assert files.output_problem(tmp_path / "new.md") is None
    assert files.output_problem(tmp_path / "new" / "deeper" / "x.md") is None
    assert files.output_problem(a_file) is None
    assert files.output_problem(tmp_path) == "it is a directory, not a file"
    assert (
        files.output_problem(a_file / "x.md")
        == f"{a_file} is a file, not a directory"
    )
    assert (
        files.output_problem(a_file / "sub" / "x.md", name="--table")
        == f"{a_file} is a file, not a directory"
    )
    assert files.output_problem(tmp_path, name="--figure") == (
        "--figure is a directory, not a file"
    )
    assert a_file.read_text() == "kept"
    assert _listing(tmp_path) == ["a_file"]


def test_output_problem_of_directories(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("kept")
    assert files.output_problem(tmp_path, directory=True) is None
    assert files.output_problem(tmp_path / "new" / "d", directory=True) is None
    assert (
        files.output_problem(a_file, directory=True)
        == "it is a file, not a directory"
    )
    assert (
        files.output_problem(a_file / "d", directory=True)
        == f"{a_file} is a file, not a directory"
    )
    assert _listing(tmp_path) == ["a_file"]


def test_output_problem_of_what_cannot_be_written(tmp_path, monkeypatch):
    # As a user without write permission sees it (the tests may run as
    # root, who may write anywhere).
    locked = str(tmp_path / "locked")
    os.mkdir(locked)
    inside = os.path.join(locked, "x.md")
    with open(inside, "w") as file:
        file.write("kept")

    def access(path, mode):
        return not os.fspath(path).startswith(locked)

    monkeypatch.setattr(files.os, "access", access)
    assert files.output_problem(inside) == "it is not writable"
    assert files.output_problem(locked, directory=True) == "it is not writable"
    new = os.path.join(locked, "new", "y.md")
    assert files.output_problem(new) == (
        f"{new} cannot be created: {locked} is not writable"
    )
    monkeypatch.setattr(
        files.os, "access", lambda path, mode: os.fspath(path) != locked
    )
    assert files.output_problem(inside) == (
        f"it cannot be replaced: {locked} is not writable"
    )
