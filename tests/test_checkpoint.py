"""Checkpoints round-trip, refuse what does not fit, and are never left half-written."""

import collections
import enum
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import helpers.checkpoint
from helpers import CHECKPOINT, MLP, CheckpointError, SimpleCNN, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    model = SimpleCNN()
    history = {"epoch": [1], "test_acc": [0.5]}
    save_checkpoint(tmp_path / "a.pt", model, history, {"lr": 0.001})
    fresh = SimpleCNN()
    ckpt = load_checkpoint(tmp_path / "a.pt", fresh)
    assert ckpt["history"] == history and ckpt["config"] == {"lr": 0.001} and ckpt["architecture"] == "SimpleCNN"
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key])


def test_other_architecture_is_refused_with_the_differences(tmp_path):
    save_checkpoint(tmp_path / "mlp.pt", MLP())
    with pytest.raises(CheckpointError, match=r"holds a MLP whose weights do not fit this SimpleCNN: missing conv1.weight"):
        load_checkpoint(tmp_path / "mlp.pt", SimpleCNN())
    narrow = SimpleCNN()
    narrow.fc2 = torch.nn.Linear(128, 5)
    save_checkpoint(tmp_path / "narrow.pt", narrow)
    with pytest.raises(CheckpointError, match=r"fc2.weight: saved \(5, 128\), model wants \(10, 128\)"):
        load_checkpoint(tmp_path / "narrow.pt", SimpleCNN())


