"""A user's own data (boxhack.data.sources) through workflow.target.load_data: each kind
(.npz, IDX folder, image folder, built-in), each error as one clear line, and a DataLoader
given to a monitor's fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from boxhack.data import write_idx
from boxhack.errors import BoxhackError
from boxhack.monitor import BoxMonitor
from boxhack.workflow.target import TargetSpec, _load_novel, load_data


def _arrays(n_train=30, n_test=12, k=3, shape=(1, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.random((n_train, *shape), dtype=np.float32),
        "y_train": np.arange(n_train) % k,
        "x_test": rng.random((n_test, *shape), dtype=np.float32),
        "y_test": np.arange(n_test) % k,
    }


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------ .npz
def test_npz_loads_selects_classes_and_keeps_x_ood(tmp_path):
    a = _arrays()
    ood = np.full((5, 1, 4, 4), 0.5, np.float32)
    path = _npz(tmp_path, **a, x_ood=ood, class_names=np.array(["cat", "dog", "owl"]))
    ds = load_data(path)
    assert ds.classes == (0, 1, 2) and ds.class_names == ("cat", "dog", "owl")
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (30, 1, 4, 4)
    np.testing.assert_array_equal(ds.x_test, a["x_test"])
    sub = load_data(path, "dog,owl")  # by name; labels become indices 0..1
    assert sub.classes == (1, 2) and set(sub.y_train) == {0, 1} and len(sub.y_train) == 20
    novel = _load_novel(TargetSpec(model="m"), ds)
    np.testing.assert_array_equal(novel.x_test, ood)
    novel = _load_novel(TargetSpec(model="m", novel_classes="owl"), sub_of(path, "cat,dog"))
    assert novel.classes == (2,) and len(novel.y_test) == 4


def sub_of(path, classes):
    return load_data(path, classes)


def test_npz_uint8_and_unbatched_channel(tmp_path):
    a = _arrays()
    a["x_train"] = (a["x_train"][:, 0] * 255).astype(np.uint8)  # (N, H, W) uint8
    a["x_test"] = (a["x_test"][:, 0] * 255).astype(np.uint8)
    ds = load_data(_npz(tmp_path, **a))
    assert ds.x_train.shape == (30, 1, 4, 4) and ds.x_train.max() <= 1.0
    np.testing.assert_array_equal(ds.x_train[:, 0], a["x_train"].astype(np.float32) / 255)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y_test"), "has no array y_test"),
    (lambda a: a.update(x_test=np.zeros((12, 1, 5, 5), np.float32)), "must match"),
    (lambda a: a.update(y_train=np.arange(29) % 3), "29 labels for 30 inputs"),
    (lambda a: a.update(y_train=(np.arange(30) % 3).astype(np.float32)), "integer class labels"),
    (lambda a: a.update(y_train=-(np.arange(30) % 3)), "negative label"),
    (lambda a: a["x_train"].__setitem__((0, 0, 0, 0), np.nan), "NaN or infinite"),
    (lambda a: a.update(x_train=a["x_train"] * 255), "outside the input range [0, 1]"),
    (lambda a: a.update(x_train=np.zeros(30, np.float32)), "one input per row"),
    (lambda a: a.update(x_ood=np.zeros((2, 1, 3, 3), np.float32)), "x_ood has inputs of shape"),
    (lambda a: a.update(class_names=np.array(["a", "b"])), "class_names has 2 names"),
])  # fmt: skip
def test_npz_errors(tmp_path, change, message):
    a = _arrays()
    change(a)
    with pytest.raises(BoxhackError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_data(_npz(tmp_path, **a))


def test_npz_missing_corrupt_and_pickled(tmp_path):
    with pytest.raises(BoxhackError, match="not found"):
        load_data(str(tmp_path / "none.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BoxhackError, match="cannot read"):
        load_data(str(bad))
    a = _arrays()
    a["x_train"] = np.array([object()] * 30, dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **a)
    with pytest.raises(BoxhackError, match="never unpickles"):
        load_data(str(path))


def test_unknown_class_and_unknown_folder(tmp_path):
    path = _npz(tmp_path, **_arrays())
    with pytest.raises(BoxhackError, match="class 7 does not exist"):
        load_data(path, "7")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoxhackError, match="unknown folder"):
        load_data(str(tmp_path / "empty"))


# ------------------------------------------------------------------ IDX folder
def test_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 6, 6), dtype=np.uint8))
    write_idx(d / "train-labels-idx1-ubyte.gz", (np.arange(20) % 4).astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (8, 6, 6), dtype=np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", (np.arange(8) % 4).astype(np.uint8))
    ds = load_data(str(d), "0-2")
    assert ds.input_shape == (1, 6, 6) and ds.classes == (0, 1, 2) and len(ds.y_train) == 15
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(BoxhackError, match="truncated"):
        load_data(str(d))


# ------------------------------------------------------------------ image folder
def _png(path, value, size=(5, 4), mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_split_and_seeded(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 4), ("test", 2)):
        for c, name in enumerate(("ant", "bee")):
            for i in range(n):
                _png(root / split / name / f"{i}.png", 40 * c + i)
    ds = load_data(str(root))
    assert ds.class_names == ("ant", "bee") and ds.x_train.shape == (8, 1, 4, 5)
    assert len(ds.y_test) == 4
    assert float(ds.x_train[ds.y_train == 1].min()) == pytest.approx(40 / 255)
    flat = tmp_path / "flat"
    for c, name in enumerate(("a", "b", "c")):
        for i in range(5):
            _png(flat / name / f"{i}.png", (10 * c, i, 0), mode="RGB")
    one = load_data(str(flat), split_seed=1)
    assert one.x_train.shape == (12, 3, 4, 5) and len(one.y_test) == 3
    np.testing.assert_array_equal(one.x_test, load_data(str(flat), split_seed=1).x_test)


def test_image_folder_errors(tmp_path):
    root = tmp_path / "mixed"
    _png(root / "a" / "0.png", 1, size=(5, 4))
    _png(root / "b" / "0.png", 1, size=(6, 4))
    with pytest.raises(BoxhackError, match="different sizes"):
        load_data(str(root))
    bad = tmp_path / "corrupt"
    _png(bad / "a" / "0.png", 1)
    (bad / "b").mkdir()
    (bad / "b" / "0.png").write_bytes(b"not a png")
    with pytest.raises(BoxhackError, match="cannot read image"):
        load_data(str(bad))
    half = tmp_path / "half"
    _png(half / "train" / "a" / "0.png", 1)
    with pytest.raises(BoxhackError, match="no test/ folder"):
        load_data(str(half))


# ------------------------------------------------------------------ a DataLoader for fit
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_fit_takes_a_dataloader(tmp_path):
    ds = load_data(_npz(tmp_path, **_arrays(n_train=60)))
    torch.manual_seed(0)
    model = _Net().eval()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train)),
        batch_size=7)
    a = BoxMonitor(only_correct=False).fit(model, "fc1", loader)
    b = BoxMonitor(only_correct=False).fit(model, "fc1", ds.x_train, ds.y_train)
    x = ds.x_test
    np.testing.assert_array_equal(a.predict(model, x)[1], b.predict(model, x)[1])
    assert int(a.n_fit_.sum()) == 60
    with pytest.raises(BoxhackError, match="fit needs labels"):
        BoxMonitor().fit(model, "fc1", ds.x_train)
    with pytest.raises(BoxhackError, match="not an \\(inputs, labels\\) pair"):
        BoxMonitor().fit(model, "fc1", [torch.zeros(2, 1, 4, 4)])
