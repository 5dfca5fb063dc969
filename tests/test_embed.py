"""`safeclip embed` and `safeclip_sdk.runtime.embed.embed` on a real tiny model and real files."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from safeclip_sdk.cli.main import cli
from safeclip_sdk.runtime.embed import embed
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.errors import DataError, ModelLoadError


def _picture(seed: int, size=(72, 56)) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([x * 3 + seed * 40, y * 4, (x + y) * 2], axis=-1) % 256
    image = Image.fromarray(np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8))
    ImageDraw.Draw(image).ellipse((10 + seed, 8, 40 + seed, 30), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    for seed, name in enumerate(["z.png", "a.jpg", "b/c.png", "b/a.webp", "m.JPEG"]):
        _picture(seed).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"skipped: hidden")
    return folder


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir)


def test_folder_to_npy_with_ids_and_failures(image_folder, tmp_path, tiny_model_dir, encoder):
    whole = (image_folder / "z.png").read_bytes()
    (image_folder / "b" / "broken.png").write_bytes(whole[:len(whole) // 2])
    output = tmp_path / "out" / "images.npy"
    output.parent.mkdir()
    report = embed(tiny_model_dir, image_folder, output, chunk_size=2, progress=False)

    ids = json.loads((tmp_path / "out" / "images.npy.ids.json").read_text())
    assert ids == ["a.jpg", "b/a.webp", "b/c.png", "m.JPEG", "z.png"]
    embeddings = np.load(output)
    expected = encoder.encode_image([image_folder / name for name in ids])
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    failures = json.loads((tmp_path / "out" / "images.npy.failures.json").read_text())
    assert [f["id"] for f in failures] == ["b/broken.png"]
    assert failures[0]["reason"].startswith("corrupt or truncated image")
    assert (report.count, len(report.failures), report.chunks_total) == (5, 1, 3)
    assert not (tmp_path / "out" / ".images.npy.parts").exists(), "the work folder is removed at the end"


def test_text_file_to_parquet(tmp_path, tiny_model_dir, encoder):
    texts = tmp_path / "captions.txt"
    texts.write_text("a red car\n\na dog on a beach\nthe sea at night\n", encoding="utf-8")
    output = tmp_path / "texts.parquet"
    report = embed(tiny_model_dir, texts, output, chunk_size=2, progress=False)

    table = pq.read_table(output)
    assert str(table.schema.field("embedding").type) == "list<element: float>"
    assert table.column("id").to_pylist() == [1, 3, 4]
    rows = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = encoder.encode_text(["a red car", "a dog on a beach", "the sea at night"])
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    assert report.failures == [{"id": 2, "reason": "empty text"}]


def test_jsonl_ids_and_bad_rows(tmp_path, tiny_model_dir):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "x1", "text": "a cat"}\n\n{"id": "x2", "text": "a boat"}\n', encoding="utf-8")
    embed(tiny_model_dir, good, tmp_path / "good.npy", progress=False)
    assert json.loads((tmp_path / "good.npy.ids.json").read_text()) == ["x1", "x2"]

    duplicate = tmp_path / "dup.jsonl"
    duplicate.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"dup.jsonl:2: duplicate id \"a\" \(first on line 1\)"):
        embed(tiny_model_dir, duplicate, tmp_path / "dup.npy", progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.jsonl:2: invalid JSON"):
        embed(tiny_model_dir, broken, tmp_path / "broken.npy", progress=False)


def test_interrupted_run_resumes_without_recomputing(image_folder, tmp_path, tiny_model_dir):
    reference = embed(tiny_model_dir, image_folder, tmp_path / "reference.npy", chunk_size=2, progress=False)

    def interrupt_after_first_chunk(index, count):
        raise KeyboardInterrupt

    output = tmp_path / "resumed.npy"
    with pytest.raises(KeyboardInterrupt):
        embed(tiny_model_dir, image_folder, output, chunk_size=2, progress=False,
              on_chunk_done=interrupt_after_first_chunk)
    parts = tmp_path / ".resumed.npy.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["chunk-000000.json", "chunk-000000.npy", "state.json"]
    assert not output.exists()
    # the input list was fixed by the first run: a new file must not shift ids or join the run
    _picture(9).save(image_folder / "0-new.png")

    computed = []
    report = embed(tiny_model_dir, image_folder, output, chunk_size=2, progress=False,
                   on_chunk_done=lambda index, count: computed.append((index, count)))
    assert computed == [(1, 3), (2, 3)], "the finished chunk is reused, not recomputed"
    assert (report.chunks_reused, report.chunks_total) == (1, 3)
    assert json.loads((tmp_path / "resumed.npy.ids.json").read_text()) == \
        json.loads((tmp_path / "reference.npy.ids.json").read_text())
    np.testing.assert_array_equal(np.load(output), np.load(tmp_path / "reference.npy"))
    assert reference.count == report.count == 5


def test_resume_refuses_other_settings_and_no_resume_starts_over(image_folder, tmp_path, tiny_model_dir):
    def stop(index, count):
        raise KeyboardInterrupt

    output = tmp_path / "out.npy"
    with pytest.raises(KeyboardInterrupt):
        embed(tiny_model_dir, image_folder, output, chunk_size=2, progress=False, on_chunk_done=stop)
    with pytest.raises(DataError, match=r"different settings \(precision\).*--no-resume"):
        embed(tiny_model_dir, image_folder, output, precision="fp16", progress=False)
    computed = []
    report = embed(tiny_model_dir, image_folder, output, chunk_size=2, progress=False, resume=False,
                   on_chunk_done=lambda index, count: computed.append(index))
    assert computed == [0, 1, 2] and report.chunks_reused == 0


def test_cli_embed_and_one_line_errors(image_folder, tmp_path, tiny_model_dir):
    runner = CliRunner()
    output = tmp_path / "cli.npy"
    result = runner.invoke(cli, ["embed", str(tiny_model_dir), str(image_folder), str(output),
                                 "--batch-size", "2", "--chunk-size", "3"])
    assert result.exit_code == 0, result.output
    assert f"embedded 5 images -> {output}" in result.output
    assert np.load(output).shape == (5, 64)

    result = runner.invoke(cli, ["embed", str(tiny_model_dir), str(image_folder), str(tmp_path / "out.csv")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: {tmp_path / 'out.csv'}: output must end in .npy or .parquet"

    result = runner.invoke(cli, ["embed", str(tiny_model_dir), str(image_folder / "a.jpg"), str(output)])
    assert result.exit_code == 1
    assert "a single image file; pass the folder" in result.output


def test_every_item_failing_is_an_error_that_keeps_the_earlier_output(image_folder, tmp_path, tiny_model_dir):
    output = tmp_path / "images.npy"
    embed(tiny_model_dir, image_folder, output, progress=False)
    earlier = {path: path.read_bytes() for path in (output, tmp_path / "images.npy.ids.json")}
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("one.png", "two.jpg"):
        (broken / name).write_bytes(b"not an image at all")

    with pytest.raises(DataError) as info:
        embed(tiny_model_dir, broken, output, overwrite=True, progress=False)
    failures_path = tmp_path / "images.npy.failures.json"
    assert str(info.value) == (f"every one of the 2 images failed, so {output} was not written; the reasons are "
                               f"listed in {failures_path} (first: one.png: not an image or an unsupported format)")
    assert [failure["id"] for failure in json.loads(failures_path.read_text())] == ["one.png", "two.jpg"]
    assert {path: path.read_bytes() for path in earlier} == earlier
    assert not (tmp_path / ".images.npy.parts").exists()

    result = CliRunner().invoke(cli, ["embed", str(tiny_model_dir), str(broken), str(output), "--overwrite"])
    assert result.exit_code == 1
    assert "every one of the 2 images failed" in result.output and str(failures_path) in result.output


def test_a_model_that_fails_to_load_leaves_no_work_folder(tmp_path, tiny_model_dir, image_folder):
    texts = tmp_path / "texts.txt"
    texts.write_text("a red car\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="no-such-model"):
        embed(tmp_path / "no-such-model", texts, tmp_path / "out.npy", progress=False)
    assert not (tmp_path / ".out.npy.parts").exists()
    embed(tiny_model_dir, texts, tmp_path / "out.npy", progress=False)  # the next run is not blocked
    assert np.load(tmp_path / "out.npy").shape == (1, 64)


def test_a_text_file_that_is_not_utf8_is_named_by_line(tmp_path, tiny_model_dir):
    texts = tmp_path / "captions.txt"
    texts.write_bytes("a red car\n".encode() + "un café\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{texts}:2: not UTF-8 \(invalid continuation byte 0xe9"):
        embed(tiny_model_dir, texts, tmp_path / "out.npy", progress=False)
    assert not (tmp_path / ".out.npy.parts").exists()


def test_an_output_made_from_another_input_is_replaced_only_with_overwrite(tmp_path, tiny_model_dir):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("a red car\na dog on the grass\n", encoding="utf-8")
    second.write_text("a boat\nthe sea at night\na tall tree\n", encoding="utf-8")
    output = tmp_path / "texts.npy"
    embed(tiny_model_dir, first, output, progress=False)
    first_embeddings = np.load(output)

    def files() -> dict:
        return {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}

    before = files()
    with pytest.raises(DataError) as info:
        embed(tiny_model_dir, second, output, progress=False)
    assert str(info.value) == (f"{output} was made from {first} with model {tiny_model_dir}, not from {second}: "
                               f"pass --overwrite (overwrite=True) to replace it")
    assert files() == before and not (tmp_path / ".texts.npy.parts").exists()

    again = embed(tiny_model_dir, first, output, progress=False)  # the same command again is fine
    assert again.count == 2
    np.testing.assert_allclose(np.load(output), first_embeddings, atol=1e-6)

    def stop(index, count):
        raise KeyboardInterrupt

    before = files()
    with pytest.raises(KeyboardInterrupt):
        embed(tiny_model_dir, second, output, overwrite=True, chunk_size=1, progress=False, on_chunk_done=stop)
    assert files() == before, "an unfinished replacement leaves the old output as it was"
    report = embed(tiny_model_dir, second, output, overwrite=True, chunk_size=1, progress=False)
    assert report.chunks_reused == 1 and np.load(output).shape == (3, 64)
    assert json.loads((tmp_path / "texts.npy.ids.json").read_text()) == [1, 2, 3]
    assert embed(tiny_model_dir, second, output, progress=False).count == 3  # now made from the second file
