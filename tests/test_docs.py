"""README.md and docs/*.md against the repository.

- Links and paths: every relative link and file path names a file that
  exists (and a heading, for a link with an anchor); every docs page is
  linked from the README.
- Commands: every line of every shell block is a command this module
  knows; each names a script that exists and options (and values) its
  parser takes; and each is run, here or by the test named for its
  script in `RUNS`.
- Code: the README's example runs (with fewer epochs), every Python
  block parses, and the README's API table names every export of
  keras_fa and only names that exist.
- Numbers: the tables the pages quote are those of the results files the
  documented commands write.

Running every documented command in full takes hours. Here each is parsed
by its own script's parser (`main([*arguments, "--help"])`: argparse checks
the values of the options it meets and exits at `--help` before any work);
`RUNS` names the test that runs each script, shortened, and `SHORTENED`
the scripts that no other test runs, which run here with a tiny setting.
"""

import ast
import contextlib
import glob
import importlib
import importlib.util
import io
import os
import re
import shlex

import keras
import pytest

import keras_fa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
DOCS = ["README.md"] + PAGES
EXAMPLES = sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, "examples", "*.py"))
)
PYTHONS = ("python", "python3", "python3.11", ".venv/bin/python")
PIPS = ("pip", ".venv/bin/pip")
# Runs the test suite: its arguments are pytest's.
RUNNER = "tests/run_all_backends.py"
SHELL = ("bash", "sh", "shell", "console")
# Languages of the fenced blocks that hold no command.
NOT_SHELL = ("python", "text")

# Script -> (the file that runs it, the call there that runs it). The
# scripts' own tests run each documented script with a short setting (the
# paper's with --quick); .ci/run runs the README's second command in full.
RUNS = {
    "examples/demo.py": ("tests/test_examples.py", "demo.main("),
    "examples/direct_feedback.py": (
        "tests/test_examples.py",
        "direct_feedback.main(",
    ),
    "examples/alignment.py": (
        "tests/test_examples.py",
        "alignment_example.main(",
    ),
    "examples/transformer.py": (
        "tests/test_example_transformer.py",
        "transformer.main(",
    ),
    "examples/keras_hub_lm.py": (
        "tests/test_keras_hub.py",
        "keras_hub_lm.main(",
    ),
    "benchmarks/run.py": ("tests/test_benchmark_run.py", "run.main("),
    "benchmarks/step_time.py": (
        "tests/test_benchmark_step_time.py",
        "step_time.main(",
    ),
    "benchmarks/paper/conservation.py": (
        "tests/test_paper_conservation.py",
        "conservation.main(",
    ),
    "benchmarks/paper/classes.py": (
        "tests/test_paper_classes.py",
        "classes.main(",
    ),
    "benchmarks/paper/label_noise.py": (
        "tests/test_paper_label_noise.py",
        "label_noise.main(",
    ),
    "benchmarks/paper/min_norm.py": (
        "tests/test_paper_min_norm.py",
        "min_norm.main(",
    ),
    RUNNER: (".ci/run", RUNNER),
}
# Script -> the options appended to a documented command of it (the last
# value of an option wins) to run it here in seconds: no other test runs
# these scripts.
SHORTENED = {
    "benchmarks/alignment_cost.py": [
        "--quick",
        "--repeats",
        "1",
        "--models",
        "mlp",
        "--train-models",
        "none",
        "--threads",
        "0",
    ],
    "benchmarks/estimator_time.py": [
        "--rules",
        "fa",
        "--repeats",
        "1",
        "--max-iter",
        "2",
        "--threads",
        "0",
    ],
}


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Overrides conftest's: most tests here build no model, and clearing
    the Keras session costs about a second a test on a busy machine (the
    tests that train clear it themselves)."""
    yield


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as file:
        return file.read()


def _without_code_blocks(text):
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _fenced(text):
    """(language, body) of each fenced code block of `text`."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.DOTALL | re.M)


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


def _link_target_exists(doc, target):
    path, _, anchor = target.partition("#")
    if not path:
        return anchor in _anchors(_read(doc))
    resolved = os.path.join(ROOT, os.path.dirname(doc), path)
    if not (_inside_root(resolved) and os.path.exists(resolved)):
        return False
    if anchor and path.endswith(".md"):
        return anchor in _anchors(_read(os.path.relpath(resolved, ROOT)))
    return True


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_point_to_files_in_the_repository(doc):
    missing = [
        target
        for target in _links(_read(doc))
        # https:, mailto:
        if not re.match(r"[a-z]+:", target)
        and not _link_target_exists(doc, target)
    ]
    assert not missing, f"{doc} links to what is not in the repository"


