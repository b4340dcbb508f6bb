from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brmtrl.config import load_config
from brmtrl.data import DataError, load_cifar10, load_data, load_femnist, partition
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
    assert -1.0 <= float(xtr[:100].min()) and float(xtr[:100].max()) <= 1.0
    assert torch.bincount(ytr).tolist() == [5000] * 10


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


def test_online_sources_are_requested_and_failures_name_dataset_root(monkeypatch):
    import datasets

    calls = []

    def fake(repo, *args, **kwargs):
        calls.append(repo)
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(DataError, match=r"uoft-cs/cifar10.*dataset\.root"):
        load_cifar10(None)
    with pytest.raises(DataError, match=r"flwrlabs/femnist.*dataset\.root"):
        load_femnist(None, 10)
    assert calls == ["uoft-cs/cifar10", "flwrlabs/femnist"]


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

