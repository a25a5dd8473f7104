"""The estimators' imports: scikit-learn is optional, and on jax and torch
the estimators do not load tensorflow.
"""

import os
import subprocess
import sys

import keras
import pytest

BACKEND = keras.backend.backend()


def test_scikit_learn_is_optional():
    """Without scikit-learn, keras_fa imports and only the estimators fail,
    with an error that says what to install."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None\n"
        "import keras_fa\n"
        "keras_fa.FADense(3)\n"
        "try:\n"
        "    keras_fa.FAClassifier\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "needs scikit-learn" in result.stdout
    assert "keras_fa[sklearn]" in result.stdout


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_does_not_load_tensorflow(backend):
    """On jax and torch, importing keras_fa (and fitting, predicting and
    pickling an estimator) does not import tensorflow."""
    code = (
        "import sys, pickle, warnings\n"
        "import numpy as np\n"
        "import keras_fa\n"
        "from keras_fa import FAClassifier\n"
        "import keras\n"
        "print(keras.backend.backend())\n"
        "print('tensorflow' in sys.modules)\n"
        "warnings.simplefilter('ignore')\n"
        "X = np.random.RandomState(0).rand(20, 3)\n"
        "y = np.arange(20) % 2\n"
        "c = FAClassifier((4,), max_iter=2).fit(X, y)\n"
        "pickle.loads(pickle.dumps(c)).predict(X)\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [backend, "False", "False"], result.stdout
