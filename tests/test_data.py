"""Tests for jdd.data.classification: real Fashion-MNIST, fake folder trees, missing data."""

import gzip
import pathlib
import socket

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jdd.data import classification as C, sources as S

HAVE_FMNIST = S._find_idx_files(pathlib.Path(S.FASHION_MNIST_DEBIAN_DIR)) is not None


def make_cfg(**kw):
    base = dict(name="fashion_mnist", data_dir=None, val_size=5000, val_seed=0, image_size=None,
                max_train=None, max_test=None)
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test instead of hanging on retries."""
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert not attempts


@pytest.fixture(scope="module")
def fmnist():
    if not HAVE_FMNIST:
        pytest.skip("apt-get install dataset-fashion-mnist")
    return C.load_classification(make_cfg())


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_loads(fmnist):
    d = fmnist
    assert d.name == "fashion_mnist" and d.num_classes == 10 and len(d.class_names) == 10
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"
    assert d.image_shape == (28, 28, 1)
    assert (d.mean, d.std) == ((0.2860,), (0.3530,))
    for split in (d.train, d.val, d.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
        assert split.images.shape[1:] == (28, 28, 1)
        assert split.labels.min() == 0 and split.labels.max() == 9
    assert len(d.train) == 55000 and len(d.val) == 5000 and len(d.test) == 10000
    np.testing.assert_array_equal(np.bincount(d.train.labels), [5500] * 10)
    np.testing.assert_array_equal(np.bincount(d.val.labels), [500] * 10)
    np.testing.assert_array_equal(np.bincount(d.test.labels), [1000] * 10)
    assert "carved from train" in d.val_source and "seed 0" in d.val_source
    # Real pixels, not zeros: Fashion-MNIST's mean is 0.286.
    assert abs(d.test.images.mean() / 255 - 0.286) < 0.01


def test_val_carve_is_deterministic_and_disjoint(fmnist):
    raw = S.read_idx(pathlib.Path(S.FASHION_MNIST_DEBIAN_DIR) / "train-labels-idx1-ubyte.gz")
    labels = raw.astype(np.int32)
    val_a, train_a = C.carve_validation(labels, 5000, 10, seed=0)
    val_b, train_b = C.carve_validation(labels, 5000, 10, seed=0)
    np.testing.assert_array_equal(val_a, val_b)
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.intersect1d(val_a, train_a).size
    assert len(val_a) + len(train_a) == len(labels)
    val_c, _ = C.carve_validation(labels, 5000, 10, seed=1)
    assert not np.array_equal(val_a, val_c)
    # The loaded splits are exactly these indices of the raw file.
    images = S.read_idx(pathlib.Path(S.FASHION_MNIST_DEBIAN_DIR) / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(fmnist.val.images[..., 0], images[val_a])
    np.testing.assert_array_equal(fmnist.train.labels, labels[train_a])


def test_max_train_and_max_test_are_balanced_and_deterministic():
    if not HAVE_FMNIST:
        pytest.skip("apt-get install dataset-fashion-mnist")
    cfg = make_cfg(max_train=200, max_test=100, val_size=1000)
    a, b = C.load_classification(cfg), C.load_classification(cfg)
    np.testing.assert_array_equal(np.bincount(a.train.labels), [20] * 10)
    np.testing.assert_array_equal(np.bincount(a.test.labels), [10] * 10)
    np.testing.assert_array_equal(np.bincount(a.val.labels), [10] * 10)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert "max_test" in a.val_source


def write_idx(path, array, code, compress):
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", images, 0x08, compress)
    np.testing.assert_array_equal(S.read_idx(tmp_path / "x"), images)
    floats = np.linspace(-1, 1, 6).astype(">f4").reshape(3, 2)
    write_idx(tmp_path / "f", floats, 0x0D, compress)
    out = S.read_idx(tmp_path / "f")
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, floats)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX"):
        S.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8), 0x08, False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="payload"):
        S.read_idx(tmp_path / "short")


def test_fashion_mnist_from_data_dir_raw_idx(tmp_path, monkeypatch, no_network):
    """A data_dir with raw (uncompressed) IDX files is used before the Debian path."""
    monkeypatch.setattr(S, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08, False)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte",
                  np.arange(n, dtype=np.uint8) % 10, 0x08, False)
    d = C.load_classification(make_cfg(data_dir=str(tmp_path), val_size=10))
    assert (len(d.train), len(d.val), len(d.test)) == (50, 10, 20)
    assert d.image_shape == (28, 28, 1)


# ----------------------------------------------------------------------------- folder datasets


def write_png(path, color, size=(10, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder(tmp_path):
    colors = {"cat": (255, 0, 0), "dog": (0, 255, 0), "ant": (0, 0, 255)}
    for cls, color in colors.items():
        for i in range(4):
            write_png(tmp_path / "train" / cls / f"{i}.png", color, size=(12, 9))
        write_png(tmp_path / "test" / cls / "a.jpg", color)
    write_png(tmp_path / "test" / "dog" / "grey.png", 128, mode="L")
    cfg = make_cfg(name="image_folder", data_dir=str(tmp_path), image_size=6, val_size=3)
    d = C.load_classification(cfg)
    assert d.class_names == ("ant", "cat", "dog") and d.num_classes == 3
    assert d.image_shape == (6, 6, 3)
    assert (len(d.train), len(d.val), len(d.test)) == (9, 3, 4)
    np.testing.assert_array_equal(np.bincount(d.val.labels), [1, 1, 1])
    assert d.mean == C.NORMALIZATION["imagenet1k"][0]
    for split in (d.train, d.val):  # lossless PNG: colours survive the resize exactly
        for img, label in zip(split.images, split.labels):
            np.testing.assert_array_equal(img[3, 3], colors[d.class_names[label]])
    assert np.all(d.test.images[d.test.labels == 2][1] == 128)  # greyscale became RGB

    # An official val/ folder replaces the carve; cfg.mean/std override the constants.
    for cls, color in colors.items():
        write_png(tmp_path / "val" / cls / "v.bmp", color)
    d = C.load_classification(make_cfg(name="image_folder", data_dir=str(tmp_path), image_size=4,
                                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert len(d.train) == 12 and len(d.val) == 3 and d.val_source.startswith("official")
    assert d.mean == (0.5, 0.5, 0.5) and d.std == (0.25, 0.25, 0.25)


def test_image_folder_needs_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        C.load_classification(make_cfg(name="image_folder", data_dir=str(tmp_path)))


def write_tiny_imagenet(root, wnids, train_per_class=3, val_per_class=2):
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")  # unsorted on purpose
    (root / "words.txt").write_text("".join(f"{w}\tthing {w[-1]}, other name\n"
                                            for w in sorted(wnids) + ["n99999999"]))
    lines = []
    for k, wnid in enumerate(wnids):
        shade = 40 * (int(wnid[-1]) + 1)
        for i in range(train_per_class):
            img = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            write_png(img, (shade, shade, shade), size=(64, 64))
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            write_png(root / "val" / "images" / name, (shade,) * 3, size=(64, 64))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet(tmp_path):
    wnids = ["n00000003", "n00000001", "n00000002"]
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200", wnids)
    d = C.load_classification(make_cfg(name="tiny_imagenet", data_dir=str(tmp_path), val_size=3))
    assert d.num_classes == 3 and d.class_names == ("thing 1", "thing 2", "thing 3")
    assert d.image_shape == (64, 64, 3)
    assert (len(d.train), len(d.val), len(d.test)) == (6, 3, 6)
    np.testing.assert_array_equal(np.bincount(d.test.labels), [2, 2, 2])
    assert (d.mean, d.std) == C.NORMALIZATION["tiny_imagenet"]
    for split in (d.train, d.val, d.test):  # labels follow sorted wnids
        shades = split.images[:, 32, 32, 0].astype(int)
        np.testing.assert_allclose(shades, 40 * (split.labels + 2), atol=3)  # JPEG error
    # data_dir may also point at the tiny-imagenet-200 folder itself; image_size resizes.
    d = C.load_classification(make_cfg(name="tiny_imagenet", val_size=0, image_size=32,
                                       data_dir=str(tmp_path / "tiny-imagenet-200")))
    assert d.image_shape == (32, 32, 3) and len(d.val) == 0 and len(d.train) == 9


# ----------------------------------------------------------------------------- missing data


def test_missing_fashion_mnist(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(S, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "no-debian"))
    bad = tmp_path / "nothing-here"
    with pytest.raises(C.DatasetNotFoundError) as err:
        C.load_classification(make_cfg(data_dir=str(bad)))
    msg = str(err.value)
    assert str(bad) in msg and str(tmp_path / "no-debian") in msg
    assert str(bad / "fashion_mnist") in msg  # the tfds location was checked too
    assert "apt-get install dataset-fashion-mnist" in msg and "tfds build" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_cifar10(tmp_path, no_network):
    with pytest.raises(C.DatasetNotFoundError) as err:
        C.load_classification(make_cfg(name="cifar10", data_dir=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "cifar10") in msg and "tfds build cifar10" in msg


def test_missing_cifar100_and_imagenet(tmp_path, no_network):
    with pytest.raises(C.DatasetNotFoundError, match="tfds build cifar100"):
        C.load_classification(make_cfg(name="cifar100", data_dir=str(tmp_path)))
    with pytest.raises(C.DatasetNotFoundError) as err:
        C.load_classification(make_cfg(name="imagenet1k", data_dir=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "imagenet2012") in msg
    assert str(tmp_path / "downloads" / "manual") in msg and "ILSVRC2012_img_val.tar" in msg


def test_missing_tiny_imagenet(tmp_path, no_network):
    with pytest.raises(C.DatasetNotFoundError) as err:
        C.load_classification(make_cfg(name="tiny_imagenet", data_dir=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg and "tiny-imagenet-200.zip" in msg
    assert "val_annotations.txt" in msg
    with pytest.raises(C.DatasetNotFoundError, match="config data_dir"):
        C.load_classification(make_cfg(name="tiny_imagenet", data_dir=None))


def test_missing_image_folder(tmp_path, no_network):
    with pytest.raises(C.DatasetNotFoundError) as err:
        C.load_classification(make_cfg(name="image_folder", data_dir=str(tmp_path),
                                       image_size=8))
    assert str(tmp_path / "train") in str(err.value) and "<class>" in str(err.value)


def test_unknown_dataset():
    with pytest.raises(ValueError) as err:
        C.load_classification(make_cfg(name="mnist"))
    for name in ("fashion_mnist", "cifar10", "cifar100", "imagenet1k", "tiny_imagenet",
                 "image_folder"):
        assert name in str(err.value)


# ----------------------------------------------------------------------------- transforms


def test_normalize_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    mean, std = C.NORMALIZATION["cifar10"]
    x = C.normalize(images, mean, std)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[..., 1], (images[..., 1] / 255 - mean[1]) / std[1], atol=1e-5)
    np.testing.assert_allclose(C.denormalize(x, mean, std), images / 255, atol=1e-6)
    import jax.numpy as jnp
    xj = C.normalize(jnp.asarray(images), mean, std)
    assert isinstance(xj, type(jnp.zeros(1))) and xj.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(xj), x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(C.denormalize(xj, mean, std)), images / 255, atol=1e-6)


def test_resize_center_crop_geometry():
    """torchvision Resize(256)+CenterCrop(224): short side 256, long int(256*400/300)=341."""
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    image = Image.fromarray(np.stack([yy % 256, xx % 256, (yy + xx) % 256], -1).astype(np.uint8))
    out = S.resize_center_crop(image, 256, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    resized = np.asarray(image.resize((341, 256), Image.BILINEAR))
    left, top = round((341 - 224) / 2), round((256 - 224) / 2)  # 58 (banker's), 16
    np.testing.assert_array_equal(out, resized[top:top + 224, left:left + 224])
    portrait = S.resize_center_crop(image.transpose(Image.Transpose.TRANSPOSE), 256, 224)
    assert portrait.shape == (224, 224, 3)


def test_streaming_split(tmp_path):
    """The ImageNet train path, on PNG bytes: per-class takes, exclusion, batching."""
    records = []
    for i in range(12):
        buf = tmp_path / f"{i}.png"
        write_png(buf, (i * 20, 0, 0), size=(300, 260))
        records.append((buf.read_bytes(), i % 3, f"img{i}"))
    stream = S.StreamingSplit(len(records), (224, 224, 3), lambda: iter(records),
                              S._decode_imagenet)
    val, names = stream._take(2, 3)
    assert len(val) == 6 and names == {f"img{i}" for i in range(6)}
    np.testing.assert_array_equal(val.labels, [0, 1, 2, 0, 1, 2])
    assert val.images[3, 100, 100, 0] == 60
    train = S.dataclasses.replace(stream, exclude=names)
    assert len(train) == 6
    batches = list(train.batches(4))
    assert [len(b[1]) for b in batches] == [4, 2]
    assert batches[0][0].shape == (4, 224, 224, 3) and batches[0][0][0, 0, 0, 0] == 120
    sub = train.take_per_class(1, 3)
    np.testing.assert_array_equal(sub.labels, [0, 1, 2])


def store_fake_tfds(data_dir, name, version, shape, n_train, n_test, test_split="test",
                    num_classes=None):
    """A prepared tfds directory written locally, with the registered builder's features."""
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(0)
    features = tfds.builder(name).info.features
    num_classes = num_classes or features["label"].num_classes

    def examples(n, tag):
        return [(f"{tag}{i}", {"id": f"{tag}{i}", "file_name": f"{tag}{i}.JPEG",
                               "label": i % num_classes,
                               "image": rng.integers(0, 256, shape, dtype=np.uint8)})
                for i in range(n)]

    feature_names = set(features.keys())
    splits = {s: [(k, {f: v for f, v in ex.items() if f in feature_names}) for k, ex in exs]
              for s, exs in (("train", examples(n_train, "a")),
                             (test_split, examples(n_test, "b")))}
    tfds.dataset_builders.store_as_tfds_dataset(name=name, version=version, features=features,
                                                split_datasets=splits, data_dir=str(data_dir))