def test_truncated_or_foreign_files_are_refused(tmp_path):
    save_checkpoint(tmp_path / "a.pt", SimpleCNN())
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save(SimpleCNN().state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="was not written by helpers.save_checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint(path, SimpleCNN(), {"epoch": [1]})
    before = path.read_bytes()

    def crash(obj, f):  # the disk fills up, or Ctrl-C, half-way through the write
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(helpers.checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, SimpleCNN(), {"epoch": [1, 2]})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


# ----------------------------------------------------------------------------- damage: checksums, missing parts


def flip_bit(path, offset, bit=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def record_offset(path, name):
    """Where the bytes of zip record ``name`` (e.g. "data/4", "data.pkl") start in the file torch.save wrote."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/" + name))
    with open(path, "rb") as f:  # local header: 30 bytes, then the file name and the extra field
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def storage_of(path, key):
    """The zip record that holds tensor ``key`` of the model: torch.save numbers storages in pickling order."""
    ckpt = torch.load(path, weights_only=True)
    return f"data/{list(ckpt['model']).index(key)}"


def test_a_flipped_bit_in_the_committed_weights_is_caught(tmp_path):
    path = tmp_path / "simplecnn.pt"
    shutil.copy(CHECKPOINT, path)
    start, size = record_offset(path, storage_of(path, "fc1.weight"))
    flip_bit(path, start + size // 2, bit=6)  # an exponent bit: the weight becomes about 1e36 (the 5.5e36)
    with pytest.raises(CheckpointError, match=re.escape(f"{path} is damaged: its model weights do not match")):
        load_checkpoint(path, SimpleCNN())


def test_a_flipped_bit_in_the_history_is_caught(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, SimpleCNN(), {"epoch": [1], "test_acc": [0.9861]}, {"lr": 0.001})
    start, size = record_offset(path, "data.pkl")
    pickled = path.read_bytes()[start : start + size]
    at = pickled.index(struct.pack(">d", 0.9861))  # pickle stores a float as 8 big-endian bytes
    flip_bit(path, start + at + 7)  # the last bit of the mantissa: 0.9861 becomes 0.9861000000000001
    with pytest.raises(CheckpointError, match=r"is damaged: its training history do not match the checksum"):
        load_checkpoint(path)


def test_files_written_before_checksums_still_load(tmp_path):
    model = SimpleCNN()
    v1 = {"format": "cnn-from-scratch checkpoint v1", "architecture": "SimpleCNN", "model": model.state_dict(),
          "history": {"epoch": [1]}, "config": {"lr": 0.001}, "training_state": None}  # fmt: skip
    torch.save(v1, tmp_path / "old.pt")
    fresh = SimpleCNN()
    ckpt = load_checkpoint(tmp_path / "old.pt", fresh)
    assert ckpt["history"] == {"epoch": [1]} and ckpt["config"] == {"lr": 0.001}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("committed", sorted(p.name for p in CHECKPOINT.parent.glob("*.pt")))
def test_the_committed_checkpoints_are_checksummed(committed):
    ckpt = torch.load(CHECKPOINT.parent / committed, map_location="cpu", weights_only=True)
    assert ckpt["format"] == helpers.checkpoint.FORMAT
    assert set(ckpt["checksums"]) == set(helpers.checkpoint.PARTS)
    load_checkpoint(CHECKPOINT.parent / committed)  # and they verify


PARTS_V1 = ["architecture", "model", "history", "config", "training_state"]


@pytest.mark.parametrize("version,part", [("v1", p) for p in PARTS_V1] + [("v2", p) for p in PARTS_V1 + ["checksums"]])
def test_a_tagged_file_missing_a_part_names_what_is_missing(tmp_path, part, version):
    path = tmp_path / "run.pt"
    save_checkpoint(path, SimpleCNN(), {"epoch": [1]}, {"lr": 0.001})
    ckpt = torch.load(path, weights_only=True)
    if version == "v1":
        ckpt["format"] = "cnn-from-scratch checkpoint v1"
        del ckpt["checksums"]
    del ckpt[part]
    torch.save(ckpt, path)
    for model in (None, SimpleCNN()):
        with pytest.raises(CheckpointError, match=re.escape(f"{path} is damaged or incomplete: it has no '{part}'")):
            load_checkpoint(path, model)


def test_a_part_of_the_wrong_type_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, SimpleCNN())
    ckpt = torch.load(path, weights_only=True)
    ckpt["history"], ckpt["model"]["fc2.bias"] = [0.5], "zeros"
    torch.save(ckpt, path)
    match = re.escape("not what save_checkpoint writes: 'history' (training history), model['fc2.bias']")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_what_a_checkpoint_cannot_hold_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=r"got a PosixPath .* convert it, e.g. str\(path\)"):
        save_checkpoint(tmp_path / "run.pt", SimpleCNN(), config={"data_dir": tmp_path})
    assert list(tmp_path.iterdir()) == []


def test_numpy_numbers_are_saved_as_python_numbers_and_the_file_loads(tmp_path):
    # np.float64 is a float subclass: pickled as it is, it made a file that load_checkpoint refused
    history = {"epoch": [np.int64(1)], "test_acc": [np.float64(0.5)], "stopped": np.bool_(False)}
    steps = collections.defaultdict(list, lr=[np.float32(0.25)])
    save_checkpoint(tmp_path / "run.pt", torch.nn.Linear(2, 2), history, {"steps": steps}, {"step": torch.tensor(3.0)})
    ckpt = load_checkpoint(tmp_path / "run.pt")
    assert ckpt["history"] == {"epoch": [1], "test_acc": [0.5], "stopped": False}
    assert [type(v[0]) for v in list(ckpt["history"].values())[:2]] == [int, float]
    assert type(ckpt["history"]["stopped"]) is bool and type(ckpt["config"]["steps"]) is dict
    assert ckpt["config"]["steps"] == {"lr": [0.25]} and torch.equal(ckpt["training_state"]["step"], torch.tensor(3.0))


class Level(enum.IntEnum):
    HIGH = 2


def test_a_subclass_of_int_is_refused_before_anything_is_written(tmp_path):
    # an IntEnum pickles fine, so it used to be saved, and weights_only refused the file when loading
    with pytest.raises(TypeError, match=r"got a Level .* int\(x\)"):
        save_checkpoint(tmp_path / "run.pt", SimpleCNN(), config={"level": Level.HIGH})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- fault injection


def small_checkpoint(path):
    """A checkpoint with every part, small enough to damage byte by byte."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "shuffle_rng": torch.tensor([7, 1, 255], dtype=torch.uint8)}
    save_checkpoint(path, model, {"epoch": [1, 2], "test_acc": [0.5, 0.75]}, {"lr": 0.001, "seed": 0}, state)
    return torch.load(path, weights_only=True)


def same(a, b):
    """Equal to the bit: tensors by dtype, shape and value (NaN equal to NaN), everything else by ==."""
    if isinstance(a, torch.Tensor):
        same_kind = isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape)
        return same_kind and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def loads_the_same_or_refuses(path, original):
    """load_checkpoint either refuses with FileNotFoundError / CheckpointError naming the path, or returns
    exactly what was saved; any other exception propagates and fails the test."""
    try:
        ckpt = load_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as error:
        assert str(path) in str(error)
        return "refused"
    assert same(ckpt, original), "a damaged file loaded as different content"
    return "same"


def test_fault_injection_bit_flips_everywhere(tmp_path):
    good = tmp_path / "good.pt"
    original = small_checkpoint(good)
    data = good.read_bytes()
    with zipfile.ZipFile(good) as z:
        directory = z.start_dir  # the central directory and the end records run from here to the end
        storages = [name.split("/", 1)[1] for name in z.namelist() if re.search(r"/data/\d+$", name)]
    pickle_start, pickle_size = record_offset(good, "data.pkl")
    tensors = [record_offset(good, name) for name in storages]
    every_byte = {*range(pickle_start, pickle_start + pickle_size), *range(directory, len(data))}
    every_byte |= {offset for start, size in tensors for offset in range(start, start + size)}
    offsets = sorted(every_byte | set(range(0, len(data), 5)))  # local headers and alignment padding: a sample
    path = tmp_path / "damaged.pt"
    outcomes = collections.Counter()
    for offset in offsets:  # one flipped bit in each: zip structure, pickle, tensor data, padding
        damaged = bytearray(data)
        damaged[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(damaged))
        outcomes[loads_the_same_or_refuses(path, original)] += 1
    assert outcomes["refused"] > len(data) // 4, outcomes  # the flips that matter are caught...
    assert outcomes["same"] > 0, outcomes  # ...and those in padding or unused header fields change nothing


def test_fault_injection_truncations(tmp_path):
    good = tmp_path / "good.pt"
    original = small_checkpoint(good)
    data = good.read_bytes()
    path = tmp_path / "cut.pt"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        assert loads_the_same_or_refuses(path, original) == "refused"


def test_fault_injection_other_files(tmp_path):
    original = small_checkpoint(tmp_path / "good.pt")
    rng = random.Random(0)
    path = tmp_path / "other.pt"
    contents = [b"", b"\0" * 1000, b"PK\x03\x04" + bytes(100), b"somebody's notes\n"]
    contents += [bytes(rng.getrandbits(8) for _ in range(n)) for n in (1, 100, 10_000)]
    for content in contents:
        path.write_bytes(content)
        assert loads_the_same_or_refuses(path, original) == "refused"
    others = [
        torch.randn(3),
        [1, 2, 3],
        SimpleCNN().state_dict(),
        {"format": helpers.checkpoint.FORMAT},
        {**original, "model": "weights"},
        {**original, "checksums": ["not", "a", "dict"]},
        {**original, "checksums": {}},
        {**original, "config": {"lr": 0.01}},  # a changed part under the old checksums
    ]
    for other in others:
        torch.save(other, path)
        assert loads_the_same_or_refuses(path, original) == "refused", other
    torch.save(original, path, _use_new_zipfile_serialization=False)  # the legacy format of torch.save
    assert loads_the_same_or_refuses(path, original) == "same"
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.pt"))):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- temporaries left by killed saves


def dead_pid():
    """The id of a process that has ended (and been reaped): nothing runs under it now."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_save_removes_the_temporaries_of_earlier_killed_saves_and_only_those(tmp_path):
    path = tmp_path / "run.pt"
    hour_ago = time.time() - 3600
    orphans = [f".run.pt.{dead_pid()}.k2x9_q0a.tmp", ".run.pt.ab12cd34.tmp"]  # a killed writer; the older naming, old
    keep = [
        f".run.pt.{os.getpid()}.zz12yy34.tmp",  # a save in progress (here: this process)
        ".run.pt.ef56gh78.tmp",  # the older naming, but written since this process started: maybe in progress
        f".run.pt.bak.{dead_pid()}.k2x9_q0a.tmp",  # another file's
        f".other.pt.{dead_pid()}.k2x9_q0a.tmp",
        "run.pt.k2x9_q0a.tmp",
    ]
    for name in orphans + keep:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    os.utime(tmp_path / ".run.pt.ab12cd34.tmp", (hour_ago, hour_ago))
    save_checkpoint(path, SimpleCNN())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["run.pt"])


CHILD = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("checkpoint", sys.argv[1])  # just the module: fast to import
checkpoint = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checkpoint)

def slow_save(obj, f):  # half a checkpoint, then a long pause: time to be killed
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

checkpoint.torch.save = slow_save
checkpoint.save_checkpoint(sys.argv[2], checkpoint.torch.nn.Linear(2, 2))
"""


def test_kill_9_during_a_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    path = tmp_path / "run.pt"
    save_checkpoint(path, SimpleCNN(), {"epoch": [1]})
    command = [sys.executable, "-c", CHILD, helpers.checkpoint.__file__, str(path)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
        writing = [p.name for p in tmp_path.glob(f".run.pt.{child.pid}.*.tmp")]
        assert len(writing) == 1
        save_checkpoint(path, SimpleCNN(), {"epoch": [1, 2]})  # a save while the other one writes...
        assert (tmp_path / writing[0]).exists()  # ...leaves its temporary alone
    finally:
        child.kill()  # SIGKILL: no cleanup code runs
        child.wait()
    assert (tmp_path / writing[0]).exists()
    save_checkpoint(path, SimpleCNN(), {"epoch": [1, 2, 3]})
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    assert load_checkpoint(path)["history"] == {"epoch": [1, 2, 3]}
