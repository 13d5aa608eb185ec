"""Shakespeare (LEAF-style next character, one client per speaker) and the charlstm model.

Every test writes its own small play; the real corpus is never needed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import pytest
import torch

from conftest import read_jsonl, run_cli
from pflalign.config import DataConfig, ModelConfig
from pflalign.data import build_federated_data, cache_path
from pflalign.data import shakespeare as S
from pflalign.errors import ConfigError, DataError
from pflalign.models import build_model


def _speech(name: str, i: int, n: int) -> str:
    words = f"{name.lower()} says line {i}, and speaks again; "
    return "\n".join((words * (n // len(words) + 1))[k:k + 40].strip() or "x"
                     for k in range(0, n, 40))


# speaker -> total characters of speech, written as interleaved speeches
SIZES = {"ALICE": 900, "Second Bob": 600, "CAROL": 400, "DAN": 120}


def write_play(path):
    """A play in the Tiny Shakespeare format; returns speaker -> the text the loader should use."""
    blocks, texts = ["A preface line that belongs to nobody."], {n: [] for n in SIZES}
    for i in range(4):
        for name, size in SIZES.items():
            speech = _speech(name, i, size // 4)
            if name == "ALICE" and i == 1:
                speech += " $caf\u00e9"  # characters outside the vocabulary
            blocks.append(f"{name}:\n{speech}")
            texts[name].append(speech)
        blocks.append("CAROL:")  # a speaker line without a speech
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return {n: "\n".join(t) for n, t in texts.items()}


@pytest.fixture
def play(tmp_path):
    f = tmp_path / "play.txt"
    return f, write_play(f)


def cfg_for(tmp_path, path, **kw) -> DataConfig:
    base = dict(dataset="shakespeare", partition="natural", root=str(path), num_clients=3,
                min_chars=300, seq_len=12, stride=None, client_samples=None,
                cache_dir=str(tmp_path / "cache"))
    return DataConfig(**{**base, **kw})


def all_samples(client):
    x = torch.cat([client.train_x, client.val_x, client.test_x])
    y = torch.cat([client.train_y, client.val_y, client.test_y])
    return x, y


def tensors(fd):
    return [t for c in fd.clients for t in dataclasses.astuple(c)]


def test_speakers_become_clients(tmp_path, play):
    path, texts = play
    fd = build_federated_data(cfg_for(tmp_path, path), seed=0)
    # DAN (120 chars) is under min_chars; the rest, longest first; empty speeches skipped
    assert fd.info["client_names"] == ["ALICE", "Second Bob", "CAROL"]
    assert fd.num_clients == 3 and fd.num_classes == S.VOCAB_SIZE == 81
    assert fd.input_shape == (12,)
    for c in fd.clients:
        assert c.train_x.dtype == torch.int64 and c.train_y.dtype == torch.int64
        assert c.train_x.shape[1:] == (12,) and len(c.test_y) >= 1
    # fewer clients: the ones with the most text
    two = build_federated_data(cfg_for(tmp_path / "b", path, num_clients=2), seed=0)
    assert two.info["client_names"] == ["ALICE", "Second Bob"]
    # min_chars filters
    low = build_federated_data(cfg_for(tmp_path / "c", path, num_clients=4, min_chars=50), seed=0)
    assert low.info["client_names"][-1] == "DAN"
    # deterministic, and partition.json-ready
    again = build_federated_data(cfg_for(tmp_path / "d", path), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tensors(fd), tensors(again)))
    s = json.loads(json.dumps(fd.summary()))
    assert s["num_classes"] == 81 and s["input_shape"] == [12]
    assert [sum(r) for r in s["histograms"]["train"]] == s["sizes"]["train"]


def test_samples_are_the_windows_and_next_char(tmp_path, play):
    path, texts = play
    seq = 12
    fd = build_federated_data(cfg_for(tmp_path, path, seq_len=seq), seed=0)
    for name, client in zip(fd.info["client_names"], fd.clients):
        text = texts[name]
        x, y = all_samples(client)
        got = Counter(S.decode(xi) + S.decode([yi]) for xi, yi in zip(x.tolist(), y.tolist()))
        want = Counter(S.decode(S.encode(text[i:i + seq + 1]))
                       for i in range(0, len(text) - seq, seq))
        assert got == want and len(y) == len(range(0, len(text) - seq, seq))
    # a stride of 1 (LEAF) gives every window
    one = build_federated_data(cfg_for(tmp_path / "s1", path, stride=1, seq_len=seq), seed=0)
    assert len(all_samples(one.clients[2])[1]) == len(texts["CAROL"]) - seq


def test_client_samples_caps_with_a_seeded_subset(tmp_path, play):
    path, texts = play
    kw = dict(seq_len=8, stride=2, client_samples=30)
    a = build_federated_data(cfg_for(tmp_path / "a", path, **kw), seed=0)
    b = build_federated_data(cfg_for(tmp_path / "b", path, **kw), seed=1)
    assert (a.sizes("train") + a.sizes("test") == 30).all()
    xa = torch.cat([all_samples(c)[0] for c in a.clients])
    xb = torch.cat([all_samples(c)[0] for c in b.clients])
    assert not torch.equal(xa.sort(0).values, xb.sort(0).values)
    text = texts["ALICE"]
    for xi, yi in zip(*all_samples(a.clients[0])):
        window = S.decode(xi.tolist()) + S.decode([int(yi)])
        starts = [i for i in range(0, len(text) - 8, 2)
                  if S.decode(S.encode(text[i:i + 9])) == window]
        assert starts


def test_vocabulary_is_fixed():
    assert len(S.LETTERS) == len(set(S.LETTERS)) == 80  # LEAF's alphabet, LEAF's indices
    assert S.encode("\n a}").tolist() == [0, 1, S.LETTERS.index("a"), 79]
    assert S.encode("$\u00e9\U0001f600").tolist() == [S.UNK] * 3
    assert S.decode(S.encode("To be, or not to be:")) == "To be, or not to be:"


def test_cache_reuses_the_split_and_int64_survives(tmp_path, play):
    path, _ = play
    cfg = cfg_for(tmp_path, path)
    first = build_federated_data(cfg, seed=0)
    assert cache_path(cfg, 0).is_file()
    second = build_federated_data(cfg, seed=0)
    assert second.from_cache and second.clients[0].test_x.dtype == torch.int64
    assert all(torch.equal(a, b) for a, b in zip(tensors(first), tensors(second)))
    assert second.summary() == first.summary()
    # the data-defining fields are in the key; for other datasets they are not
    assert cache_path(cfg, 0) != cache_path(dataclasses.replace(cfg, seq_len=10), 0)
    other = DataConfig(dataset="digits")
    assert cache_path(other, 0) == cache_path(dataclasses.replace(other, seq_len=10), 0)


def test_directory_root_and_iid(tmp_path, play):
    path, _ = play
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "input.txt").write_text(path.read_text())
    fd = build_federated_data(cfg_for(tmp_path, d), seed=0)
    iid = build_federated_data(cfg_for(tmp_path, d, partition="iid"), seed=0)
    assert fd.num_clients == iid.num_clients == 3
    assert int(fd.sizes("train").sum() + fd.sizes("test").sum()) == \
        int(iid.sizes("train").sum() + iid.sizes("test").sum())


@pytest.mark.parametrize("kw, needle", [
    (dict(root="missing"), "not found"),
    (dict(root="emptydir"), "no tinyshakespeare.txt or input.txt found"),
    (dict(root=None), "set data.root"),
    (dict(num_clients=4), "only 3 of the 4 speakers"),
    (dict(num_clients=2, min_chars=10_000), "only 0 of the 4 speakers"),
])
def test_errors(tmp_path, play, kw, needle):
    path, _ = play
    (tmp_path / "emptydir").mkdir()
    roots = {"missing": str(tmp_path / "nowhere" / "play.txt"), "emptydir": str(tmp_path / "emptydir")}
    if kw.get("root") in roots:
        kw = {**kw, "root": roots[kw["root"]]}
    with pytest.raises(DataError, match=needle) as e:
        build_federated_data(cfg_for(tmp_path, path, **kw), seed=0)
    if kw.get("root"):
        assert kw["root"] in str(e.value)  # the error names the path it looked at
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_charlstm_forward():
    model = build_model(ModelConfig(name="charlstm", width=32), (12,), 81)
    x = torch.randint(0, 81, (3, 12))
    assert model(x).shape == (3, 81) and model.body(x).shape == (3, 32)
    names = [k for k, _ in model.named_parameters()]
    assert all(k.startswith(("body.", "head.")) for k in names)
    assert any(k.startswith("head.") for k in names) and any(k.startswith("body.") for k in names)
    assert model.body.lstm.num_layers == 2 and model.body.embed.embedding_dim == 8
    assert not list(model.buffers())
    assert build_model(ModelConfig(name="charlstm"), (80,), 81).head.in_features == 256
    with pytest.raises(RuntimeError, match="token ids"):
        model(torch.zeros(1, 12))
    with pytest.raises(ConfigError, match="token sequences"):
        build_model(ModelConfig(name="charlstm"), (1, 28, 28), 10)


@pytest.mark.parametrize("algorithm", ["pflalign", "fedrep"])
def test_end_to_end(tmp_path, data_cache, play, algorithm):
    path, _ = play
    run_dir = run_cli([f"data.cache_dir={data_cache}", f"out_dir={tmp_path / 'runs'}",
                       "wandb.mode=disabled", "progress=false", f"algorithm={algorithm}",
                       "data.dataset=shakespeare", "data.partition=natural", f"data.root={path}",
                       "data.num_clients=3", "data.min_chars=300", "data.seq_len=16",
                       "model.name=charlstm", "model.width=16", "train.batch_size=16",
                       "train.lr=0.5", "rounds=2"])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["acc"]) and 0 <= r["acc"] <= 1 for r in rows)
    assert math.isfinite(rows[-1]["loss"]) and len(rows[-1]["client_acc"]) == 3
    part = json.loads((run_dir / "partition.json").read_text())
    assert part["client_names"] == ["ALICE", "Second Bob", "CAROL"]
