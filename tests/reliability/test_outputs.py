"""Outputs never replace an input, never land on a special file, never half-written (guard, umask, disk full)."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat

import pytest
import torch
from reliability_helpers import cli, inputs, temporaries
from tiny_checkpoints import var_state_dict

from memprune.conversion import convert
from memprune.errors import MempruneError
from memprune.io import (
    atomic_write,
    check_output,
    checkpoint_files,
    remove_stale_temps,
    save_safetensors,
    write_json_atomic,
)
from memprune.patching import patch


def _sharded(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    state = var_state_dict()
    keys = list(state)
    half = len(keys) // 2
    save_safetensors({k: state[k] for k in keys[:half]}, folder / "m-00001.safetensors")
    save_safetensors({k: state[k] for k in keys[half:]}, folder / "m-00002.safetensors")
    weight_map = {k: "m-00001.safetensors" if i < half else "m-00002.safetensors" for i, k in enumerate(keys)}
    (folder / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_every_file_of_a_checkpoint_counts_as_an_input(tmp_path):
    folder = _sharded(tmp_path)
    shard = folder / "m-00002.safetensors"
    for given in (folder, folder / "m.safetensors.index.json"):
        with pytest.raises(MempruneError, match="is the input file"):
            check_output(shard, checkpoint_files(given), suffix=".safetensors")
    # other spellings of the same file: a hard link, a symlink, a relative path
    os.link(shard, tmp_path / "hard.safetensors")
    (tmp_path / "sym.safetensors").symlink_to(shard)
    for alias in (tmp_path / "hard.safetensors", tmp_path / "sym.safetensors"):
        with pytest.raises(MempruneError, match="never writes over its input"):
            check_output(alias, checkpoint_files(folder / "m.safetensors.index.json"))
    # a new file beside the inputs is fine
    assert check_output(folder / "new.safetensors", [folder], suffix=".safetensors") == folder / "new.safetensors"


def test_score_file_and_data_inputs_are_protected(tmp_path):
    ckpt, scores = inputs(tmp_path)
    with pytest.raises(MempruneError, match="is the input file"):
        patch(ckpt, scores, output=scores, top="10%")
    data = tmp_path / "data.csv"
    data.write_text("path,label\nimg.png,0\n")
    with pytest.raises(MempruneError, match="is the input file"):
        check_output(data, [ckpt, data])


def test_patch_never_replaces_the_inputs_manifest(tmp_path):
    ckpt, scores = inputs(tmp_path)
    first = tmp_path / "first.safetensors"
    patch(ckpt, scores, output=first, top="5%")
    sidecar = tmp_path / "first.manifest.json"
    before = sidecar.read_bytes()
    # var_tiny.pth -> var_tiny.manifest.json would be the output's manifest path too: give the input a manifest
    (tmp_path / "var_tiny.manifest.json").write_bytes(before)
    with pytest.raises(MempruneError, match="manifest .* is the input file"):
        patch(ckpt, scores, output=tmp_path / "var_tiny.safetensors", top="5%", force=True)
    assert sidecar.read_bytes() == before


@pytest.mark.parametrize("special", ["fifo", "devnull", "folder"])
def test_special_files_are_refused_and_left_alone(tmp_path, special):
    if special == "fifo":
        target = tmp_path / "out.safetensors"
        os.mkfifo(target)
        match = "FIFO"
    elif special == "devnull":
        target = "/dev/null"
        match = "device|must end in"
    else:
        target = tmp_path / "out.safetensors"
        target.mkdir()
        match = "is a folder"
    with pytest.raises(MempruneError, match=match):
        check_output(target, [], suffix=None if special != "devnull" else None)
    ckpt, scores = inputs(tmp_path)
    with pytest.raises(MempruneError, match=match):
        patch(ckpt, scores, output=target, top="5%")
    if special == "fifo":
        assert stat.S_ISFIFO(os.stat(target).st_mode)
    if special == "devnull":
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_suffix_must_match_what_is_written(tmp_path):
    ckpt, scores = inputs(tmp_path)
    for bad in ("q.npz", "q.pth", ".safetensors"):
        with pytest.raises(MempruneError, match="must end in .safetensors"):
            patch(ckpt, scores, output=tmp_path / bad, top="5%")
        with pytest.raises(MempruneError, match="must end in .safetensors"):
            convert(ckpt, tmp_path / bad)
    assert not list(tmp_path.glob("q.*"))


def test_overwrite_false_refuses_an_existing_output(tmp_path):
    out = tmp_path / "x.json"
    out.write_text("{}")
    assert check_output(out, [], suffix=".json") == out  # default: replacing a regular file is allowed
    with pytest.raises(MempruneError, match="--overwrite"):
        check_output(out, [], suffix=".json", overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(MempruneError, match="read-only"):
            check_output(folder / "x.safetensors", [])
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        save_safetensors({"w": torch.ones(2)}, tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    for name in ("a.json", "b.safetensors"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, code):
    ckpt, scores = inputs(tmp_path)
    out = tmp_path / "safe.safetensors"
    patch(ckpt, scores, output=out, top="5%")
    old = out.read_bytes(), (tmp_path / "safe.manifest.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("memprune.io.writer._write_tensor", full)
    with pytest.raises(MempruneError) as info:
        patch(ckpt, scores, output=out, top="10%")
    assert "nothing was written" in str(info.value) and "\n" not in str(info.value)
    assert (out.read_bytes(), (tmp_path / "safe.manifest.json").read_bytes()) == old  # the old pair is intact
    assert temporaries(tmp_path) == []


def test_real_file_size_limit_gives_one_line_and_no_partial_output(tmp_path):
    """RLIMIT_FSIZE with SIGXFSZ ignored makes the kernel fail the write with EFBIG, as a full disk would."""
    ckpt, scores = inputs(tmp_path)
    out = tmp_path / "safe.safetensors"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = cli("patch", str(ckpt), "--scores", str(scores), "-o", str(out), preexec_fn=limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "nothing was written" in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err
    assert not out.exists() and not (tmp_path / "safe.manifest.json").exists() and temporaries(tmp_path) == []


def test_failed_write_inside_atomic_write_is_cleaned(tmp_path):
    with pytest.raises(ZeroDivisionError), atomic_write(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"partial")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".other.safetensors.memprune-999999999-abcd1234.tmp"
    mine = tmp_path / f".x.json.memprune-{os.getpid()}-abcd1234.tmp"
    foreign = tmp_path / ".unrelated.tmp"
    for p in (dead, mine, foreign):
        p.write_bytes(b"x")
    write_json_atomic(tmp_path / "y.json", {})  # any write into the folder cleans up after killed runs
    assert not dead.exists() and mine.exists() and foreign.exists()
    assert remove_stale_temps(tmp_path) == []


def test_score_refuses_a_wrong_suffix_and_its_own_data(tmp_path):
    """``score -o q.npz`` would write safetensors under an .npz name; ``-o`` inside the data folder is an input."""
    from memprune.scoring.engine import score

    data = tmp_path / "data"
    data.mkdir()
    image = data / "a.safetensors"
    image.write_bytes(b"not really an image")
    with pytest.raises(MempruneError, match="must end in .safetensors"):
        score("m.safetensors", data, tokenizer="t.safetensors", output=tmp_path / "q.npz")
    with pytest.raises(MempruneError, match="is the input file"):
        score("m.safetensors", data, tokenizer="t.safetensors", output=image)
