"""README.md and docs/*.md against the repository: every relative link and
file path names a file that exists, every command names a script that
exists and options (and values) its parser takes, and the numbers the
README quotes are those of the results files the documented commands
write.

Running every documented command in full takes hours; here each is parsed
by its own script's parser (`main([*arguments, "--help"])`: argparse checks
the values of the options it meets and exits at `--help` before any work).
The commands themselves run, shortened, in the scripts' own tests
(tests/test_examples.py, test_example_transformer.py, test_keras_hub.py,
test_benchmark_run.py, test_benchmark_step_time.py, test_paper_*.py).
"""

import contextlib
import glob
import importlib
import importlib.util
import io
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
EXAMPLES = sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, "examples", "*.py"))
)
PYTHONS = ("python", "python3", "python3.11", ".venv/bin/python")
PIPS = ("pip", ".venv/bin/pip")
# Runs the test suite: its arguments are pytest's.
RUNNER = "tests/run_all_backends.py"


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Overrides conftest's: nothing here builds a model, and clearing the
    Keras session costs about a second a test on a busy machine."""
    yield


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as file:
        return file.read()


def _without_code_blocks(text):
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


# ----------------------------------------------------------------- links


def _links(text):
    """Targets of the Markdown links and images of `text`, outside code."""
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _without_code_blocks(text))


def _anchors(text):
    """GitHub's anchors of the headings of `text`."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", _without_code_blocks(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        anchors.add(slug.replace(" ", "-"))
    return anchors


