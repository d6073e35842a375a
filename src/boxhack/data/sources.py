"""A user's own data: an ``.npz`` file, an IDX folder or an image folder, as a :class:`Dataset`.

- ``.npz`` (read with ``allow_pickle=False``): arrays ``x_train``, ``y_train``, ``x_test``,
  ``y_test``; optional ``x_ood`` (inputs of classes the model does not know: the novelty
  measures use them) and ``class_names`` (one string per label value);
- an IDX folder: the four MNIST-style files (``train-images-idx3-ubyte[.gz]``, ...);
- an image folder (read with Pillow): one sub-folder per class, either under ``train/`` and
  ``test/`` or directly (then a seeded, stratified 80/20 split); class names are the folder
  names in sorted order, labels their indices. All images must have the same size; they are
  read as grey levels when every one is grey, as RGB otherwise.

Inputs come back float32 ``(N, C, ...)`` in [0, 1] (an ``(N, H, W)`` array gets a channel
axis; ``uint8`` pixels are divided by 255); labels int64 indices into ``Dataset.classes``.
Every problem is one clear line: a missing or corrupt file, a missing array, mismatched
shapes, NaN or infinite inputs, pixels outside [0, 1], labels that are not integers.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boxhack.data import (
    IDX_FILES,
    Dataset,
    _select,
    load_idx_dir,
    parse_classes,
    stratified_split,
)
from boxhack.errors import BoxhackError

__all__ = [
    "IMAGE_SUFFIXES",
    "NPZ_ARRAYS",
    "check_inputs",
    "check_labels",
    "is_idx_dir",
    "is_image_dir",
    "load_idx_data",
    "load_image_folder",
    "load_npz",
]

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                  ".ppm")  # fmt: skip
TEST_FRACTION = 0.2


# ------------------------------------------------------------------ checks
def check_inputs(x, what: str, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """``x`` as float32 ``(N, C, ...)``: uint8 pixels / 255, a channel axis added to
    ``(N, H, W)``; refused when not numeric, NaN or infinite, or outside ``bounds``."""
    x = np.asarray(x)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.number)):
        raise BoxhackError(f"{what} must be numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise BoxhackError(f"{what} has shape {x.shape}; expected (N, ...) with one input per "
                           f"row, e.g. (N, 1, 28, 28) or (N, 28, 28)")  # fmt: skip
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255.0)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.size and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(1)))
        raise BoxhackError(f"{what} holds NaN or infinite values ({bad} inputs); clean the data")
    lo, hi = bounds
    if x.size and (float(x.min()) < lo or float(x.max()) > hi):
        raise BoxhackError(f"{what} has values in [{float(x.min()):g}, {float(x.max()):g}], "
                           f"outside the input range [{lo:g}, {hi:g}]; scale the pixels (e.g. "
                           f"x / 255) or store them as uint8")  # fmt: skip
    return x


def check_labels(y, n: int, what: str) -> np.ndarray:
    """``y`` as int64 ``(n,)``; refused when not integer, negative or of another length."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise BoxhackError(f"{what} has shape {y.shape}; expected one class per input, ({n},) "
                           f"(one-hot labels: store y.argmax(1))")  # fmt: skip
    if y.size and (y.dtype == bool or not np.issubdtype(y.dtype, np.integer)):
        raise BoxhackError(f"{what} must be integer class labels, got dtype {y.dtype} "
                           f"(store y.astype(int))")  # fmt: skip
    if len(y) != n:
        raise BoxhackError(f"{what} has {len(y)} labels for {n} inputs")
    if y.size and int(y.min()) < 0:
        raise BoxhackError(f"{what} holds negative label {int(y.min())}; labels are 0, 1, 2, ...")
    return y.astype(np.int64)


def _all_names(names, y_train: np.ndarray, y_test: np.ndarray, what: str) -> tuple[str, ...]:
    top = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    if names is None:
        return tuple(str(i) for i in range(top))
    names = tuple(str(n) for n in np.asarray(names).reshape(-1).tolist())
    if len(names) < top:
        raise BoxhackError(f"{what}: class_names has {len(names)} names but labels go up to "
                           f"{top - 1}")  # fmt: skip
    return names


