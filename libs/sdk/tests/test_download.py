"""Saving a download: into place only once complete, merging as a copy would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.common.artifacts import ArtifactError, pack_chunks
from sluice.sdk.download import Download, save


@pytest.fixture
def output(tmp_path: Path) -> Path:
    folder = tmp_path / "score"
    (folder / "parts").mkdir(parents=True)
    (folder / "predictions.csv").write_text("1\n2\n")
    (folder / "parts" / "0.txt").write_text("0")
    return folder


def download_of(folder: Path) -> Download:
    return Download(folder.name, folder.is_dir(), pack_chunks(folder))


def test_a_folder_merges_into_one_there(output: Path, tmp_path: Path) -> None:
    target = tmp_path / "dl" / "named-outputs" / "score"
    (target / "parts").mkdir(parents=True)
    (target / "predictions.csv").write_text("old")
    (target / "mine.txt").write_text("mine")
    assert save(download_of(output), target) == target
    assert (target / "predictions.csv").read_text() == "1\n2\n"
    assert (target / "parts" / "0.txt").read_text() == "0"
    assert (target / "mine.txt").read_text() == "mine"
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["named-outputs"]  # no leftovers


def test_a_download_that_fails_midway_writes_nothing(output: Path, tmp_path: Path) -> None:
    (output / "big.bin").write_bytes(bytes(3 << 20))  # several chunks

    def cut(chunks: Iterator[bytes]) -> Iterator[bytes]:
        yield next(chunks)
        raise ConnectionError("the batch service went away")

    broken = Download("score", True, cut(pack_chunks(output)))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ConnectionError):
        save(broken, tmp_path / "dl" / "named-outputs" / "score")
    assert sorted(tmp_path.iterdir()) == before


def test_a_merge_that_would_put_a_file_on_a_folder_changes_nothing(
    output: Path, tmp_path: Path
) -> None:
    """`predictions.csv` is a folder where the download goes, `parts` a file: refused before
    anything moves, so the files that would have merged first are still the old ones."""
    target = tmp_path / "dl" / "score"
    (target / "a-first.txt").parent.mkdir(parents=True)
    (target / "a-first.txt").write_text("old")
    (output / "a-first.txt").write_text("new")
    (target / "predictions.csv").mkdir()
    with pytest.raises(ArtifactError, match="is a file in one and a folder in the other"):
        save(download_of(output), target)
    assert (target / "a-first.txt").read_text() == "old"
    assert (target / "predictions.csv").is_dir()
    assert sorted(p.name for p in target.iterdir()) == ["a-first.txt", "predictions.csv"]
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["score"]  # no temporary left
