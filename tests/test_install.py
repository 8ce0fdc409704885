"""ibnnet installed from its wheel into a fresh virtual environment, run from a folder that is not the checkout.

The wheel is installed without dependencies; the fresh environment reaches torch & co. through a ``.pth``
line naming the test environment's site-packages (installing the CUDA torch stack again would take a minute
and gigabytes per run). A ``.pth`` line only adds a folder to ``sys.path``: the editable-install hook in that
folder is not executed, so ``import ibnnet`` finds the wheel's copy, which the first check asserts.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, TINY

UV = os.environ.get("UV") or shutil.which("uv")   # `uv run` names itself in $UV
pytestmark = pytest.mark.skipif(UV is None, reason="needs uv (the README's setup installs it)")


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([UV, "build", "--wheel", "--out-dir", str(root / "dist"), str(REPO)], check=True,
                   capture_output=True, timeout=600)
    wheel = next((root / "dist").glob("ibnnet-*.whl"))
    venv = root / "venv"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    subprocess.run([UV, "pip", "install", "-q", "--python", str(python), "--no-deps", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IBNNET_", "PYTHONPATH", "VIRTUAL_ENV"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    return dict(python=python, venv=venv, site=site, work=work, env=env)


def _run(wheel_env, args, cwd=None, timeout=600):
    proc = subprocess.run([str(a) for a in args], cwd=cwd or wheel_env["work"], env=wheel_env["env"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_wheel_runs_from_any_folder(wheel_env):
    work, site = wheel_env["work"], wheel_env["site"]
    (work / "tiny.yaml").write_text(TINY)
    script = textwrap.dedent("""
        import contextlib, io, os, sys
        import ibnnet
        from ibnnet.cli import main
        print("FILE", ibnnet.__file__)
        def cli(*args):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(list(args))
            print(f"--- {' '.join(args)} -> {code}")
            print(out.getvalue())
            assert code == 0, (args, code)
        cli("sweep", "ibn_table5", "--dry-run")
        cli("sweep", "experiments/ibn_table3.yaml", "--dry-run")   # README paths work without a checkout
        from ibnnet.config import compose
        print("COMPOSED", compose("configs/imagenet_appearance.yaml").model.name)
        cli("sweep", "demo", "--launcher", "slurm", "--dry-run")
        cli("train", "tiny.yaml")
        cli("init", "proj")
    """)
    out = _run(wheel_env, [wheel_env["python"], "-c", script])
    # the wheel's copy ran, reading its shipped experiments and configs
    assert f"FILE {site / 'ibnnet' / '__init__.py'}" in out
    assert str(REPO) not in out.replace(f"FILE {site}", "")
    assert "experiment ibn_table5" in out and "ratio=0.25-" in out
    assert "experiment ibn_table3" in out and "COMPOSED resnet50_ibn_a" in out
    # the SLURM script runs the environment's interpreter from the submit folder, never from a checkout
    script_text = out.split("--- sweep demo --launcher slurm --dry-run")[1].split("\n--- ")[0]
    assert f"cd {work}" in script_text and str(wheel_env["python"]) in script_text
    # the user's run went to ./runs of the working folder, nothing into site-packages
    assert len(list((work / "runs").glob("*/*/metrics.json"))) == 1
    assert not any(p.name in ("runs", "results", "data") for p in site.iterdir())
    # `ibnnet init` copied every shipped file
    shipped = site / "ibnnet" / "shipped"
    for name in ("configs", "experiments"):
        files = sorted(p.relative_to(shipped / name) for p in (shipped / name).rglob("*.yaml"))
        assert files and files == sorted(p.relative_to(work / "proj" / name)
                                         for p in (work / "proj" / name).rglob("*.yaml"))


def test_project_files_shadow_shipped_ones(wheel_env):
    """A project's experiments/demo.yaml and configs/data/builtin_cls.yaml replace the shipped ones by name; the
    demo sweep of the console script trains there and writes its table to ./results."""
    proj = wheel_env["work"] / "proj"
    if not proj.is_dir():
        _run(wheel_env, [wheel_env["venv"] / "bin" / "ibnnet", "init", "proj"])
    demo = proj / "experiments" / "demo.yaml"
    text = demo.read_text()
    assert "IBN-b: resnet18_ibn_b" in text
    demo.write_text(text.replace("{BN: resnet18_bn, IBN-a: resnet18_ibn_a, IBN-b: resnet18_ibn_b}",
                                 "{BN: resnet18_bn}"))
    data = proj / "configs" / "data" / "builtin_cls.yaml"
    text = data.read_text()
    assert text.count("batch_size: 64") == 1   # (the demo config names its own evaluation sets: not this part's)
    data.write_text(text.replace("batch_size: 64", "batch_size: 16"))
    out = _run(wheel_env, [wheel_env["venv"] / "bin" / "ibnnet", "sweep", "demo", "logger=disabled",
                           "trainer.max_epochs=1", "trainer.num_threads=1", "trainer.enable_progress_bar=false",
                           "data.train.num_samples=32", "data.val.0.num_samples=16", "data.val.1.num_samples=16",
                           "data.augment.image_size=32", "data.augment.eval_resize=32"],
               cwd=proj)
    assert "model=IBN-a" not in out and "model=IBN-b" not in out          # the project's grid, not the shipped one
    assert [p.parent.name.split("-")[0] for p in (proj / "runs" / "demo").glob("*/metrics.json")] == ["model=BN"]
    # made under result-changing overrides (1 epoch, 32 px): in ./results, beside the demo's own table
    (table,) = (proj / "results" / "demo" / "variants").glob("*/table.md")
    assert "| BN |" in table.read_text()
    run_config = next((proj / "runs" / "demo").glob("*/config.yaml")).read_text()
    assert "batch_size: 16" in run_config                             # the project's data part
