"""Measures the shape of the keras_fa package (not a test module).

    python tests/structure.py            # report
    python tests/structure.py --json     # the same numbers as JSON

Reports the function-length distribution, functions longer than
`LONG_FUNCTION` lines (and whether a `# long: <reason>` comment stands on
the line above their `def`), reads of private attributes that keras_fa does
not define itself (so: private attributes of Keras or of a backend library),
imports of `keras.src`, and the import graph between keras_fa modules with
its cycles. `tests/test_structure.py` holds the package to these numbers.
"""

import argparse
import ast
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "keras_fa"
LONG_FUNCTION = 60
LENGTH_BUCKETS = (10, 20, 40, 60, 100)


def source_files(package=PACKAGE):
    """Yields (module name, path) for every .py file of `package`."""
    top = os.path.join(ROOT, package)
    for directory, _, names in sorted(os.walk(top)):
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def parse(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return ast.parse(text, filename=path), text.splitlines()


def functions(tree):
    """Yields (qualified name, node) for every function, nested included."""

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def function_length(node):
    """Lines from the `def` to the last line, docstring included."""
    return node.end_lineno - node.lineno + 1


def long_reason(node, lines):
    """The `# long: ...` comment just above the def or its decorators."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    index = first - 2
    while index >= 0 and lines[index].strip().startswith("#"):
        text = lines[index].strip()
        if text.startswith("# long:"):
            return text[len("# long:") :].strip()
        index -= 1
    return None


def defined_private_names(files):
    """Every `_name` keras_fa defines: defs, classes, assignments, args."""
    names = set()
    for _, path in files:
        tree, _ = parse(path)
        for node in ast.walk(tree):
            if isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(
                node.ctx, ast.Store
            ):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Call):
                # setattr(obj, "_name", ...) and object.__setattr__.
                func = node.func
                called = getattr(func, "id", getattr(func, "attr", ""))
                if called in ("setattr", "__setattr__") and len(node.args) > 1:
                    arg = node.args[1]
                    if isinstance(arg, ast.Constant) and isinstance(
                        arg.value, str
                    ):
                        names.add(arg.value)
    return {n for n in names if n.startswith("_")}


def foreign_private_reads(files):
    """(module, line, attribute, commented) for private attributes read.

    A read is `obj._name` or `getattr(obj, "_name"...)` where keras_fa
    defines no `_name` itself, dunder names excluded. `commented` says
    whether a comment stands on that line or the line above it.
    """
    own = defined_private_names(files)
    reads = []
    for module, path in files:
        tree, lines = parse(path)
        for node in ast.walk(tree):
            attr = None
            if isinstance(node, ast.Attribute) and isinstance(
                node.ctx, ast.Load
            ):
                attr = node.attr
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("getattr", "hasattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                attr = node.args[1].value
            if (
                attr is None
                or not attr.startswith("_")
                or attr.startswith("__")
                or attr in own
            ):
                continue
            line = node.lineno
            here = lines[line - 1]
            above = lines[line - 2].strip() if line > 1 else ""
            commented = "#" in here or above.startswith("#")
            reads.append((module, line, attr, commented))
    return reads


def keras_src_imports(files):
    """(module, line, name) for every import of keras.src."""
    found = []
    for module, path in files:
        tree, _ = parse(path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "keras.src" or name.startswith("keras.src."):
                    found.append((module, node.lineno, name))
    return found


def _resolve(module, node, is_package):
    """The absolute module an ImportFrom names."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    if node.module:
        parts.append(node.module)
    return ".".join(parts)


def import_edges(files, top_level_only):
    """{module: set of keras_fa modules it imports}."""
    modules = {module for module, _ in files}
    packages = {
        module for module, path in files if path.endswith("__init__.py")
    }

    def known(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for module, path in files:
        tree, _ = parse(path)
        nodes = tree.body if top_level_only else ast.walk(tree)
        targets = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE):
                        targets.add(known(alias.name))
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node, module in packages)
                if not base.startswith(PACKAGE):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else known(base))
        targets.discard(None)
        targets.discard(module)
        edges[module] = targets
    return edges


