"""`ibnnet demo` as a newcomer runs it (shrunk to seconds): its console, its table, and every result in wandb."""
import json

from helpers import ENV, ibnnet
from wandb_files import read_run

from ibnnet.runs.wandb_results import flatten_metrics

TINY_DEMO = ["trainer.max_epochs=1", "data.train.num_samples=64", "data.val.0.num_samples=16",
             "data.val.1.num_samples=16", "data.augment.image_size=32", "data.augment.eval_resize=32",
             "trainer.check_val_every_n_epoch=1", "trainer.num_threads=1"]


def test_the_demo_puts_its_final_metrics_table_and_plot_in_wandb(tmp_path):
    env = dict(ENV, IBNNET_RUNS=str(tmp_path / "runs"), IBNNET_RESULTS=str(tmp_path / "results"))
    env.pop("IBNNET_PROGRESS", None)
    proc = ibnnet("demo", *TINY_DEMO, env=env)
    console = proc.stdout + proc.stderr
    lines = console.splitlines()
    # a console a person can read: our lines only, in a pipe no progress-bar frames
    assert "\r" not in console and "\x1b[" not in console
    assert all(ln.startswith(("[ibnnet]", "ibnnet:", "#", "|", "Values:", "Made under")) for ln in lines if ln.strip()), \
        console
    assert sum(ln.startswith("[ibnnet] epoch 1/1") for ln in lines) == 3
    runs = sorted((tmp_path / "runs" / "demo").glob("model=*"))
    assert [r.name.rsplit("-", 1)[0] for r in runs] == ["model=BN", "model=IBN-a", "model=IBN-b"]
    for run in runs:   # each run's summary holds its metrics.json
        metrics = json.loads((run / "metrics.json").read_text())
        (offline,) = (run / "wandb").glob("offline-run-*")
        summary = read_run(offline)["summary"]
        for key, value in flatten_metrics(metrics).items():
            if key.startswith(("metrics/", "best/")) or key in ("epochs", "wall_time_s"):
                assert summary[key] == value, (run.name, key)
        assert {"metrics/in-domain/top1_err", "metrics/cross-domain/top1_err"} <= set(summary)
    # the table and its plot: in the demo's results run, in the sweep's group
    (table_md,) = (tmp_path / "results" / "demo" / "variants").glob("*/table.md")
    (results_run,) = (table_md.parent / "wandb").glob("offline-run-*")
    logged = read_run(results_run)
    assert logged["run"].run_group == "demo" and logged["run"].job_type == "results"
    step = logged["history"][0]
    table = json.loads((results_run / "files" / step["table/path"]).read_text())
    bn = {row[1]: row[3] for row in table["data"] if row[0] == "BN"}
    bn_metrics = json.loads((runs[0] / "metrics.json").read_text())["metrics"]
    assert bn == {name: round(m["top1_err"], 4) for name, m in bn_metrics.items()}
    assert (results_run / "files" / step["plot/path"]).read_bytes()[:4] == b"\x89PNG"
    assert f"Outputs in {table_md.parent}/" in proc.stdout and "| IBN-b |" in proc.stdout
