from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import brmtrl.data
from brmtrl.cli import main
from brmtrl.config import load_config
from brmtrl.data import DataError, FederatedData, load_cifar10, load_data, load_femnist, partition
from brmtrl.data.cifar10 import load_cifar10_arrays
from brmtrl.data.synthetic import principal_angle_distance

from .conftest import CIFAR, CONFIGS, FEMNIST, need


def check_partition(tri, tei, n_train, n_test):
    all_tr = np.concatenate(tri)
    all_te = np.concatenate(tei)
    assert len(np.unique(all_tr)) == len(all_tr) == n_train  # disjoint, complete
    assert len(np.unique(all_te)) == len(all_te) == n_test


@pytest.mark.parametrize("n,s", [(100, 2), (30, 3), (7, 5)])
def test_pathological_partition(n, s):
    rng = np.random.default_rng(0)
    ytr = np.repeat(np.arange(10), 50)
    yte = np.repeat(np.arange(10), 10)
    tri, tei = partition.pathological(ytr, yte, n, s, rng)
    check_partition(tri, tei, len(ytr), len(yte))
    for a, b in zip(tri, tei):
        assert len(np.unique(ytr[a])) == s
        assert set(np.unique(yte[b])) <= set(np.unique(ytr[a]))  # test drawn from own classes


def test_dirichlet_partition_is_complete_and_skewed():
    ytr = np.repeat(np.arange(10), 100)
    yte = np.repeat(np.arange(10), 20)
    tri, tei = partition.dirichlet(ytr, yte, 10, 0.1, np.random.default_rng(0))
    check_partition(tri, tei, 1000, 200)
    dominant = [np.bincount(ytr[a], minlength=10).max() / max(len(a), 1) for a in tri if len(a)]
    assert np.mean(dominant) > 0.4


def test_principal_angle_distance():
    b = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 3)))[0]
    assert principal_angle_distance(b @ np.diag([2.0, -1.0, 0.5]), b) < 1e-10
    other = np.linalg.qr(np.eye(10)[:, 5:8] - b @ (b.T @ np.eye(10)[:, 5:8]))[0]
    assert principal_angle_distance(other, b) == pytest.approx(1.0)


def test_synthetic_is_seeded():
    cfg = load_config(None, ["dataset.num_clients=5"])
    a, b = load_data(cfg), load_data(cfg)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    c = load_data(cfg.replace(seed=1))
    assert not torch.equal(a.train_x, c.train_x)