def test_a_link_to_a_missing_heading_is_caught():
    assert _link_target_exists("docs/alignment.md", "../README.md#usage")
    assert not _link_target_exists("docs/alignment.md", "../README.md#nope")
    assert not _link_target_exists("README.md", "#demo-results")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(target) for target in _links(_read("README.md"))}
    assert PAGES and set(PAGES) <= linked, set(PAGES) - linked


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


def _shell_lines(text):
    """The lines of the shell blocks of `text` (fenced bash blocks and
    indented code blocks), joined across `\\` line ends."""
    lines = []
    for language, body in _fenced(text):
        if language in SHELL:
            lines += body.replace("\\\n", " ").splitlines()
    prose = _without_code_blocks(text).replace("\\\n", " ")
    lines += re.findall(r"^    (\S.*)$", prose, flags=re.M)
    return lines


def _command_lines(text):
    """Shell command lines of `text`: in its shell blocks and in code
    spans, split at `&&`."""
    candidates = _shell_lines(text)
    candidates += re.findall(r"`([^`\n]+)`", _without_code_blocks(text))
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


def _unknown_shell_lines(text):
    """The lines of the shell blocks of `text` that are not commands this
    module checks (python or pip), and the fenced blocks of another
    language than it knows."""
    unknown = [
        f"```{language}"
        for language, _ in _fenced(text)
        if language not in SHELL + NOT_SHELL
    ]
    for line in _shell_lines(text):
        for part in line.split("&&"):
            words = _words(part)
            if part.strip() and not (words and words[0] in PYTHONS + PIPS):
                unknown.append(part.strip())
    return unknown


@pytest.mark.parametrize("doc", DOCS)
def test_every_shell_line_is_a_command_checked_here(doc):
    assert _unknown_shell_lines(_read(doc)) == []


def test_an_unknown_shell_line_is_caught():
    text = (
        "```bash\npython a.py  # ok\ntfds build mnist\n```\n"
        "```\nplain\n```\n\n    make all\n"
    )
    assert _unknown_shell_lines(text) == ["```", "tfds build mnist", "make all"]


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
PYTHON_COMMANDS = [
    (doc, words)
    for doc, words in COMMANDS
    if words[0] in PYTHONS and words[1:3] != ["-m", "venv"]
]


def _ids(commands):
    return [f"{doc}: {' '.join(words)}"[:90] for doc, words in commands]


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
        "python benchmarks/alignment_cost.py --probe 128 --repeats 3",
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


@pytest.mark.parametrize("doc, words", COMMANDS, ids=_ids(COMMANDS))
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
    # The requirements files are installed by .ci/run (the README's
    # commands); an extra is checked against setup.py.
    setup = _read("setup.py")
    for index, word in enumerate(words):
        if words[index - 1] == "-r":
            assert os.path.isfile(os.path.join(ROOT, word)), word
        for extra in re.findall(r"^(?:\.|keras_fa)\[(\w+)\]$", word):
            assert extra == "all" or f'"{extra}"' in setup, word


@pytest.mark.parametrize(
    "doc, words", PYTHON_COMMANDS, ids=_ids(PYTHON_COMMANDS)
)
def test_documented_command_is_run_by_a_test(doc, words):
    path, _ = _script(words)
    assert path in RUNS or path in SHORTENED, (
        f"{doc}: nothing runs {path}: add it to RUNS (the test that runs "
        "it) or SHORTENED (run here)"
    )


@pytest.mark.parametrize("script", sorted(RUNS))
def test_the_test_named_for_a_script_runs_it(script):
    runner, call = RUNS[script]
    assert call in _read(runner), f"{runner} does not call {call}"


SHORT_COMMANDS = [
    (doc, words)
    for doc, words in PYTHON_COMMANDS
    if _script(words)[0] in SHORTENED
]


@pytest.mark.parametrize("doc, words", SHORT_COMMANDS, ids=_ids(SHORT_COMMANDS))
def test_documented_command_runs_shortened(doc, words, tmp_path, capsys):
    path, arguments = _script(words)
    output = str(tmp_path / "{backend}.md")
    keras.backend.clear_session()
    _module(path).main([*arguments, *SHORTENED[path], "--output", output])
    written = glob.glob(str(tmp_path / "*.md"))
    # Its tables, written and printed.
    assert len(written) == 1 and "\n| " in _read(written[0])
    assert "\n| " in capsys.readouterr().out


def test_a_wrong_command_would_be_caught():
    demo = _module("examples/demo.py")
    code, _, err = _help(demo, ["--epochs", "0"])
    assert code == 2 and "--epochs" in err
    code, out, _ = _help(demo, ["--nope"])
    assert code == 0 and "--nope" not in out and "--epochs" in out


# ------------------------------------------------------------------ code