def test_tfds_prepared_datasets(tmp_path, monkeypatch, no_network):
    """cifar10 from a prepared tfds dir (also an older version), and fashion_mnist via tfds."""
    store_fake_tfds(tmp_path, "cifar10", "3.0.2", (32, 32, 3), 40, 20)
    cfg = make_cfg(name="cifar10", data_dir=str(tmp_path), val_size=10)
    d = C.load_classification(cfg)
    assert d.image_shape == (32, 32, 3) and d.class_names[0] == "airplane"
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 20)
    assert (d.mean, d.std) == C.NORMALIZATION["cifar10"]
    (tmp_path / "cifar10" / "3.0.2").rename(tmp_path / "cifar10" / "3.0.1")
    d2 = C.load_classification(cfg)
    np.testing.assert_array_equal(d.train.images, d2.train.images)

    monkeypatch.setattr(S, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "absent"))
    store_fake_tfds(tmp_path, "fashion_mnist", "3.0.1", (28, 28, 1), 30, 10)
    d = C.load_classification(make_cfg(data_dir=str(tmp_path), val_size=10, max_test=10))
    assert d.image_shape == (28, 28, 1) and (len(d.train), len(d.val)) == (20, 10)


def test_imagenet_from_prepared_tfds(tmp_path, no_network):
    """Three classes of fake ImageNet: official validation -> test, val carved from a stream."""
    store_fake_tfds(tmp_path, "imagenet2012", "5.1.0", (260, 300, 3), 12, 6,
                    test_split="validation", num_classes=3)
    cfg = make_cfg(name="imagenet1k", data_dir=str(tmp_path), val_size=1000)
    d = C.load_classification(cfg)
    assert d.num_classes == 1000 and d.class_names[0] == "n01440764"
    assert d.image_shape == (224, 224, 3) and len(d.test) == 6
    assert isinstance(d.train, S.StreamingSplit) and len(d.train) == 9
    np.testing.assert_array_equal(np.sort(d.val.labels), [0, 1, 2])
    seen = np.concatenate([labels for _, labels in d.train.batches(4)])
    assert len(seen) == 9 and (d.mean, d.std) == C.NORMALIZATION["imagenet1k"]
    d = C.load_classification(make_cfg(name="imagenet1k", data_dir=str(tmp_path), val_size=1000,
                                       max_train=2000, max_test=1000))
    assert isinstance(d.train, C.Split) and len(d.train) == 6 and len(d.test) == 3
