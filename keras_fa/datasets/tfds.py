"""The TFDS image sets as a `Task`: read, filtered to the kept classes.

A set is read with `tfds.builder(name, data_dir=data_dir)`; when it is not
prepared there, `fetch` downloads it or says in seconds why it cannot.
tensorflow and tensorflow-datasets are imported only here, when a TFDS set
is loaded.
"""

import numpy as np

from keras_fa.datasets.download import fetch
from keras_fa.datasets.task import Task
from keras_fa.datasets.task import choose_classes
from keras_fa.datasets.task import import_tensorflow
from keras_fa.datasets.task import label_table


def import_tfds():
    """Returns the `tensorflow_datasets` module, or raises how to install
    it."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "The TFDS data sets need tensorflow-datasets: "
            "`pip install keras_fa[data]` (or `pip install "
            "tensorflow-datasets importlib_resources`)."
        ) from error
    return tfds


def tfds_task(name, data_dir, classes, seed, download):
    """Returns the `Task` of the TFDS set `name`, with `load`'s arguments.

    The classes are checked before any download: the builder's code knows
    them before any data is there.
    """
    tfds = import_tfds()
    import_tensorflow()
    builder = tfds.builder(name, data_dir=data_dir)
    num_all = builder.info.features["label"].num_classes
    classes = choose_classes(classes, num_all, seed)
    if not builder.is_prepared():
        fetch(name, builder, download)
    # Class names come from the prepared data where the code lacks them.
    names = builder.info.features["label"].names
    source = TFDSSource(builder, classes, transpose=name.startswith("emnist"))
    return Task(
        name=name,
        input_shape=tuple(builder.info.features["image"].shape),
        num_classes=len(classes),
        classes=classes,
        class_names=tuple(str(names[c]) for c in classes),
        num_train=source.count("train"),
        num_test=source.count("test"),
        _source=source,
    )


class TFDSSource:
    """Reads one TFDS set: keeps the chosen classes, renumbers labels.

    EMNIST images, stored transposed as in the original files, are
    transposed back (`transpose=True`) so that letters stand upright.
    """

    def __init__(self, builder, classes, transpose):
        self._builder = builder
        self._classes = classes
        self._num_all = builder.info.features["label"].num_classes
        self._table = label_table(classes, self._num_all)
        self._transpose = transpose
        self._sizes = {}

    @property
    def _is_subset(self):
        return self._classes != tuple(range(self._num_all))

    def _read(self, split, **kwargs):
        tfds = import_tfds()
        # The pipeline caches decoded examples itself, after filtering.
        return self._builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
            **kwargs,
        )

    def count(self, split):
        """Number of examples of the kept classes in `split`."""
        if split not in self._sizes:
            self._sizes[split] = self._count(split)
        return self._sizes[split]

    def _count(self, split):
        splits = self._builder.info.splits
        if not self._is_subset and split in splits:
            count = splits[split].num_examples
            if count:
                return int(count)
        # Counts labels only: images are read but not decoded.
        tfds = import_tfds()
        labels = self._read(
            split, decoders={"image": tfds.decode.SkipDecoding()}
        )
        labels = labels.map(lambda image, label: label).batch(65536)
        counts = np.zeros(self._num_all, dtype="int64")
        for batch in labels.as_numpy_iterator():
            counts += np.bincount(batch, minlength=self._num_all)
        return int(counts[list(self._classes)].sum())

    def dataset(self, split):
        """The examples of the kept classes in `split`, with task labels,
        uint8 images, cached."""
        tf = import_tensorflow()
        table = tf.constant(self._table)
        transpose = self._transpose

        def prepare(image, label):
            if transpose:
                image = tf.transpose(image, [1, 0, 2])
            return image, tf.gather(table, label)

        dataset = self._read(split).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE
        )
        if self._is_subset:
            dataset = dataset.filter(lambda image, label: label >= 0)
        # A known length lets Keras count steps (and not warn at the end of
        # the first epoch when filtering hid it).
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(self.count(split))
        )
        # uint8 images: a quarter of the memory float32 would take.
        return dataset.cache()

    def finish(self, dataset, batch_size):
        """Batches `dataset`, scales its images to `[0, 1]`, prefetches."""
        tf = import_tensorflow()

        def scale(images, labels):
            return tf.cast(images, tf.float32) / 255.0, labels

        dataset = dataset.batch(batch_size, drop_remainder=False)
        dataset = dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def arrays(self, split):
        """All of `split` as NumPy arrays `(x, y)`."""
        batches = list(
            self.finish(self.dataset(split), 4096).as_numpy_iterator()
        )
        return (
            np.concatenate([x for x, _ in batches]),
            np.concatenate([y for _, y in batches]),
        )
