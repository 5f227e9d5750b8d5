"""Issue 30 case 14, the CLI's part: a binary file named on the command line fails the run with its
name and reason; a bad option value is one error line with the valid choices, not the usage block."""
from __future__ import annotations

import json

import pytest

from retrieval.cli.root import main


def test_an_explicit_binary_file_fails_the_run_naming_it(tmp_path, capsys):
    blob = tmp_path / "tool"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nThe pelican lays its eggs on the ground.\n")
    store = str(tmp_path / "s")
    assert main(["index", str(blob), str(note), "--store", store, "--embedder", "hash-64"]) == 1
    err = capsys.readouterr().err
    assert f"error: {blob} was not indexed: binary file (ELF" in err, err
    assert main(["index", str(blob), "--store", store, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["skipped"][0]["reason"].startswith("binary file")


def test_a_binary_file_met_inside_a_folder_is_only_reported(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tool").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    (tmp_path / "d" / "note.md").write_text("# Note\n\nThe pelican lays its eggs on the ground.\n")
    assert main(["index", str(tmp_path / "d"), "--store", str(tmp_path / "s"), "--embedder", "hash-64"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_a_bad_choice_is_one_line_with_the_valid_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "x", "--store", str(tmp_path), "--mode", "foo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and "[--mmr]" not in err, err
    first = err.splitlines()[0]
    assert "invalid choice: 'foo'" in first and "hybrid" in first and "bm25" in first, err
    assert len(err.splitlines()) <= 2
