"""Packaging of keras_fa.

`pip install keras_fa[tensorflow]` (or `[jax]`, `[torch]`) brings a backend;
`[data]` the offline data sets; `[sklearn]` what FAClassifier and
FARegressor need; `[all]` everything. The pinned set this
project is tested with is in requirements.txt.
"""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent


def read_version():
    text = (HERE / "keras_fa" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("No __version__ in keras_fa/__init__.py")
    return match.group(1)


def read_readme():
    readme = HERE / "README.md"
    return readme.read_text(encoding="utf-8") if readme.exists() else ""


BACKENDS = {
    "tensorflow": ["tensorflow>=2.16"],
    "jax": ["jax>=0.4.30"],
    "torch": ["torch>=2.1"],
}
DATA = [
    "tensorflow-datasets",
    # tensorflow-datasets imports it on Python 3.11 without declaring it.
    "importlib_resources",
    "mnist1d",
    "scikit-learn",
]
TEST = [
    "pytest",
    "pytest-xdist",
    "ruff",
    "scikit-learn",
    "mnist1d",
    "tensorflow-datasets",
    "importlib_resources",
    "matplotlib",
    # Keras's TensorBoard callback writes through it; tensorflow-cpu does
    # not install it.
    "tensorboard",
]
PLOTS = ["matplotlib"]
# KerasHub models (GPT-2, BERT...) converted by keras_fa; it needs keras 3.15.
# With tensorflow-cpu, install it as requirements-hub.txt says (--no-deps).
HUB = ["keras-hub>=0.32", "keras>=3.15"]
SKLEARN = ["scikit-learn>=1.6"]
EXTRAS = {
    **BACKENDS,
    "data": DATA,
    "hub": HUB,
    "plots": PLOTS,
    "sklearn": SKLEARN,
    "test": TEST,
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setuptools.setup(
    name="keras_fa",
    version=read_version(),
    description="Feedback-alignment learning rules as Keras 3 layers.",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["keras_fa", "keras_fa.*"]),
    python_requires=">=3.10",
    install_requires=["keras>=3.10", "numpy"],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