def _dataset(name: str, source: str, x_tr, y_tr, x_te, y_te, names: tuple[str, ...],
             classes, split_seed: int, extra: dict | None = None) -> Dataset:
    """The checked parts as a :class:`Dataset` restricted to ``classes`` (names or labels)."""
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise BoxhackError(f"{source}: training inputs have shape {x_tr.shape[1:]} but test "
                           f"inputs {x_te.shape[1:]}; they must match")  # fmt: skip
    if not len(y_tr):
        raise BoxhackError(f"{source}: no training inputs")
    selected = parse_classes(classes, name, names=names)
    x_tr, y_tr = _select(x_tr, y_tr, selected)
    x_te, y_te = _select(x_te, y_te, selected)
    if not len(y_tr):
        raise BoxhackError(f"{source}: no training input has one of the classes {list(selected)}")
    return Dataset(name=name, x_train=np.ascontiguousarray(x_tr), y_train=y_tr,
                   x_test=np.ascontiguousarray(x_te), y_test=y_te, classes=selected,
                   class_names=tuple(names[c] for c in selected), split_seed=split_seed,
                   source=source, extra={"all_names": names, **(extra or {})})  # fmt: skip


# ------------------------------------------------------------------ .npz
def load_npz(path: str | Path, classes=None, *, split_seed: int = 0,
             bounds: tuple[float, float] = (0.0, 1.0)) -> Dataset:
    """An ``.npz`` data set (see the module docstring); ``x_ood`` lands in ``extra["x_ood"]``."""
    path = Path(path)
    if not path.is_file():
        raise BoxhackError(f"data file {path} not found" if not path.exists() else
                           f"data file {path} is not a file")  # fmt: skip
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise BoxhackError(f"{path} holds Python objects (pickled arrays); boxhack never "
                               f"unpickles: store plain numeric arrays") from None  # fmt: skip
        raise BoxhackError(f"cannot read {path}: {exc} (corrupt .npz?)") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise BoxhackError(f"cannot read {path}: {exc or type(exc).__name__} (not an .npz file, "
                           f"or truncated)") from None  # fmt: skip
    missing = [k for k in NPZ_ARRAYS if k not in arrays]
    if missing:
        raise BoxhackError(f"{path} has no array {', '.join(missing)}; an .npz data set holds "
                           f"x_train, y_train, x_test, y_test (optional x_ood, class_names); "
                           f"it has {', '.join(sorted(arrays)) or 'nothing'}")  # fmt: skip
    x_tr = check_inputs(arrays["x_train"], f"{path}: x_train", bounds)
    x_te = check_inputs(arrays["x_test"], f"{path}: x_test", bounds)
    y_tr = check_labels(arrays["y_train"], len(x_tr), f"{path}: y_train")
    y_te = check_labels(arrays["y_test"], len(x_te), f"{path}: y_test")
    names = _all_names(arrays.get("class_names"), y_tr, y_te, str(path))
    extra = {}
    if "x_ood" in arrays:
        x_ood = check_inputs(arrays["x_ood"], f"{path}: x_ood", bounds)
        if x_ood.shape[1:] != x_tr.shape[1:]:
            raise BoxhackError(f"{path}: x_ood has inputs of shape {x_ood.shape[1:]}, x_train "
                               f"{x_tr.shape[1:]}; they must match")  # fmt: skip
        extra["x_ood"] = x_ood
    return _dataset(str(path), f"file {path}", x_tr, y_tr, x_te, y_te, names, classes,
                    split_seed, extra)  # fmt: skip


# ------------------------------------------------------------------ IDX folder
def is_idx_dir(path: str | Path) -> bool:
    """A folder holding the MNIST-style training images file (plain or .gz)."""
    stem = IDX_FILES["train_images"]
    p = Path(path)
    return p.is_dir() and ((p / stem).is_file() or (p / f"{stem}.gz").is_file())


