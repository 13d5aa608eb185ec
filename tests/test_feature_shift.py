"""Feature shift (data.feature_shift): per-client domains that are reproducible, recorded in
partition.json and drawn in the report, applied to every split; none changes nothing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import run_cli
from pflalign.cli import main
from pflalign.config import DataConfig
from pflalign.data import DatasetSpec, RawDataset, build_federated_data, cache_key, shift
from pflalign.data.containers import SPLITS


def _digit_images(cfg, seed: int) -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return RawDataset((d.images / 16.0).astype(np.float32)[:, None], d.target.astype(np.int64), 10, (1, 8, 8))


def _tokens(cfg, seed: int) -> RawDataset:
    rng = np.random.default_rng(seed)
    return RawDataset(rng.integers(0, 5, (60, 4)), np.arange(60, dtype=np.int64) % 5, 5, (4,))


# Plug-in datasets by import path (pytest puts tests/ on sys.path): images, and token ids that
# only show they are text once loaded.
IMAGES = DatasetSpec(_digit_images, 10, (1, 8, 8), "scikit-learn digits as 1x8x8 images")
TOKENS = DatasetSpec(_tokens, 5, (4,), "random token ids")


def data_cfg(cache, **kw) -> DataConfig:
    base = {"dataset": "digits", "partition": "iid", "num_clients": 6, "cache_dir": str(cache)}
    return DataConfig(**{**base, **kw})


def xs(client) -> torch.Tensor:
    """All of a client's inputs, train, val and test."""
    return torch.cat([client.split(s)[0] for s in SPLITS])


def records(fd) -> list[dict]:
    return fd.info["feature_shift"]["clients"]


