"""The simfer command."""

from simfer.cli import main


def test_inspect_reports_a_foreign_file_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not a store")
    assert main(["inspect", str(bad)]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err