def _inside_root(path):
    path = os.path.normpath(path)
    return path == ROOT or path.startswith(ROOT + os.sep)


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_point_to_files_in_the_repository(doc):
    text = _read(doc)
    missing = []
    for target in _links(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in _anchors(text):
                missing.append(target)
            continue
        resolved = os.path.join(ROOT, os.path.dirname(doc), path)
        if not (_inside_root(resolved) and os.path.exists(resolved)):
            missing.append(target)
    assert not missing, f"{doc} links to what is not in the repository"


def _paths(text):
    """The file paths written in code spans of `text`: spans that start at
    a directory of the repository or at `..`, or name a file in one."""
    tops = {
        name
        for name in os.listdir(ROOT)
        if os.path.isdir(os.path.join(ROOT, name)) and not name.startswith(".")
    }
    paths = []
    for span in re.findall(r"`([^`\n]+)`", _without_code_blocks(text)):
        if " " in span or "<" in span or "/" not in span:
            continue
        first = span.split("/")[0]
        if first in tops or first in ("..", "."):
            paths.append(span)
    return paths


def test_paths_are_found_in_code_spans():
    text = "see `../shared/paper.md`, `docs/x.md` and `a/b` or `fa/kp`"
    assert _paths(text) == ["../shared/paper.md", "docs/x.md"]


@pytest.mark.parametrize("doc", DOCS)
def test_file_paths_in_the_text_exist(doc):
    # Paths in prose are read from the repository's root, as the commands
    # beside them run there; `*` is a glob that must match.
    missing = []
    for span in _paths(_read(doc)):
        resolved = os.path.join(ROOT, span)
        found = glob.glob(resolved) if "*" in span else [resolved]
        if not (_inside_root(resolved) and any(map(os.path.exists, found))):
            missing.append(span)
    assert not missing, f"{doc} names files that are not in the repository"


# -------------------------------------------------------------- commands


def _command_lines(text):
    """Shell command lines of `text`: in fenced and indented code blocks
    and in code spans, joined across `\\` line ends, split at `&&`."""
    candidates = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
        candidates += block.replace("\\\n", " ").splitlines()
    prose = _without_code_blocks(text).replace("\\\n", " ")
    candidates += re.findall(r"^    (\S.*)$", prose, flags=re.M)
    candidates += re.findall(r"`([^`\n]+)`", prose)
    commands = []
    for line in candidates:
        for part in line.split("&&"):
            words = _words(part)
            if words and words[0] in PYTHONS + PIPS:
                commands.append(words)
    return commands


def _words(command):
    """The words of `command` without its comment, its `VAR=value`
    settings and the brackets around optional options."""
    command = re.sub(r"\[(--[^\]]*)\]", r"\1", command)
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    return words


def _documented_commands():
    """(where, words) of each distinct command of the docs and of the
    examples' docstrings."""
    commands = {}
    for doc in DOCS:
        for words in _command_lines(_read(doc)):
            commands.setdefault(tuple(words), doc)
    for example in EXAMPLES:
        module = _read(example)
        docstring = re.match(r'r?"""(.*?)"""', module, flags=re.DOTALL)
        for words in _command_lines(docstring.group(1)):
            commands.setdefault(tuple(words), example)
    return [(doc, list(words)) for words, doc in commands.items()]


COMMANDS = _documented_commands()


def test_the_documented_commands_are_found():
    found = {" ".join(words) for _, words in COMMANDS}
    for command in (
        ".venv/bin/python examples/demo.py",
        "python -m benchmarks.run --dataset mnist1d --model mlp,lenet "
        "--seeds 3",
        "python -m benchmarks.paper.min_norm",
        "python benchmarks/step_time.py --repeats 31",
        ".venv/bin/pip install --no-deps -r requirements-hub.txt",
        "python examples/direct_feedback.py --output "
        "benchmarks/results/direct_feedback.md",
    ):
        assert command in found
    assert _words("KERAS_BACKEND=jax python x.py [--a] [--b 1]  # c") == [
        "python",
        "x.py",
        "--a",
        "--b",
        "1",
    ]


def _script(words):
    """(path of the script, its arguments) of a python command."""
    if words[1] == "-m":
        return words[2].replace(".", "/") + ".py", words[3:]
    return words[1], words[2:]


def _module(path):
    """Imports the script at `path` (a path from the root), keeping the
    environment as it was (the examples set OMP_NUM_THREADS)."""
    environment = dict(os.environ)
    try:
        if path.startswith(("benchmarks/", "keras_fa/")):
            return importlib.import_module(path[:-3].replace("/", "."))
        name = "_documented_" + re.sub(r"\W", "_", path[:-3])
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(ROOT, path)
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        os.environ.clear()
        os.environ.update(environment)


def _help(module, arguments):
    """`module.main([*arguments, "--help"])`: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as exit:
            module.main([*arguments, "--help"])
    return exit.value.code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    "doc, words",
    COMMANDS,
    ids=[f"{doc}: {' '.join(words)}"[:90] for doc, words in COMMANDS],
)
def test_documented_command_names_a_script_and_options_it_takes(doc, words):
    if words[0] in PIPS:
        _check_pip(words)
        return
    if words[1:3] == ["-m", "venv"]:
        return
    path, arguments = _script(words)
    assert os.path.isfile(os.path.join(ROOT, path)), f"{doc}: no {path}"
    if path == RUNNER:
        return
    module = _module(path)
    code, out, err = _help(module, arguments)
    # The values parse: argparse stops at a bad one with exit code 2.
    assert code == 0, err
    taken = set(re.findall(r"(?<![\w-])--[\w-]+", out))
    options = {word.split("=")[0] for word in arguments if word[:2] == "--"}
    assert options <= taken, f"{path} does not take {options - taken}"


def _check_pip(words):
    setup = _read("setup.py")
    for index, word in enumerate(words):
        if words[index - 1] == "-r":
            assert os.path.isfile(os.path.join(ROOT, word)), word
        for extra in re.findall(r"^(?:\.|keras_fa)\[(\w+)\]$", word):
            assert extra == "all" or f'"{extra}"' in setup, word


# ------------------------------------------------------- quoted numbers


def _table_after(text, marker):
    """The rows (lists of cells) of the first Markdown table after
    `marker` in `text`, header row first."""
    start = text.index(marker)
    rows = []
    for line in text[start:].splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return [row for row in rows if not set("".join(row)) <= set("-:")]


def _results(text, key_columns=1):
    """{key: [cells...]} of every table row of a results file."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows.setdefault(tuple(cells[:key_columns]), cells[key_columns:])
    return rows


DIRECT_COMMAND = (
    "KERAS_BACKEND=jax python examples/direct_feedback.py "
    "--output benchmarks/results/direct_feedback.md"
)


def test_readme_quotes_the_direct_feedback_results_file():
    readme = _read("README.md")
    results = _read("benchmarks/results/direct_feedback.md")
    # The file was written by the command the README documents, on jax.
    assert results.startswith(f"# `{DIRECT_COMMAND}`\n")
    assert f"    {DIRECT_COMMAND}\n" in readme
    written = {
        key: float(cells[0])
        for key, cells in _results(results, 2).items()
        if key[0] in ("cnn", "functional mlp")
    }
    assert len(written) == 7
    header, *rows = _table_after(readme, DIRECT_COMMAND)
    quoted = {}
    for row in rows:
        model = row[0].split(" (")[0]
        for rule, cell in zip(header[1:], row[1:]):
            if cell:
                quoted[(model, rule)] = float(cell)
    assert quoted == written


def test_readme_quotes_the_transformer_results_file():
    readme = _read("README.md")
    results = _read("benchmarks/results/transformer_example.md")
    assert results.startswith("# `python examples/transformer.py`\n")
    assert "backend jax" in results
    tasks = {}
    for chunk in results.split("\n\n"):
        task = chunk.split(":")[0]
        if task in ("mnist1d", "digits", "lm"):
            tasks[task] = {}
        elif chunk.startswith("| rule"):
            rows = _results(chunk)
            rows.pop(("rule",))
            tasks[list(tasks)[-1]] = rows
    header, *rows = _table_after(readme, "| rule | MNIST-1D accuracy")
    assert header[:4] == [
        "rule",
        "MNIST-1D accuracy",
        "digits accuracy",
        "LM test perplexity",
    ]
    assert len(rows) == len(tasks["digits"])
    for rule, mnist1d, digits, perplexity, angles in rows:
        key = (rule,)
        assert mnist1d == tasks["mnist1d"][key][0]
        assert digits == tasks["digits"][key][0]
        assert perplexity == tasks["lm"].get(key, [""])[0]
        written = tasks["digits"][key][1:3]
        if angles == "-":
            assert written == ["n/a", "n/a"]
        else:
            assert [float(a) for a in angles.split(" / ")] == [
                round(float(a)) for a in written
            ]


DEMO_BACKENDS = ("tensorflow", "jax", "torch")


def test_readme_quotes_the_demo_results_files():
    readme = _read("README.md")
    header, *rows = _table_after(readme, "| rule | test accuracy, tensorflow")
    assert header[1:4] == [f"test accuracy, {b}" for b in DEMO_BACKENDS]
    for backend, column in zip(DEMO_BACKENDS, (1, 2, 3)):
        path = f"benchmarks/results/demo_{backend}.md"
        command = (
            f"KERAS_BACKEND={backend} python examples/demo.py --output {path}"
        )
        assert f"    {command}\n" in readme
        results = _read(path)
        assert results.startswith(f"# `{command}`\n")
        written = _results(results)
        written.pop(("rule",))
        assert [row[0] for row in rows] == [key[0] for key in written]
        for row in rows:
            accuracy, angle = written[(row[0],)][:2]
            assert row[column] == accuracy
            if backend == "tensorflow":
                assert row[4] == angle


def test_a_wrong_command_would_be_caught():
    demo = _module("examples/demo.py")
    code, _, err = _help(demo, ["--epochs", "0"])
    assert code == 2 and "--epochs" in err
    code, out, _ = _help(demo, ["--nope"])
    assert code == 0 and "--nope" not in out and "--epochs" in out


def test_readme_quotes_the_offline_benchmark_summaries():
    readme = _read("README.md")
    quoted = [
        line
        for line in readme.splitlines()
        if re.match(r"\| (digits|mnist1d) \| ", line)
    ]
    written = set()
    for dataset in ("digits", "mnist1d"):
        command = (
            f"python -m benchmarks.run --dataset {dataset} --model mlp,lenet "
            f"--seeds 3 --output benchmarks/results/offline/{dataset}"
        )
        assert command in readme
        summary = _read(f"benchmarks/results/offline/{dataset}/summary.md")
        written |= set(summary.splitlines())
    assert len(quoted) == 40
    assert [line for line in quoted if line not in written] == []