def test_cifar10_from_shared_parquet():
    need(CIFAR)
    xtr, ytr, xte, yte = load_cifar10(str(CIFAR))
    assert xtr.shape == (50_000, 3, 32, 32) and xte.shape == (10_000, 3, 32, 32)
    assert set(ytr.unique().tolist()) == set(range(10)) and int(yte.max()) == 9
    # FedRep's (ImageNet) normalisation: black and white map to (0 - mean) / std and (1 - mean) / std
    lo = min((0 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    hi = max((1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert lo - 1e-5 <= float(xtr[:100].min()) < -1.5 and 1.5 < float(xtr[:100].max()) <= hi + 1e-5
    assert torch.bincount(ytr).tolist() == [5000] * 10


def test_a_nodes_cifar10_clients_alone_are_the_same_tensors_as_in_the_whole_load():
    """A Flower node loads only its clients' images (memory-mapped cache): the same partition and, for
    those clients, the same tensors bit for bit as the whole load; the other clients hold nothing."""
    need(CIFAR)
    from brmtrl.data import _cifar10_arrays
    from brmtrl.data.cache import cache_dir

    cfg = load_config(CONFIGS / "cifar10.toml", [f"dataset.root={CIFAR}"])
    whole = load_data(cfg)                                        # writes the decoded cache if it is missing
    assert len(list(cache_dir().glob("cifar10-*.x.npy"))) >= 2
    _cifar10_arrays.cache_clear()
    part = load_data(cfg, clients=[7, 3, 99, 250])                # 250: out of range, skipped
    assert part.num_clients == whole.num_clients == 100 and part.train_x.shape[0] == 3 * 500
    for c in range(100):
        if c in (3, 7, 99):
            for a, b in ((whole.client_train(c), part.client_train(c)), (whole.client_test(c), part.client_test(c))):
                assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        else:
            assert len(part.train_idx[c]) == len(part.test_idx[c]) == 0
    _cifar10_arrays.cache_clear()


def test_cifar10_federated_paper_partition():
    need(CIFAR)
    cfg = load_config(CONFIGS / "cifar10.toml", [f"dataset.root={CIFAR}"])
    data = load_data(cfg)
    assert data.num_clients == 100
    assert all(len(i) == 500 for i in data.train_idx) and all(len(i) == 100 for i in data.test_idx)
    for a, b in zip(data.train_idx, data.test_idx):
        cls = set(data.train_y[a].unique().tolist())
        assert len(cls) == 2 and set(data.test_y[b].unique().tolist()) <= cls


def test_femnist_from_shared_leaf_json():
    need(FEMNIST)
    xtr, ytr, xte, yte, tri, tei, names = load_femnist(str(FEMNIST), None)
    assert len(names) == 105 == len(tri) == len(tei)
    assert xtr.shape == (14_708, 1, 28, 28) and xte.shape == (1_685, 1, 28, 28)
    assert int(ytr.min()) >= 0 and int(ytr.max()) <= 61 and len(ytr.unique()) > 50
    assert float(xtr.mean()) < 0.5  # inverted: background is 0
    assert all(len(t) > 0 for t in tei)


def fake_hub(monkeypatch, repos: dict[str, Path] | None = None) -> list[tuple]:
    """``huggingface_hub.snapshot_download`` replaced: the call is recorded and answered with the folder
    ``repos`` gives the repository (standing for its downloaded snapshot), or a ConnectionError (the
    hub cannot be reached, as on these machines)."""
    import huggingface_hub

    calls: list[tuple] = []

    def fake(repo_id, *, repo_type=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, repo_type, tuple(allow_patterns or ())))
        if repos is None or repo_id not in repos:
            raise ConnectionError("hub unreachable")
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


def test_femnist_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """A LEAF folder's JSON is parsed once; the next load reads the cache (no JSON parsed) and gives the
    same arrays; an edited file is parsed again."""
    need(FEMNIST)
    import shutil

    from brmtrl.data import femnist

    root = tmp_path / "femnist"
    for part in ("train", "test"):
        (root / part).mkdir(parents=True)
        first = sorted((FEMNIST / part).glob("*.json"))[0]
        shutil.copy(first, root / part / first.name)
    monkeypatch.setenv("BRMTRL_CACHE", str(tmp_path / "cache"))
    parsed: list[int] = []
    real = femnist._parse_leaf_files
    monkeypatch.setattr(femnist, "_parse_leaf_files", lambda files: parsed.append(len(files)) or real(files))
    once = load_femnist(str(root), None)
    again = load_femnist(str(root), None)
    assert parsed == [1, 1]                                     # train and test, the first time only
    assert all(torch.equal(a, b) for a, b in zip(once[:4], again[:4])) and once[6] == again[6]
    assert all(np.array_equal(a, b) for a, b in zip(once[4] + once[5], again[4] + again[5]))
    test_file = next((root / "test").glob("*.json"))
    os.utime(test_file, ns=(test_file.stat().st_atime_ns, test_file.stat().st_mtime_ns + 10**9))
    load_femnist(str(root), None)
    assert parsed == [1, 1, 1]                                  # the edited folder only


def test_online_sources_are_requested_and_failures_name_dataset_root(monkeypatch, tmp_path):
    calls = fake_hub(monkeypatch)
    with pytest.raises(DataError, match=r"uoft-cs/cifar10.*ConnectionError: hub unreachable.*dataset\.root"):
        load_cifar10(None)
    with pytest.raises(DataError, match=r"flwrlabs/femnist.*dataset\.root"):
        load_femnist(None, 10)
    assert calls == [("uoft-cs/cifar10", "dataset", ("plain_text/train-*.parquet",)),
                     ("flwrlabs/femnist", "dataset", ("data/train-*.parquet",))]
    fake_hub(monkeypatch, {"uoft-cs/cifar10": tmp_path})   # reached, but holds no such files
    with pytest.raises(DataError, match=r"uoft-cs/cifar10.*no files matching 'plain_text/train-\*\.parquet'.*dataset\.root"):
        load_cifar10(None)


def test_cifar10_online_reads_the_hubs_files_as_the_local_copy(monkeypatch, tmp_path):
    """The hub's layout (plain_text/<split>-00000-of-00001.parquet, the shared copy's very files) gives the
    arrays of the local copy: one reader, one cache."""
    need(CIFAR)
    snap = tmp_path / "snapshot" / "plain_text"
    snap.mkdir(parents=True)
    for split in ("train", "test"):
        (snap / f"{split}-00000-of-00001.parquet").symlink_to(CIFAR / f"{split}.parquet")
    calls = fake_hub(monkeypatch, {"uoft-cs/cifar10": snap.parent})
    online, local = load_cifar10_arrays(None), load_cifar10_arrays(str(CIFAR))
    assert [c[2] for c in calls] == [("plain_text/train-*.parquet",), ("plain_text/test-*.parquet",)]
    for split in ("train", "test"):
        assert np.array_equal(online[split][0], local[split][0]) and np.array_equal(online[split][1], local[split][1])


def test_femnist_online_reads_the_hubs_schema_and_splits_each_writer(monkeypatch, tmp_path):
    """Three writers of the shared LEAF sample written as the hub's flwrlabs/femnist shards (PNG images,
    writer_id, hsf_id, character): every sample comes back, once, with its label and its pixels inverted,
    each writer's split into train and test by dataset.test_fraction."""
    need(FEMNIST)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    blob = json.loads(sorted((FEMNIST / "train").glob("*.json"))[0].read_text())
    names = sorted(blob["users"])[:3]
    leaf = {n: (np.rint(np.asarray(blob["user_data"][n]["x"]) * 255).astype(np.uint8), blob["user_data"][n]["y"])
            for n in names}
    rows: dict[str, list] = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for name, (pixels, labels) in leaf.items():
        for img, label in zip(pixels, labels):
            buf = io.BytesIO()
            Image.fromarray(img.reshape(28, 28), mode="L").save(buf, format="PNG")
            rows["image"].append({"bytes": buf.getvalue(), "path": None})
            rows["writer_id"].append(name)
            rows["hsf_id"].append(0)
            rows["character"].append(int(label))
    (tmp_path / "data").mkdir()
    half = len(rows["writer_id"]) // 2       # two shards, cut inside a writer
    for k, part in enumerate((slice(0, half), slice(half, None))):
        pq.write_table(pa.table({c: v[part] for c, v in rows.items()}), tmp_path / "data" / f"train-0000{k}-of-00002.parquet")
    fake_hub(monkeypatch, {"flwrlabs/femnist": tmp_path})
    xtr, ytr, xte, yte, tri, tei, got_names = load_femnist(None, None, test_fraction=0.25, seed=3)
    assert got_names == names
    for name, a, b in zip(names, tri, tei):
        pixels, labels = leaf[name]
        assert len(b) == max(1, round(0.25 * len(labels))) and len(a) + len(b) == len(labels)
        back = (255 - torch.cat([xtr[a], xte[b]]).flatten(1).mul(255).round()).to(torch.uint8)   # un-inverted
        assert sorted(zip(torch.cat([ytr[a], yte[b]]).tolist(), back.tolist())) == \
            sorted(zip(labels, pixels.tolist()))


def test_missing_truncated_and_corrupted_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"train\.parquet"):
        load_cifar10(str(tmp_path))
    (tmp_path / "train.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "test.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"train\.parquet.*cannot be read as parquet"):
        load_cifar10(str(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "train" / "a.json").write_text('{"users": ["u"], "user_data": {"u": {"x": [[0.0]')
    with pytest.raises(DataError, match=r"a\.json.*not valid JSON"):
        load_femnist(str(tmp_path), 1)
    (tmp_path / "train" / "a.json").write_text(json.dumps({"users": ["u"], "user_data": {"u": {"x": [[0.5]], "y": [1]}}}))
    with pytest.raises(DataError, match=r"a\.json.*LEAF"):
        load_femnist(str(tmp_path), 1)


def test_truncated_parquet_is_reported(tmp_path):
    need(CIFAR)
    import pyarrow.parquet as pq

    t = pq.read_table(CIFAR / "test.parquet").slice(0, 50)
    pq.write_table(t, tmp_path / "test.parquet")
    pq.write_table(t, tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"50 rows.*50000"):
        load_cifar10(str(tmp_path))



# --- issue 10: normalisation, augmentation, classes_per_client, cache temp files, empty clients ---

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def raw_images(n, c, h, seed=0):
    """Raw pixels in [0, 1], as uint8 / 255."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, h), generator=g).float() / 255.0


def normalise(x):
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def crop_reference(raw, generator, flip, padding=4):
    """Straightforward per-image crop (zero padding: black, or FEMNIST's inverted background) and
    optional flip of the raw images, drawing offsets then coins in the order random_crop_flip does."""
    b, _, h, w = raw.shape
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    coin = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    out = []
    for i in range(b):
        padded = torch.nn.functional.pad(raw[i], (padding,) * 4)
        crop = padded[:, int(oy[i]):int(oy[i]) + h, int(ox[i]):int(ox[i]) + w]
        out.append(crop.flip(-1) if coin[i] else crop)
    return torch.stack(out)


def fake_cifar10(monkeypatch, raw_train, raw_test):
    def fake(root):
        ytr = torch.arange(len(raw_train)) % 10
        yte = torch.arange(len(raw_test)) % 10
        return normalise(raw_train), ytr, normalise(raw_test), yte

    monkeypatch.setattr(brmtrl.data, "load_cifar10", fake)


def test_cifar10_is_normalised_with_fedreps_imagenet_mean_and_std():
    from brmtrl.data import cifar10

    # lgcollins/FedRep utils/train_utils.py: Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert cifar10.CIFAR_MEAN == IMAGENET_MEAN and cifar10.CIFAR_STD == IMAGENET_STD
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = normalise(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)
    torch.testing.assert_close(cifar10.normalise(x), expected, atol=1e-6, rtol=0)


def test_cifar10_augmentation_equals_crop_and_flip_of_the_raw_image_then_normalise(monkeypatch):
    """FedRep: RandomCrop(32, padding=4), RandomHorizontalFlip() on the raw image, then Normalize."""
    from brmtrl.data import augmentation_for

    raw = raw_images(64, 3, 32)
    raw[:, :, :, :16] = 1.0  # white left half: a flip is visible, and so is black padding
    fake_cifar10(monkeypatch, raw, raw[:10])
    data = load_data(load_config(None, ["dataset.name=cifar10", "model.name=cnn_cifar", "dataset.partition=iid",
                                        "dataset.num_clients=2"]))
    augment = augmentation_for(data, True)
    assert augmentation_for(data, False) is None
    out = augment(data.train_x, torch.Generator().manual_seed(3))
    reference = normalise(crop_reference(raw, torch.Generator().manual_seed(3), flip=True))
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)
    # some images were flipped and some were padded: the comparison covered both
    assert (out[:, 0, 16, 4:28] - normalise(raw)[:, 0, 16, 4:28]).abs().amax(1).gt(0.5).any()
    assert (reference == normalise(torch.zeros(1, 3, 1, 1))).any()


def test_random_crop_flip_draws_from_the_cpu_generator_on_any_device():
    from brmtrl.data import random_crop_flip

    x = raw_images(8, 3, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(1), fill=(0.1, 0.2, 0.3))
    b = random_crop_flip(x.double(), torch.Generator().manual_seed(1), fill=(0.1, 0.2, 0.3))
    torch.testing.assert_close(a.double(), b)
    if torch.cuda.is_available():
        c = random_crop_flip(x.cuda(), torch.Generator().manual_seed(1), fill=(0.1, 0.2, 0.3))
        torch.testing.assert_close(c.cpu(), a)


def test_femnist_augmentation_crops_with_background_and_never_flips(monkeypatch):
    from brmtrl.data import augmentation_for, femnist

    # LEAF pixels: 1.0 is the white background; the loader inverts them, so its background is 0
    raw = torch.ones(40, 1, 28, 28)
    raw[:, :, 5:20, 3:9] = 0.0  # a dark, left-leaning stroke
    inverted = 1.0 - raw
    assert femnist.BACKGROUND == float(inverted[0, 0, 0, 0])

    def fake(root, num_clients, test_fraction=0.1, seed=0):
        y = torch.arange(40) % 62
        idx = [np.arange(0, 20), np.arange(20, 40)]
        return inverted, y, inverted[:10], y[:10], idx, [np.arange(5), np.arange(5, 10)], ["w0", "w1"]

    monkeypatch.setattr(brmtrl.data, "load_femnist", fake)
    data = load_data(load_config(None, ["dataset.name=femnist", "model.name=cnn_femnist",
                                        "dataset.partition=natural", "dataset.num_clients=2"]))
    out = augmentation_for(data, True)(data.train_x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, crop_reference(inverted, torch.Generator().manual_seed(0), flip=False))
    # the stroke stays on the left: nothing was mirrored
    assert (out[:, 0, :, :14].sum((1, 2)) > out[:, 0, :, 14:].sum((1, 2))).all()


def test_synthetic_data_has_no_augmentation(tiny_cfg):
    from brmtrl.data import augmentation_for

    assert augmentation_for(load_data(tiny_cfg()), True) is None


def test_classes_per_client_above_the_class_count_is_a_one_line_cli_error(tmp_path, capsys):
    code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", "dataset.name=synthetic_classification",
                 "--set", "dataset.num_classes=4", "--set", "dataset.classes_per_client=5",
                 "--set", "train.rounds=1", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("brmtrl: error: ")
    assert "dataset.classes_per_client = 5" in err and "4 classes" in err


@pytest.mark.parametrize("name,s,n_classes", [("cifar10", 11, 10), ("femnist", 63, 62)])
def test_classes_per_client_is_checked_before_loading(tmp_path, name, s, n_classes):
    cfg = load_config(None, [f"dataset.name={name}", f"dataset.root={tmp_path / 'absent'}",
                             f"model.name={'cnn_cifar' if name == 'cifar10' else 'cnn_femnist'}",
                             f"dataset.classes_per_client={s}", "dataset.partition=pathological"])
    with pytest.raises(DataError, match=rf"dataset\.classes_per_client = {s} exceeds the {n_classes} classes"):
        load_data(cfg)


def test_classes_per_client_above_the_classes_present_is_a_data_error(monkeypatch):
    def fake(root, num_clients, test_fraction=0.1, seed=0):
        x = torch.zeros(30, 1, 28, 28)
        y = torch.arange(30) % 5  # only 5 of FEMNIST's 62 classes in this sample
        return x, y, x[:10], y[:10], [np.arange(30)], [np.arange(10)], ["w0"]

    monkeypatch.setattr(brmtrl.data, "load_femnist", fake)
    cfg = load_config(None, ["dataset.name=femnist", "model.name=cnn_femnist", "dataset.partition=pathological",
                             "dataset.classes_per_client=6", "dataset.num_clients=3"])
    with pytest.raises(DataError, match=r"dataset\.classes_per_client = 6 exceeds the 5 classes of FEMNIST present"):
        load_data(cfg)


def test_cache_temp_files_are_per_process_and_removed_on_failure(tmp_path, monkeypatch):
    from brmtrl.data import cache

    target = tmp_path / "cifar10-train-key.x.npy"
    names = {cache.temp_name(target) for _ in range(5)}
    assert len(names) == 5  # two writers in one process differ too
    assert all(str(os.getpid()) in n.name and n.parent == tmp_path and n.name.endswith(".npy") for n in names)

    def broken(path, arr):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(cache.np, "save", broken)
    cache.write_array(target, np.zeros(3))  # an unwritable cache is skipped...
    assert list(tmp_path.iterdir()) == []  # ...and leaves nothing behind

    def interrupted(path, arr):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.write_array(target, np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_two_processes_writing_the_same_cache_do_not_collide(tmp_path):
    target = tmp_path / "cifar10-train-key.x.npy"
    script = ("import sys, numpy as np; from pathlib import Path; from brmtrl.data.cache import write_array\n"
              "v = int(sys.argv[1]); x = np.full((2_000_000,), v, dtype=np.uint8)\n"
              "for _ in range(5): write_array(Path(sys.argv[2]), x)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(v), str(target)], env=env,
                              stderr=subprocess.PIPE, text=True) for v in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    x = np.load(target)  # a whole file from one writer, never a mix
    v = int(x[0])
    assert v in (1, 2) and x.shape == (2_000_000,) and (x == v).all()
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_processes_needing_the_same_file_decode_it_once(tmp_path):
    """Two processes reading the same parquet file at once (a federation's nodes starting together): one
    decodes it (slowly, here) while the other waits for its cache; both get the same arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    imgs = []
    for k in range(6):
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 40 * k, dtype=np.uint8)).save(buf, format="PNG")
        imgs.append({"bytes": buf.getvalue(), "path": None})
    pq.write_table(pa.table({"img": imgs, "label": list(range(6))}), tmp_path / "test.parquet")
    script = ("import sys, time, numpy as np; from pathlib import Path; import brmtrl.data.cifar10 as c\n"
              "read = c._read_parquet\n"
              "def slow(path):\n"
              "    open(sys.argv[2], 'a').write('decoded\\n'); time.sleep(3); return read(path)\n"
              "c._read_parquet = slow\n"
              "x, y = c._read_file(Path(sys.argv[1]), 'test')\n"
              "print(int(x.sum()), y.tolist())\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BRMTRL_CACHE": str(tmp_path / "cache")}
    log = tmp_path / "decodes.log"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "test.parquet"), str(log)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0] == f"{sum(40 * k for k in range(6)) * 32 * 32 * 3} {list(range(6))}\n"
    assert log.read_text() == "decoded\n"


def test_summary_reports_empty_clients_without_crashing():
    ytr = np.repeat(np.arange(10), 20)
    yte = np.repeat(np.arange(10), 4)
    tri, tei = partition.dirichlet(ytr, yte, 30, 0.1, np.random.default_rng(0))
    assert any(len(i) == 0 for i in tri) and any(len(i) == 0 for i in tei)  # α = 0.1 leaves clients empty
    x = torch.zeros(len(ytr), 5)
    data = FederatedData("d", x, torch.as_tensor(ytr), x[:len(yte)], torch.as_tensor(yte), tri, tei, 10, "linear")
    s = data.summary()
    assert s["train_per_client_min"] == 0 and s["test_per_client_min"] == 0
    assert s["test_per_client_max"] == max(len(i) for i in tei) and s["test_samples"] == len(yte)
    assert s["clients_without_train"] == sum(len(i) == 0 for i in tri) > 0
    assert s["clients_without_test"] == sum(len(i) == 0 for i in tei) > 0
    empty = FederatedData("none", x, torch.as_tensor(ytr), x, torch.as_tensor(ytr), [], [], 10, "linear").summary()
    assert empty["num_clients"] == 0 and empty["train_per_client_min"] == empty["test_per_client_min"] == 0


# --------------------------------------------------------------------------- FedRep's FEMNIST protocol (issue 9)
def test_lognormal_classes_gives_each_client_its_classes_disjointly():
    import numpy as np

    from brmtrl.data.partition import lognormal_classes

    y = np.repeat(np.arange(10), 100)
    train, test = lognormal_classes(y, 20, 3, 1.0, 0.1, np.random.default_rng(0))
    every = np.concatenate(train + test)
    assert len(every) == len(y) == len(np.unique(every))          # each sample to exactly one client
    for i, (tr, te) in enumerate(zip(train, test)):
        assert set(y[np.concatenate([tr, te])]) == {(3 * i + j) % 10 for j in range(3)}
        assert len(te) == max(1, round(0.1 * (len(tr) + len(te))))
    sizes = np.array([len(t) for t in train])
    assert sizes.std() / sizes.mean() > 0.2                          # log-normal counts, not equal shares


def test_femnist_fedrep_protocol_on_the_shared_sample():
    from brmtrl.config import load_config
    from brmtrl.data import DataError, load_data

    need(FEMNIST)
    cfg = load_config(CONFIGS / "femnist_fedrep.toml", [f"dataset.root={json.dumps(str(FEMNIST))}"])
    d = load_data(cfg)
    assert d.num_clients == 30 and d.num_classes == 10
    assert int(d.train_y.min()) == 0 and int(d.train_y.max()) == 9
    for i in range(d.num_clients):
        mine = set(d.train_y[d.train_idx[i]].tolist()) | set(d.test_y[d.test_idx[i]].tolist())
        assert mine <= {(3 * i + j) % 10 for j in range(3)} and len(d.test_idx[i]) >= 1
    with pytest.raises(DataError, match="dataset.num_clients = 400 is too many"):
        load_data(load_config(CONFIGS / "femnist_fedrep.toml",
                              [f"dataset.root={json.dumps(str(FEMNIST))}", "dataset.num_clients=400"]))


def test_fedrep_partition_is_femnist_only():
    from brmtrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="'dataset.partition' = 'fedrep'"):
        load_config(None, ["dataset.partition=fedrep"])
