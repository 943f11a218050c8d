"""The weights' digest of `ourvidz.provenance`: a folder's manifest digest
follows every file's path and bytes; a preset's follows its name, seed and
configuration."""

from __future__ import annotations

import re

from ourvidz import provenance

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _folder(root):
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"a": 1}')
    (root / "unet" / "weights.safetensors").write_bytes(b"\x00\x01" * 1000)
    return root


def test_a_folder_digest_is_stable_and_follows_each_file(tmp_path):
    root = _folder(tmp_path / "m")
    first = provenance.folder_digest(root)
    assert HEX64.match(first)
    assert provenance.folder_digest(root) == first  # computed again: the same

    weights = root / "unet" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[500] ^= 1  # one bit, same size
    weights.write_bytes(bytes(data))
    changed = provenance.folder_digest(root)
    assert changed != first

    weights.rename(root / "unet" / "other.safetensors")  # same bytes, other name
    assert provenance.folder_digest(root) not in (first, changed)


def test_a_folder_digest_sees_added_files_but_not_hidden_ones(tmp_path):
    root = _folder(tmp_path / "m")
    first = provenance.folder_digest(root)
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("x")
    assert provenance.folder_digest(root) == first
    (root / "extra.json").write_text("{}")
    assert provenance.folder_digest(root) != first


def test_a_copied_folder_has_the_same_digest(tmp_path):
    a = _folder(tmp_path / "a")
    b = _folder(tmp_path / "b")
    assert provenance.folder_digest(a) == provenance.folder_digest(b)


def test_a_single_file_has_a_digest(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"abc")
    first = provenance.folder_digest(file)
    assert HEX64.match(first)
    file.write_bytes(b"abd")
    assert provenance.folder_digest(file) != first


def test_a_preset_digest_follows_name_seed_and_config():
    base = provenance.preset_digest("tiny", 0, {"unet": {"width": 32}})
    assert HEX64.match(base)
    assert provenance.preset_digest("tiny", 0, {"unet": {"width": 32}}) == base
    assert provenance.preset_digest("tiny", 1, {"unet": {"width": 32}}) != base
    assert provenance.preset_digest("full-random", 0, {"unet": {"width": 32}}) != base
    assert provenance.preset_digest("tiny", 0, {"unet": {"width": 64}}) != base


def test_for_job_adds_the_job_parameters_and_leaves_the_base_alone():
    from ourvidz.v1 import job_pb2

    base = job_pb2.Provenance(weights_digest="0" * 64, scheduler="S")
    job = provenance.for_job(base, "w1", 7, 5.5, 0.6)
    assert (job.worker_id, job.steps, job.guidance_scale) == ("w1", 7, 5.5)
    assert abs(job.img2img_strength - 0.6) < 1e-6
    assert not base.steps and not base.HasField("img2img_strength")
    assert not provenance.for_job(base, "w1", 7, 5.5).HasField("img2img_strength")
    assert provenance.for_job(None, "w1", 7, 5.5) is None
    assert set(provenance.versions()) == {
        "diffusers_version",
        "transformers_version",
        "torch_version",
        "ourvidz_version",
    }