def test_the_readme_example_runs_with_fewer_epochs():
    # The Usage example, as printed, but with 1 epoch instead of 100; its
    # last line's value (the alignment measures) is checked.
    blocks = _fenced(_read("README.md"))
    code = next(body for lang, body in blocks if lang == "python")
    assert code.count("epochs=100") == 1
    tree = ast.parse(code.replace("epochs=100", "epochs=1"))
    last = tree.body.pop()
    assert isinstance(last, ast.Expr)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    namespace = {}
    exec(compile(tree, "README.md", "exec"), namespace)
    value = eval(
        compile(ast.Expression(last.value), "README.md", "eval"), namespace
    )
    assert int(namespace["model"].optimizer.iterations) == 40
    angles = [v for k, v in value.items() if k.endswith("/update_angle")]
    assert len(angles) == 3 and 0 < angles[0] < 90, value


@pytest.mark.parametrize("doc", DOCS)
def test_python_blocks_parse(doc):
    for language, body in _fenced(_read(doc)):
        if language == "python":
            ast.parse(body)


def _api_names():
    """The names of the first column of the README's API table, with
    `.x` after `a.b` read as `a.x`."""
    _, *rows = _table_after(_read("README.md"), "| name | what it is |")
    names = []
    for row in rows:
        prefix = ""
        for span in re.findall(r"`([^`]+)`", row[0]):
            name = re.match(r"[\w.]*", span).group()
            if not re.search(r"\w", name):  # `...`
                continue
            if name.startswith("."):
                name = prefix + name
            prefix = name.rpartition(".")[0]
            names.append(name)
    return names


def _resolve(name):
    """The object `keras_fa.<name>`, importing submodules on the way."""
    value, module = keras_fa, "keras_fa"
    for part in name.split("."):
        module = f"{module}.{part}"
        try:
            value = getattr(value, part)
        except AttributeError:
            value = importlib.import_module(module)
    return value


def test_the_api_table_is_complete_and_names_what_exists():
    names = _api_names()
    assert "alignment.meter" in names and "files.atomic_open" in names
    missing = set(keras_fa.__all__) - {name.split(".")[0] for name in names}
    assert not missing, f"the README's API table lacks {sorted(missing)}"
    wrong = []
    for name in names:
        try:
            _resolve(name)
        except (AttributeError, ImportError):
            wrong.append(name)
    assert not wrong, f"the README's API table names what is not: {wrong}"


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


def test_direct_feedback_page_quotes_its_results_file():
    page = _read("docs/direct_feedback.md")
    results = _read("benchmarks/results/direct_feedback.md")
    # The file was written by the command the page documents, on jax.
    assert results.startswith(f"# `{DIRECT_COMMAND}`\n")
    assert f"    {DIRECT_COMMAND}\n" in page
    written = {
        key: float(cells[0])
        for key, cells in _results(results, 2).items()
        if key[0] in ("cnn", "functional mlp")
    }
    assert len(written) == 7
    header, *rows = _table_after(page, DIRECT_COMMAND)
    quoted = {}
    for row in rows:
        model = row[0].split(" (")[0]
        for rule, cell in zip(header[1:], row[1:]):
            if cell:
                quoted[(model, rule)] = float(cell)
    assert quoted == written


def test_transformers_page_quotes_its_results_file():
    page = _read("docs/transformers.md")
    results = _read("benchmarks/results/transformer_example.md")
    # The results file names the command that wrote it: the page's.
    command = results.split("\n", 1)[0].removeprefix("# `").removesuffix("`")
    assert command.startswith("KERAS_BACKEND=jax python examples/")
    assert f"    {command}\n" in page
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
    header, *rows = _table_after(page, "| rule | MNIST-1D accuracy")
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


def test_demo_results_page_quotes_the_demo_results_files():
    page = _read("docs/demo_results.md")
    header, *rows = _table_after(page, "| rule | test accuracy, tensorflow")
    assert header[1:4] == [f"test accuracy, {b}" for b in DEMO_BACKENDS]
    for backend, column in zip(DEMO_BACKENDS, (1, 2, 3)):
        path = f"benchmarks/results/demo_{backend}.md"
        command = (
            f"KERAS_BACKEND={backend} python examples/demo.py --output {path}"
        )
        assert f"    {command}\n" in page
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


def test_benchmarks_page_quotes_the_offline_benchmark_summaries():
    page = _read("docs/benchmarks.md")
    quoted = [
        line
        for line in page.splitlines()
        if re.match(r"\| (digits|mnist1d) \| ", line)
    ]
    written = set()
    for dataset in ("digits", "mnist1d"):
        command = (
            f"python -m benchmarks.run --dataset {dataset} --model mlp,lenet "
            f"--seeds 3 --output benchmarks/results/offline/{dataset}"
        )
        assert command in page
        summary = _read(f"benchmarks/results/offline/{dataset}/summary.md")
        written |= set(summary.splitlines())
    assert len(quoted) == 40
    assert [line for line in quoted if line not in written] == []
