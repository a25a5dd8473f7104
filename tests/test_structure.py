"""The package's shape: short functions, few private reads, no import
cycles, tests that mirror the modules (measured by tests/structure.py)."""

import ast
import os
import textwrap

import pytest

from tests import structure


@pytest.fixture(scope="module")
def numbers():
    return structure.measure()


def test_no_long_function_without_a_reason(numbers):
    unexplained = [
        f"{f['function']} ({f['lines']} lines)"
        for f in numbers["long_functions"]
        if not f["reason"]
    ]
    assert not unexplained, (
        f"functions over {structure.LONG_FUNCTION} lines: split them, or "
        "write `# long: <reason>` above the def: " + ", ".join(unexplained)
    )


def test_every_private_read_of_another_library_is_commented(numbers):
    bare = [
        f"{r['module']}:{r['line']} {r['attribute']}"
        for r in numbers["private_reads"]
        if not r["commented"]
    ]
    assert not bare, "say why, in a comment, or use a public API: " + str(bare)


def test_no_module_imports_one_that_imports_it_back(numbers):
    assert numbers["cycles_top_level"] == []
    assert numbers["mutual_imports"] == []


def test_callbacks_do_not_import_the_training_loop(numbers):
    assert "keras_fa.training" not in numbers["edges"]["keras_fa.callbacks"]


def test_only_the_backend_syncs_jax_state():
    for module, path in structure.source_files():
        if module.startswith("keras_fa.backend"):
            continue
        with open(path, encoding="utf-8") as f:
            assert "jax_state_sync" not in f.read(), module


def _test_modules():
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(
        name[:-3]
        for name in os.listdir(here)
        if name.startswith("test_") and name.endswith(".py")
    )


def test_no_test_module_imports_another():
    here = os.path.dirname(os.path.abspath(__file__))
    test_modules = set(_test_modules())
    offenders = []
    for name in sorted(test_modules):
        path = os.path.join(here, f"{name}.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module] + [
                    f"{node.module}.{a.name}" for a in node.names
                ]
            elif isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            else:
                continue
            for full in imported:
                last = full.rsplit(".", 1)[-1]
                if full.startswith("tests") and last in test_modules:
                    offenders.append(f"{name} imports {full}")
    assert not offenders, offenders


# -- the measuring itself ----------------------------------------------------


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_function_lengths_and_reasons(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    path = _write(
        tmp_path,
        "m.py",
        f"def short():\n    return 1\n\n\n# long: a table\n"
        f"def explained():\n{body}\n\n\ndef unexplained():\n{body}\n",
    )
    tree, lines = structure.parse(path)
    found = {
        name: (
            structure.function_length(node),
            structure.long_reason(node, lines),
        )
        for name, node in structure.functions(tree)
    }
    assert found["short"] == (2, None)
    assert found["explained"] == (71, "a table")
    assert found["unexplained"] == (71, None)


def test_private_reads_of_other_libraries_are_found(tmp_path):
    path = _write(
        tmp_path,
        "m.py",
        """
        class A:
            def __init__(self):
                self._own = 1

            def f(self, layer):
                a = self._own
                b = layer._inbound_nodes
                # Keras keeps it private.
                c = layer._keras_history
                return getattr(layer, "_tracker", None), a, b, c
        """,
    )
    reads = structure.foreign_private_reads([("m", path)])
    assert sorted((a, c) for _, _, a, c in reads) == [
        ("_inbound_nodes", False),
        ("_keras_history", True),
        ("_tracker", False),
    ]


def test_import_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert structure.cycles(edges) == [["a", "b", "c"]]
    assert structure.mutual_imports({"a": {"b"}, "b": {"a"}}) == [("a", "b")]
    # A package and its own submodule may import each other.
    assert structure.mutual_imports({"p": {"p.m"}, "p.m": {"p"}}, {"p"}) == []
