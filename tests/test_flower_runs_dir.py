"""``runs-dir`` (the run store a Flower run records into) is confined to the server's runs folder."""

from __future__ import annotations

import pytest

from flower_app.config import server_settings
from flower_app.output_dir import OutsideOutputDir, runs_root


@pytest.mark.parametrize("value", ["/etc/x", "../..", "sub/../../escape", "link/inside"])
def test_runs_dir_outside_the_runs_folder_is_refused_in_one_line(tmp_path, value):
    folder = tmp_path / "runs"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (folder / "link").symlink_to(tmp_path / "elsewhere")  # a symbolic link out does not get out
    with pytest.raises(OutsideOutputDir, match="outside the server's runs folder") as refused:
        server_settings({"runs-dir": value}, folder=tmp_path, runs_folder=folder)
    assert "\n" not in str(refused.value) and repr(value) in str(refused.value)


def test_runs_dir_inside_the_runs_folder_is_accepted(tmp_path, monkeypatch):
    folder = tmp_path / "runs"
    assert server_settings({"runs-dir": str(folder)}, runs_folder=folder).runs_dir == folder.resolve()
    assert server_settings({"runs-dir": "team-a"}, runs_folder=folder).runs_dir == folder.resolve() / "team-a"
    assert server_settings({"runs-dir": ""}, runs_folder=folder).runs_dir is None
    monkeypatch.delenv("FL_FLOWER_RUNS_DIR", raising=False)
    monkeypatch.setenv("FL_RUNS_DIR", str(tmp_path / "store"))
    assert runs_root() == (tmp_path / "store").resolve()  # the engine's and dashboard's run store
    monkeypatch.setenv("FL_FLOWER_RUNS_DIR", str(tmp_path / "server-runs"))
    assert runs_root() == (tmp_path / "server-runs").resolve()
    monkeypatch.delenv("FL_FLOWER_RUNS_DIR")
    monkeypatch.delenv("FL_RUNS_DIR")
    monkeypatch.setenv("FL_FLOWER_OUTPUT_DIR", str(tmp_path / "out"))
    assert runs_root() == (tmp_path / "out" / "runs").resolve()


def test_the_flwr_run_wrapper_finds_the_federation_and_the_run_id():
    from flower_app.run import positionals, run_id_of

    argv = [".", "loopback", "--stream", "--run-config", "runs-dir='/etc/x' seed=2", "--format=default"]
    assert positionals(argv) == [".", "loopback"]
    assert positionals(["--run-config", "a=1", "."]) == ["."]
    assert run_id_of("Using SuperLink\nSuccessfully started run 7207787571166180360\n") == 7207787571166180360
    assert run_id_of('{"success": true, "run-id": 42}') == 42 and run_id_of("error") is None