def test_rotate_by_90_degrees_is_rot90_rigid_and_inverts():
    x = torch.rand(5, 3, 8, 8)
    assert torch.allclose(shift.rotate(x, 90.0), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(shift.rotate(x, -90.0), torch.rot90(x, -1, (-2, -1)), atol=1e-5)
    # on a 16x20 image (centre x=9.5, y=7.5; y points down) a blob 4 px right of the centre goes
    # 4 px up at +90 degrees (rigid, not stretched by the aspect ratio), and comes back at -90
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")

    def centre(img):
        w = img[0, 0] / img.sum()
        return (w * xx).sum().item(), (w * yy).sum().item()

    blob = torch.exp(-((xx - 13.5) ** 2 + (yy - 7.5) ** 2) / 4)[None, None]
    assert centre(shift.rotate(blob, 90.0)) == pytest.approx((9.5, 3.5), abs=0.05)
    assert centre(shift.rotate(shift.rotate(blob, 35.0), -35.0)) == pytest.approx((13.5, 7.5), abs=0.05)


def test_rotation_per_client_recorded_reproducible_and_on_every_split(tmp_path):
    kw = {"dataset": "test_feature_shift:IMAGES", "num_clients": 4, "val_fraction": 0.2}
    plain = build_federated_data(data_cfg(tmp_path / "a", **kw), seed=0)
    rot = build_federated_data(data_cfg(tmp_path / "b", feature_shift="rotate", shift_strength=60, **kw), seed=0)
    again = build_federated_data(data_cfg(tmp_path / "c", feature_shift="rotate", shift_strength=60, **kw), seed=0)
    angles = [r["angle"] for r in records(rot)]
    assert len(set(angles)) == 4 and all(-60 <= a <= 60 for a in angles)
    assert rot.info["feature_shift"]["kind"] == "rotate" and rot.info["feature_shift"]["strength"] == 60
    for p, r, r2, angle in zip(plain.clients, rot.clients, again.clients, angles):
        assert all(torch.equal(r.split(s)[0], r2.split(s)[0]) for s in SPLITS)  # same seed: identical
        for s in SPLITS:  # labels untouched, every split in the client's own domain
            assert torch.equal(p.split(s)[1], r.split(s)[1])
            assert torch.allclose(r.split(s)[0], shift.rotate(p.split(s)[0], angle), atol=1e-6)
    other = build_federated_data(data_cfg(tmp_path / "d", feature_shift="rotate", shift_strength=60, **kw), seed=1)
    assert [r["angle"] for r in records(other)] != angles
    # a client's domain depends on the data seed and its id alone, not on how many clients there are
    few = shift.summary(data_cfg(tmp_path, feature_shift="rotate", shift_strength=60, **{**kw, "num_clients": 2}),
                        0, 2, (1, 8, 8))
    assert few["clients"] == records(rot)[:2]


def test_noise_std_per_client_matches_the_record(tmp_path):
    plain = build_federated_data(data_cfg(tmp_path / "a"), seed=3)
    noisy = build_federated_data(data_cfg(tmp_path / "b", feature_shift="noise", shift_strength=0.5), seed=3)
    stds = [r["std"] for r in records(noisy)]
    assert len(set(stds)) == 6 and all(0 <= s <= 0.5 for s in stds)
    for p, n, std in zip(plain.clients, noisy.clients, stds):
        assert torch.equal(p.train_y, n.train_y) and torch.equal(p.test_y, n.test_y)
        diff = (xs(n) - xs(p)).double()
        assert abs(diff.std().item() - std) < 0.03 * std + 1e-3
        assert abs(diff.mean().item()) < 0.03 * std + 1e-3
        # the test split is as noisy as the train split: one domain per client
        assert abs((n.test_x - p.test_x).double().std().item() - std) < 0.06 * std + 1e-3


def test_affine_maps_differ_per_client_and_match_their_seed(tmp_path):
    plain = build_federated_data(data_cfg(tmp_path / "a"), seed=0)
    moved = build_federated_data(data_cfg(tmp_path / "b", feature_shift="affine"), seed=0)
    assert moved.info["feature_shift"]["strength"] == shift.DEFAULT_STRENGTH["affine"]
    maps = []
    for p, m, rec in zip(plain.clients, moved.clients, records(moved)):
        a, b = shift.affine_map(np.random.default_rng(rec["seed"]), 64, shift.DEFAULT_STRENGTH["affine"])
        expect = xs(p).double().numpy() @ a.T + b
        assert np.allclose(xs(m).numpy(), expect, atol=1e-5)
        assert rec["norm"] == pytest.approx(np.linalg.norm(a - np.eye(64), 2))
        assert rec["bias_norm"] == pytest.approx(np.linalg.norm(b))
        maps.append(a)
    assert all(not np.allclose(maps[0], other) for other in maps[1:])
    assert len({r["seed"] for r in records(moved)}) == 6


def test_none_keeps_the_cache_key_and_the_data(tmp_path):
    # the key this config had before feature shifts existed (commit 2945b07): existing caches stay valid
    assert cache_key(DataConfig(), 3) == "80887893b57beefa"
    assert cache_key(DataConfig(shift_strength=7.0), 3) == cache_key(DataConfig(), 3)
    keys = {cache_key(DataConfig(feature_shift=k, shift_strength=s), 3)
            for k, s in [("rotate", None), ("noise", None), ("affine", None), ("noise", 0.1)]}
    assert len(keys) == 4 and cache_key(DataConfig(), 3) not in keys
    assert cache_key(DataConfig(feature_shift="noise"), 3) == \
        cache_key(DataConfig(feature_shift="noise", shift_strength=shift.DEFAULT_STRENGTH["noise"]), 3)
    # unshifted: every client's inputs are the dataset's own rows, and partition.json has no shift record
    from sklearn.datasets import load_digits

    rows = {r.tobytes() for r in (load_digits().data / 16.0).astype(np.float32)}
    fd = build_federated_data(data_cfg(tmp_path), seed=0)
    assert all(r.numpy().tobytes() in rows for c in fd.clients for r in xs(c))
    assert "feature_shift" not in fd.summary()


def _snapshot(root) -> list:
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.mark.parametrize("overrides, needle", [
    (["data.feature_shift=rotate"], "data.feature_shift=rotate needs image inputs (C, H, W); dataset digits"),
    (["data.dataset=test_feature_shift:IMAGES", "data.feature_shift=affine"], "data.feature_shift=affine needs vector"),
    (["data.dataset=shakespeare", "data.partition=natural", "data.feature_shift=noise"], "token ids (text)"),
    (["data.dataset=test_feature_shift:TOKENS", "data.feature_shift=noise"], "token ids (text)"),
    (["data.dataset=test_feature_shift:IMAGES", "data.feature_shift=rotate", "data.shift_strength=200"],
     "data.shift_strength=200.0 is the largest rotation angle"),
    (["data.feature_shift=blur"], "data.feature_shift must be one of none, rotate, noise, affine"),
    (["data.feature_shift=noise", "data.shift_strength=0"], "data.shift_strength must be > 0"),
])
def test_bad_shift_exit_2_one_line_nothing_written(overrides, needle, tiny, tmp_path, capfd):
    before = _snapshot(tmp_path)
    capfd.readouterr()
    code = main(["run", *tiny, f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert _snapshot(tmp_path) == before


def test_partition_json_records_the_shift_and_the_report_draws_it(tiny, tmp_path):
    from pflalign.plots import partition_heatmap
    from pflalign.report import write_report

    noisy = run_cli([*tiny, "data.feature_shift=noise", "algorithm=fedavg", "rounds=1"])
    plain = run_cli([*tiny, "algorithm=fedavg", "rounds=1"])
    part = json.loads((noisy / "partition.json").read_text())
    rec = part["feature_shift"]
    assert rec["kind"] == "noise" and rec["param"] == "std" and len(rec["clients"]) == part["num_clients"] == 6
    assert all(set(c) == {"seed", "std"} and 0 <= c["std"] <= rec["strength"] for c in rec["clients"])
    assert "feature_shift" not in json.loads((plain / "partition.json").read_text())

    fig = partition_heatmap(np.asarray(part["histograms"]["train"]), shift=rec)
    top = fig.axes[0]
    assert [round(b.get_height(), 9) for b in top.patches] == [round(c["std"], 9) for c in rec["clients"]]
    assert len(partition_heatmap(np.asarray(part["histograms"]["train"])).axes) == 2  # heatmap + colorbar
    out = write_report([noisy.parent], tmp_path / "report")
    # same labels, two domains: two partition figures
    assert sorted(p.name for p in out.glob("partition_*.png")) == ["partition_0.png", "partition_1.png"]
    assert math.isclose(rec["strength"], shift.DEFAULT_STRENGTH["noise"])
