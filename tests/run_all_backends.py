"""Lint, then run the test suite once per Keras backend.

    python tests/run_all_backends.py           # ruff; tensorflow, jax, torch
    python tests/run_all_backends.py -x -k fa  # extra arguments go to pytest
    python tests/run_all_backends.py -n 0      # one process (default: 2)

Keras picks its backend when it is first imported, so each backend gets its
own pytest process with `KERAS_BACKEND` set. Exits non-zero if the lint or any
backend fails.
"""

import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")


def run(command, env=None):
    """Runs `command` in the repository root; returns (exit code, seconds)."""
    print(f"\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(command, cwd=ROOT, env=env)
    return code, time.perf_counter() - start


def main(pytest_args):
    results = []
    code, seconds = run([sys.executable, "-m", "ruff", "check", "."])
    results.append(("ruff check", code, seconds))
    # jax: a compilation cache shared by the workers of this run, so that
    # the many tests building the same small models compile each once
    # (about 7% of the jax run).
    cache = tempfile.mkdtemp(prefix="keras_fa_jax_cache_")
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend}
        if backend == "jax":
            env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
            env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        command = [sys.executable, "-m", "pytest", "tests", *pytest_args]
        if not any(
            arg.startswith(("-n", "--numprocesses")) for arg in pytest_args
        ):
            # Two workers (pytest-xdist): the suite is compile-bound, and a
            # second process overlaps it (jax 330 s -> 210 s on 2 cores).
            command += ["-n", "2"]
        code, seconds = run(command, env=env)
        results.append((f"pytest, {backend}", code, seconds))

    print("\n===== summary =====")
    for name, code, seconds in results:
        # pytest exits 5 when no test was collected: that is a failure here.
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name:<20} {status:<18} {seconds:7.1f} s")
    failed = [name for name, code, _ in results if code != 0]
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
