"""safeclip embed --engine ray on a local Ray (two CPUs) and the tiny model: the same output files as
the local engine, for texts and for images (with items that fail), and a run the other engine resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.embed import embed
from tests.reindex_world import text_of, write_image
from tests.ray_world import local_ray  # noqa: F401 - the session's Ray

pytest.importorskip("ray")


def assert_same_output(left, right) -> None:
    assert json.loads(left.with_name(left.name + ".ids.json").read_text()) == \
        json.loads(right.with_name(right.name + ".ids.json").read_text())
    np.testing.assert_allclose(np.load(left), np.load(right), atol=1e-5)


def test_texts_through_the_cli_match_the_local_engine(tmp_path, local_ray, tiny_model_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join([text_of(i) for i in range(100)] + [""] + [text_of(i) for i in range(100, 120)]))
    local = embed(tiny_model_dir, texts, tmp_path / "local.npy", chunk_size=32, progress=False)

    result = CliRunner().invoke(cli, ["embed", str(tiny_model_dir), str(texts), str(tmp_path / "ray.npy"),
                                      "--chunk-size", "32", "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "embedded 120 texts" in result.output and local.count == 120
    assert_same_output(tmp_path / "ray.npy", tmp_path / "local.npy")
    assert json.loads((tmp_path / "ray.npy.failures.json").read_text()) == [{"id": 101, "reason": "empty text"}]
    assert not (tmp_path / ".ray.npy.parts").exists()


def test_images_with_failures_and_a_run_the_ray_engine_resumes(tmp_path, local_ray, tiny_model_dir):
    folder = tmp_path / "images"
    for number in range(40):
        write_image(folder / f"{number // 10}" / f"{number:03d}.png", number)
    (folder / "broken.jpg").write_bytes(b"not an image")
    local = embed(tiny_model_dir, folder, tmp_path / "local.npy", chunk_size=8, progress=False)

    class Stop(Exception):
        pass

    def stop_after_two(index, count):
        if index == 1:
            raise Stop

    with pytest.raises(Stop):  # the local engine stops after two chunks; the Ray engine finishes the job
        embed(tiny_model_dir, folder, tmp_path / "ray.npy", chunk_size=8, progress=False,
              on_chunk_done=stop_after_two)
    report = embed(tiny_model_dir, folder, tmp_path / "ray.npy", chunk_size=8, progress=False, engine="ray")
    assert report.chunks_reused == 2 and report.chunks_total == 6
    assert report.count == local.count == 40
    assert [failure["id"] for failure in report.failures] == ["broken.jpg"]
    assert_same_output(tmp_path / "ray.npy", tmp_path / "local.npy")


def test_a_gpu_request_on_a_cpu_only_host_fails_at_once_and_leaves_no_work_folder(tmp_path, local_ray,
                                                                                  tiny_model_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat\na dog\n")
    result = CliRunner().invoke(cli, ["embed", str(tiny_model_dir), str(texts), str(tmp_path / "out.npy"),
                                      "--engine", "ray", "--gpus-per-worker", "1"])
    assert result.exit_code != 0
    assert "need 1 GPU(s)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / ".out.npy.parts").exists() and not (tmp_path / "out.npy").exists()


def test_a_model_the_workers_cannot_load_is_one_line(tmp_path, local_ray):
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat\n")
    (tmp_path / "not-a-model").mkdir()
    result = CliRunner().invoke(cli, ["embed", str(tmp_path / "not-a-model"), str(texts), str(tmp_path / "out.npy"),
                                      "--engine", "ray"])
    assert result.exit_code != 0
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: a Ray worker could not load the model: ") and "open_clip folder" in last
    assert not (tmp_path / ".out.npy.parts").exists()
