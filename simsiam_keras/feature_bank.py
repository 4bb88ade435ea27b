"""`FeatureBank`: the kNN memory in chunks, as float16 or float32, in RAM or on disk.

Features are L2-normalised in float32 when appended and stored as `dtype`; the kNN
(`knn.knn_predict`) reads them back one chunk at a time, so its working memory does not grow
with the bank (the formula and measured peaks: `knn`'s module docstring, docs/knn_memory.md).
"""

import os
import shutil
import tempfile
import weakref

import numpy as np

FEATURE_DTYPES = ("float16", "float32")
_EPSILON = 1e-8  # the norm clamp of losses.l2_normalize / torch's cosine_similarity


def l2_normalize(x):
    """The rows of `x` scaled to unit L2 norm, as a new float32 array."""
    x = np.array(x, dtype=np.float32)  # a copy, normalised in place
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # no [rows, C] temporary, unlike linalg.norm
    x /= np.maximum(norms, _EPSILON)[:, None]
    return x


def check_positive_ints(**values):
    """Raises ValueError naming the first of `values` that is not a positive int."""
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


class FeatureBank:
    """L2-normalised features and their labels, in chunks of `chunk_rows` rows, in RAM or on disk.

    The kNN memory at any scale (module docstring): `append` normalises each batch in float32
    and stores it as `dtype`; `chunks` gives the chunks back one at a time. With `directory`,
    each full chunk is written to a `.npy` file in a new temporary folder inside it, so that
    the resident memory is one chunk; `close` (or leaving a `with` block, or the bank being
    garbage-collected, or the process exiting) removes that folder. Labels stay in RAM (8 bytes
    per row).

    Args:
        dtype: "float16" (half the memory of float32; the kNN computes in float32 from it) or
            "float32".
        directory: None keeps the chunks in RAM; an existing folder puts them on disk.
        chunk_rows: rows per chunk, the unit of storage and of the similarity computation.

    Raises:
        ValueError: for an unknown dtype, a non-positive `chunk_rows` or a missing directory.

    Example:
        >>> with FeatureBank("float16", directory="/scratch") as memory:
        ...     memory.append(features, labels)  # batch by batch
        ...     result = knn_accuracy(memory, None, val_features, val_labels)
    """

    def __init__(self, dtype="float16", directory=None, chunk_rows=8192):
        if str(dtype) not in FEATURE_DTYPES:
            raise ValueError(f"`dtype` must be one of {FEATURE_DTYPES}. Received: dtype={dtype!r}")
        check_positive_ints(chunk_rows=chunk_rows)
        if directory is not None and not os.path.isdir(directory):
            raise ValueError(f"`directory` must be an existing folder. Received: {directory!r}")
        self.dtype = np.dtype(str(dtype))
        self.directory = directory
        self.chunk_rows = int(chunk_rows)
        self.path = (
            None if directory is None else tempfile.mkdtemp(prefix="knn_bank_", dir=directory)
        )
        self._remove = self.path and weakref.finalize(self, shutil.rmtree, self.path, True)
        self._chunks, self._labels = [], []  # arrays, or .npy paths; int64 labels per chunk
        self._buffer, self._filled, self._pending = None, 0, []  # the open chunk
        self._dim = None
        self._closed = False

    def append(self, features, labels):
        """Adds a batch: `features` `[B, C]` (normalised, stored as `dtype`) and `labels` `[B]`."""
        self._check_open()
        features = np.asarray(features)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if features.ndim != 2 or len(features) != len(labels):
            raise ValueError(
                "Need [B, C] features and one label per row. Received: features of shape "
                f"{features.shape} and {len(labels)} labels"
            )
        if self._dim is not None and features.shape[1] != self._dim:
            raise ValueError(f"Expected {self._dim} channels. Received: {features.shape[1]}")
        self._dim = features.shape[1]
        features = l2_normalize(features)
        start = 0
        while start < len(features):
            if self._buffer is None:
                self._buffer = np.empty((self.chunk_rows, self._dim), self.dtype)
            n = min(self.chunk_rows - self._filled, len(features) - start)
            self._buffer[self._filled : self._filled + n] = features[start : start + n]
            self._pending.append(labels[start : start + n])
            self._filled, start = self._filled + n, start + n
            if self._filled == self.chunk_rows:
                self._flush()

    def _flush(self):
        if not self._filled:
            return
        rows = self._buffer[: self._filled]
        if self.path is not None:
            chunk = os.path.join(self.path, f"chunk_{len(self._chunks):05d}.npy")
            np.save(chunk, rows)
        elif self._filled == self.chunk_rows:
            chunk, self._buffer = self._buffer, None
        else:
            chunk = rows.copy()
        self._chunks.append(chunk)
        self._labels.append(np.concatenate(self._pending))
        self._pending, self._filled = [], 0

    def chunks(self):
        """Yields `(features [r, C] as dtype, labels [r] int64)`, r <= `chunk_rows`, in order.

        A chunk on disk is read when it is reached and released when the caller drops it.
        """
        self._check_open()
        self._flush()
        self._buffer = None  # the open chunk's buffer: allocated again by the next `append`
        for chunk, labels in zip(self._chunks, self._labels):
            yield (np.load(chunk) if isinstance(chunk, str) else chunk), labels

    @property
    def labels(self):
        """All labels, int64 `[N]`."""
        self._flush()
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)

    @property
    def dim(self):
        """The feature width C (None before the first `append`)."""
        return self._dim

    @property
    def nbytes(self):
        """Bytes of the stored features, in RAM or in files."""
        return len(self) * (self._dim or 0) * self.dtype.itemsize

    def __len__(self):
        return sum(len(labels) for labels in self._labels) + self._filled

    def close(self):
        """Drops the chunks and removes the bank's folder; the bank cannot be used after."""
        if self._remove:
            self._remove()
        self._chunks, self._labels, self._buffer, self._pending = [], [], None, []
        self._filled, self._closed = 0, True

    def _check_open(self):
        if self._closed:
            raise ValueError("This FeatureBank is closed.")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def array_bank(features, labels, chunk_rows):
    """A `FeatureBank` over arrays as they are: its chunks are row slices, nothing is copied."""
    bank = FeatureBank("float32", None, chunk_rows)
    bank.dtype, bank._dim = features.dtype, features.shape[1]
    starts = range(0, len(features), bank.chunk_rows)
    bank._chunks = [features[s : s + bank.chunk_rows] for s in starts]
    bank._labels = [labels[s : s + bank.chunk_rows] for s in starts]
    return bank