def cycles(edges):
    """Strongly connected components with more than one module."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def connect(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return sorted(result)


def _is_package_init(module, packages):
    return module in packages


def mutual_imports(edges, packages=()):
    """Pairs (a, b) where a imports b and b imports a.

    A package's `__init__` re-exporting its submodules, which import
    siblings through the package, is how Python packages work; pairs
    between a package and its own submodule are left out.
    """
    pairs = set()
    for a, targets in edges.items():
        for b in targets:
            if a in edges.get(b, ()) and a < b:
                if (a in packages and b.startswith(a + ".")) or (
                    b in packages and a.startswith(b + ".")
                ):
                    continue
                pairs.add((a, b))
    return sorted(pairs)


def measure(package=PACKAGE):
    """All the numbers, as a dict."""
    files = list(source_files(package))
    packages = {m for m, p in files if p.endswith("__init__.py")}
    lengths, long_functions = [], []
    for module, path in files:
        tree, lines = parse(path)
        for name, node in functions(tree):
            length = function_length(node)
            lengths.append(length)
            if length > LONG_FUNCTION:
                long_functions.append(
                    {
                        "function": f"{module}.{name}",
                        "lines": length,
                        "reason": long_reason(node, lines),
                    }
                )
    buckets = {}
    previous = 0
    for bound in LENGTH_BUCKETS:
        buckets[f"{previous + 1}-{bound}"] = sum(
            previous < n <= bound for n in lengths
        )
        previous = bound
    buckets[f">{previous}"] = sum(n > previous for n in lengths)
    top = import_edges(files, top_level_only=True)
    every = import_edges(files, top_level_only=False)
    reads = foreign_private_reads(files)
    lines_per_module = {
        module: sum(1 for _ in open(path, encoding="utf-8"))
        for module, path in files
    }
    return {
        "modules": len(files),
        "lines": sum(lines_per_module.values()),
        "largest_modules": sorted(
            lines_per_module.items(), key=lambda kv: -kv[1]
        )[:8],
        "functions": len(lengths),
        "length_buckets": buckets,
        "median_length": sorted(lengths)[len(lengths) // 2],
        "long_functions": sorted(long_functions, key=lambda f: -f["lines"]),
        "private_reads": [
            {"module": m, "line": n, "attribute": a, "commented": c}
            for m, n, a, c in reads
        ],
        "keras_src_imports": [
            {"module": m, "line": n, "name": name}
            for m, n, name in keras_src_imports(files)
        ],
        "import_edges_top_level": sum(len(t) for t in top.values()),
        "import_edges_all": sum(len(t) for t in every.values()),
        "cycles_top_level": cycles(top),
        "mutual_imports": mutual_imports(every, packages),
        "edges": {m: sorted(t) for m, t in every.items()},
    }


def report(numbers):
    out = [
        f"{numbers['modules']} modules, {numbers['lines']} lines, "
        f"{numbers['functions']} functions "
        f"(median {numbers['median_length']} lines)",
        "function lengths: "
        + ", ".join(f"{k}: {v}" for k, v in numbers["length_buckets"].items()),
        "largest modules: "
        + ", ".join(f"{m} {n}" for m, n in numbers["largest_modules"]),
        f"functions over {LONG_FUNCTION} lines: "
        f"{len(numbers['long_functions'])}",
    ]
    for f in numbers["long_functions"]:
        reason = f["reason"] or "NO REASON GIVEN"
        out.append(f"  {f['lines']:4d}  {f['function']}  ({reason})")
    reads = numbers["private_reads"]
    out.append(
        f"private attributes of other libraries read: {len(reads)} "
        f"({len({r['attribute'] for r in reads})} distinct, "
        f"{sum(not r['commented'] for r in reads)} without a comment)"
    )
    for r in reads:
        mark = "" if r["commented"] else "  NO COMMENT"
        out.append(f"  {r['module']}:{r['line']} {r['attribute']}{mark}")
    out.append(f"keras.src imports: {len(numbers['keras_src_imports'])}")
    for r in numbers["keras_src_imports"]:
        out.append(f"  {r['module']}:{r['line']} {r['name']}")
    out.append(
        f"import edges: {numbers['import_edges_top_level']} at module level, "
        f"{numbers['import_edges_all']} counting imports inside functions"
    )
    out.append(f"cycles at module level: {numbers['cycles_top_level']}")
    out.append(
        "modules importing each other (any level): "
        f"{numbers['mutual_imports']}"
    )
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    numbers = measure()
    if args.json:
        print(json.dumps(numbers, indent=1))
    else:
        print(report(numbers))


if __name__ == "__main__":
    main()
