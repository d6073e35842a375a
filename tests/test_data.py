import gzip

import numpy as np
import pytest

from boxhack.data import load_dataset, load_idx_dir, parse_classes, read_idx, write_idx
from boxhack.errors import BoxhackError


def test_embedded_mnist_shapes_ranges_balance():
    ds = load_dataset("mnist")
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train).tolist() == [400] * 10
    assert np.bincount(ds.y_test).tolist() == [100] * 10


def test_split_is_seeded_and_disjoint():
    a, b = load_dataset("mnist", "0,1", split_seed=3), load_dataset("mnist", "0,1", split_seed=3)
    c = load_dataset("mnist", "0,1", split_seed=4)
    assert np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    # no test image also appears in train
    train = {x.tobytes() for x in a.x_train}
    assert not any(x.tobytes() in train for x in a.x_test)


def test_class_subsets_are_reindexed():
    ds = load_dataset("mnist", "3,7")
    assert ds.classes == (3, 7) and ds.class_names == ("3", "7")
    assert set(np.unique(ds.y_train)) == {0, 1}
    assert len(ds.y_train) == 800


@pytest.mark.parametrize("name", ["xor", "tanh"])
def test_toy_sets(name):
    ds = load_dataset(name)
    assert ds.x_train.shape == (2000, 2) and ds.x_train.dtype == np.float32
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    counts = np.bincount(ds.y_train)
    assert len(counts) == 2 and counts.min() > 700  # both classes well represented


def test_parse_classes():
    assert parse_classes("0-4") == (0, 1, 2, 3, 4)
    assert parse_classes("3,1,2-2") == (1, 2, 3)
    assert parse_classes(None) == tuple(range(10))
    assert parse_classes("trouser,Bag", "fashion-mnist") == (1, 8)
    with pytest.raises(BoxhackError, match="unknown class"):
        parse_classes("seven")
    with pytest.raises(BoxhackError, match="does not exist"):
        parse_classes("12")
    with pytest.raises(BoxhackError, match="empty"):
        parse_classes("5-2")


def test_unknown_dataset():
    with pytest.raises(BoxhackError, match="unknown data set"):
        load_dataset("cifar")


def _write_set(tmp_path, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(tmp_path / f"{stem}{suffix}", arr)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    arrays = _write_set(tmp_path, gz=gz)
    for stem, arr in arrays.items():
        path = tmp_path / (stem + (".gz" if gz else ""))
        assert np.array_equal(read_idx(path), arr)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28)
    assert np.allclose(ds.x_train[:, 0] * 255, arrays["train-images-idx3-ubyte"])


def test_idx_truncated(tmp_path):
    path = write_idx(tmp_path / "a", np.zeros((5, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BoxhackError, match="truncated"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path):
    path = write_idx(tmp_path / "a.gz", np.arange(5000, dtype=np.uint8).reshape(5, 1000) % 7)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(BoxhackError, match="corrupt or truncated|truncated"):
        read_idx(path)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 20)
    with pytest.raises(BoxhackError, match="magic"):
        read_idx(path)


def test_idx_count_mismatch(tmp_path):
    _write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(BoxhackError, match="30 images but 29 labels"):
        load_idx_dir(tmp_path)


def test_missing_dir_and_file(tmp_path):
    with pytest.raises(BoxhackError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(BoxhackError, match="has no train-images"):
        load_dataset("mnist", data_dir=tmp_path)


def test_fashion_mnist_from_debian_package():
    from boxhack.data import fashion_mnist_dir

    if fashion_mnist_dir() is None:
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    ds = load_dataset("fashion-mnist", "Trouser,Bag")
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.classes == (1, 8)
    assert len(ds.y_train) == 12000 and len(ds.y_test) == 2000


def test_gzip_detected_by_content(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    raw = tmp_path / "plain-name"
    with gzip.open(raw, "wb") as fh:
        fh.write(bytes([0, 0, 8, 2]) + np.array([3, 4], ">u4").tobytes() + arr.tobytes())
    assert np.array_equal(read_idx(raw), arr)


# ------------------------------------------------------------------ seeded balanced samples
def test_sample_balanced_is_balanced_seeded_and_not_the_first_n():
    from boxhack.data.sampling import sample_balanced

    y = load_dataset("mnist").y_test  # ordered by class: the first 100 are all zeros
    assert (y[:100] == 0).all()
    idx = sample_balanced(y, 30, seed=0)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64
    assert np.bincount(y[idx], minlength=10).tolist() == [3] * 10
    np.testing.assert_array_equal(idx, sample_balanced(y, 30, seed=0))
    assert not np.array_equal(idx, sample_balanced(y, 30, seed=1))
    counts = np.bincount(y[sample_balanced(y, 25, seed=3)], minlength=10)
    assert counts.sum() == 25 and counts.max() - counts.min() == 1


def test_sample_balanced_respects_the_mask_and_fills_from_other_classes():
    from boxhack.data.sampling import sample_balanced

    y = np.repeat(np.arange(3), 10)
    mask = np.ones(30, dtype=bool)
    mask[10:18] = False  # class 1: only 2 eligible items
    idx = sample_balanced(y, 12, seed=0, mask=mask)
    assert mask[idx].all()
    assert np.bincount(y[idx], minlength=3).tolist() == [5, 2, 5]
    assert set(idx.tolist()) >= {18, 19}
    # fewer eligible than asked: all of them
    np.testing.assert_array_equal(sample_balanced(y, 40, seed=0, mask=mask), np.flatnonzero(mask))
    assert len(sample_balanced(y, 5, seed=0, mask=np.zeros(30, dtype=bool))) == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"n": -3}, "sample size"), ({"n": 2.5}, "sample size"),
    ({"n": True}, "sample size"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"),
    ({"mask": np.ones(3, dtype=bool)}, "mask"), ({"mask": np.ones(10)}, "mask"),
    ({"labels": np.zeros((2, 5), np.int64)}, "1-D"), ({"labels": np.linspace(0, 1, 10)}, "integer"),
])  # fmt: skip
def test_sample_balanced_errors(kwargs, message):
    from boxhack.data.sampling import sample_balanced

    args = {"labels": np.arange(10) % 2, "n": 4, "seed": 0, "mask": None, **kwargs}
    with pytest.raises(BoxhackError, match=message):
        sample_balanced(args["labels"], args["n"], args["seed"], args["mask"])
