"""Classification data sets for benchmarks: offline arrays and TFDS tasks.

`load(name)` returns a `Task`: a data set with its shapes, classes and sizes,
whose `train` and `test` methods give batched `tf.data` pipelines that feed
`model.fit` on every Keras backend. It covers the TFDS image sets in
`TFDS_DATASETS`, read from a TFDS data directory, and the two sets in
`OFFLINE_DATASETS`, which need no network and no files.

`load_digits` and `load_mnist1d` return NumPy arrays in the layout of
`keras.datasets`: `(x_train, y_train), (x_test, y_test)`, with float32
features and integer labels in `[0, 10)`. `load_stdlib_text` returns a
character-level language-modelling task.

scikit-learn, mnist1d, tensorflow and tensorflow-datasets are imported only
when a loader needs them (`pip install keras_fa[data]` and a tensorflow such
as `tensorflow-cpu`), so importing keras_fa does not import tensorflow.

The modules: `offline` (the arrays), `task` (`Task` and its classes),
`loading` (`load`), `tfds` (the TFDS sets) and `download` (downloading one,
or saying in seconds why it cannot be).
"""

from keras_fa.datasets.download import NETWORK_TIMEOUT_SECONDS
from keras_fa.datasets.download import DatasetUnavailableError
from keras_fa.datasets.loading import OFFLINE_DATASETS
from keras_fa.datasets.loading import TFDS_DATASETS
from keras_fa.datasets.loading import load
from keras_fa.datasets.offline import MNIST1D_STANDARD_SEED
from keras_fa.datasets.offline import STDLIB_TEXT_MODULES
from keras_fa.datasets.offline import STDLIB_TEXT_VOCABULARY
from keras_fa.datasets.offline import load_digits
from keras_fa.datasets.offline import load_mnist1d
from keras_fa.datasets.offline import load_stdlib_text
from keras_fa.datasets.offline import stdlib_text
from keras_fa.datasets.task import Task

__all__ = [
    "DatasetUnavailableError",
    "MNIST1D_STANDARD_SEED",
    "NETWORK_TIMEOUT_SECONDS",
    "OFFLINE_DATASETS",
    "STDLIB_TEXT_MODULES",
    "STDLIB_TEXT_VOCABULARY",
    "TFDS_DATASETS",
    "Task",
    "load",
    "load_digits",
    "load_mnist1d",
    "load_stdlib_text",
    "stdlib_text",
]