def load_idx_data(path: str | Path, classes=None, *, split_seed: int = 0) -> Dataset:
    """The four IDX files of folder ``path`` (labels are the files' label values)."""
    raw = load_idx_dir(path)
    x_tr = check_inputs(raw["train_images"], f"{path}: training images")
    x_te = check_inputs(raw["test_images"], f"{path}: test images")
    y_tr = check_labels(raw["train_labels"], len(x_tr), f"{path}: training labels")
    y_te = check_labels(raw["test_labels"], len(x_te), f"{path}: test labels")
    names = _all_names(None, y_tr, y_te, str(path))
    return _dataset(str(path), f"IDX files in {path}", x_tr, y_tr, x_te, y_te, names, classes,
                    split_seed, {"data_dir": str(path)})  # fmt: skip


# ------------------------------------------------------------------ image folder
def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip


def is_image_dir(path: str | Path) -> bool:
    """A folder of class sub-folders holding images (directly or under train/ and test/)."""
    p = Path(path)
    if not p.is_dir() or is_idx_dir(p):
        return False
    root = p / "train" if (p / "train").is_dir() else p
    return any(_images(d) for d in _class_dirs(root))


def _read_images(files: Sequence[Path]) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise BoxhackError("reading an image folder needs Pillow: pip install pillow") from None
    images, sizes, grey = [], set(), True
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                grey = grey and im.mode in ("1", "L", "I;16", "I", "F", "LA")
                images.append(im.copy())
                sizes.add(im.size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BoxhackError(f"cannot read image {f}: {exc} (corrupt or not an image?)") from None
    if len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise BoxhackError(f"the images have different sizes ({a[0]}x{a[1]} and {b[0]}x{b[1]}, "
                           f"...); resize them all to one size first")  # fmt: skip
    mode = "L" if grey else "RGB"
    arr = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in images])
    return arr if grey else arr.transpose(0, 3, 1, 2)  # (N, H, W) or (N, 3, H, W)


def _folder_split(root: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    files, labels = [], []
    for label, name in enumerate(names):
        found = _images(root / name) if (root / name).is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise BoxhackError(f"{root} holds no images in its class folders "
                           f"({', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
    return _read_images(files), np.asarray(labels, dtype=np.int64)


def load_image_folder(path: str | Path, classes=None, *, split_seed: int = 0,
                      test_fraction: float = TEST_FRACTION) -> Dataset:
    """An image folder (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise BoxhackError(f"image folder {root} not found")
    split = (root / "train").is_dir()
    if split and not (root / "test").is_dir():
        raise BoxhackError(f"{root} has train/ but no test/ folder; give both, or put the class "
                           f"folders directly in {root} for a seeded split")  # fmt: skip
    names = [d.name for d in _class_dirs(root / "train" if split else root)]
    if not names:
        raise BoxhackError(f"{root} holds no class folders (one sub-folder per class)")
    if split:
        x_tr, y_tr = _folder_split(root / "train", names)
        x_te, y_te = _folder_split(root / "test", names)
        extra_test = sorted({d.name for d in _class_dirs(root / "test")} - set(names))
        if extra_test:
            raise BoxhackError(f"{root / 'test'} has class folder {extra_test[0]!r} that "
                               f"{root / 'train'} lacks")  # fmt: skip
        source = f"image folder {root} (train/ and test/)"
    else:
        x, y = _folder_split(root, names)
        tr, te = stratified_split(y, test_fraction, split_seed)
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        source = f"image folder {root} (seeded {round(100 * test_fraction)}% test split)"
    x_tr = check_inputs(x_tr, f"{root}: images")
    x_te = check_inputs(x_te, f"{root}: images")
    return _dataset(str(root), source, x_tr, y_tr, x_te, y_te, tuple(names), classes,
                    split_seed)  # fmt: skip
