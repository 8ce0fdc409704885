"""Every command the README shows works as written: the ones with a dry run are run with it (nothing trains,
nothing is submitted), and every config or experiment file the README or a command's help names exists."""
import re
import shlex
from pathlib import Path

import pytest
from test_cli import run_cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def readme_commands() -> list[str]:
    """The shell lines of the README's code blocks that call ``ibnnet`` (continuations joined)."""
    out, inside, line = [], False, ""
    for raw in README.read_text().splitlines():
        if raw.strip().startswith("```"):
            inside, line = not inside, ""
            continue
        if not inside:
            continue
        if raw.rstrip().endswith("\\"):
            line += raw.rstrip()[:-1] + " "
            continue
        line += raw
        for part in re.split(r"\s*&&\s*", line.strip()):
            words = shlex.split(part, comments=True)
            if words[:1] == ["ibnnet"]:
                out.append(part)
        line = ""
    return out


DRY_RUNNABLE = ("sweep", "sync")
COMMANDS = [c for c in readme_commands() if shlex.split(c, comments=True)[1] in DRY_RUNNABLE]


def test_the_readme_shows_sweeps_and_syncs():
    assert len(COMMANDS) >= 10 and any("--launcher slurm" in c for c in COMMANDS), COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_each_readme_command_dry_runs(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command, comments=True)[1:]
    if "--dry-run" not in words:
        words.append("--dry-run")
    code, out, err = run_cli(*words)
    assert code == 0, f"{command}\n{out}\n{err}"
    if "--launcher" in words and words[words.index("--launcher") + 1] == "slurm":
        sbatch = [ln for ln in out.splitlines() if ln.startswith("#SBATCH")]
        assert sbatch, out
        # the paper tables train on GPUs: each script asks for one GPU per process
        tasks = next(int(ln.split("=")[1]) for ln in sbatch if ln.startswith("#SBATCH --ntasks-per-node="))
        assert f"#SBATCH --gpus-per-node={tasks}" in sbatch, out


def test_the_project_commands_work_in_a_new_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "ibnnet init myproject" in readme_commands()
    code, out, err = run_cli("init", "myproject")
    assert code == 0, err
    monkeypatch.chdir(tmp_path / "myproject")
    code, out, err = run_cli("sweep", "ibn_table5", "--scale", "reduced", "--dry-run")
    assert code == 0 and "ibn_table5" in out, err


def named_files() -> set[str]:
    """configs/…yaml and experiments/…yaml paths named in the README, the docs and the commands' help."""
    texts = [README.read_text()] + [p.read_text() for p in (REPO / "docs").glob("*.md")]
    texts += [p.read_text() for p in (REPO / "ibnnet").rglob("*.py")]
    found = set()
    for text in texts:
        found |= set(re.findall(r"(?<![\w/.])((?:configs|experiments)/[\w/.-]+\.yaml)", text))
    return found


def test_every_named_config_file_exists():
    missing = sorted(p for p in named_files() if "<" not in p and not (REPO / p).is_file())
    assert not missing, f"named but not shipped: {missing}"


def test_slurm_sweeps_of_gpu_tables_request_their_gpus(tmp_path, monkeypatch):
    """ibn_table5 on SLURM without any launcher setting: the reduced scale's one GPU, the full scale's eight."""
    monkeypatch.chdir(tmp_path)
    for scale, gpus in (("reduced", 1), ("full", 8)):
        code, out, err = run_cli("sweep", "ibn_table5", "--scale", scale, "--launcher", "slurm", "--dry-run")
        assert code == 0, err
        assert f"#SBATCH --ntasks-per-node={gpus}" in out and f"#SBATCH --gpus-per-node={gpus}" in out, out
    # the CPU demo asks for none
    code, out, err = run_cli("sweep", "demo", "--launcher", "slurm", "--dry-run")
    assert code == 0 and "--gpus-per-node" not in out, out


def test_weight_files_the_readme_names_are_the_releases_names():
    """A file name in the README is the one `ibnnet weights list` shows for that model."""
    from ibnnet.models.zoo import RELEASES
    released = {r.file for r in RELEASES}
    named = set(re.findall(r"(?<![\w/.-])((?:resnet|resnext|se_resnet|densenet)\w*\.pth)", README.read_text()))
    assert named and not named - released, sorted(named - released)
