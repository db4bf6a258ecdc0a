"""The campaign runner (bench/campaign.py): grids, slice planning, records, aggregate, unpack.

One test drives the real CLI (``advtrain run`` + ``advtrain eval`` in subprocesses) on a tiny grid:
runner → JSON → a second call that runs nothing → aggregate → unpack. The statistics are checked on
synthetic records against an independent computation.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import campaign  # noqa: E402
from campaign_grid import GridError, load_grid, selections  # noqa: E402

MACHINE_PATH = re.compile(r"(/work/|/root/|/home/|/tmp/|/private/|[A-Z]:\\\\)")


def _tiny_cifar(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, train_x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), train_y=np.arange(40) % 10,
             test_x=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), test_y=np.arange(20) % 10)
    return path


@pytest.mark.parametrize("name", ["cifar10_linf", "cifar10_trades", "smoke"])
def test_shipped_grids_validate_and_schedules_agree(name, tmp_path):
    """Every configuration of every shipped grid is a valid recipe; the planner reads its schedule right."""
    from advtrain.attacks.presets import resolve_eval_attacks
    from advtrain.config.load import load_recipe

    grid = load_grid(name)
    data = str(_tiny_cifar(tmp_path / "c10.npz"))
    models = {o.split("=", 1)[1] for o in grid.overrides if o.startswith("model.name=")}
    assert models <= {"resnet18_cifar"}
    # The validator runs a forward pass of the model: a small stand-in keeps this test fast (the
    # grid's model name is checked above; everything else is validated as the runner passes it).
    for spec in grid.runs(seeds=[grid.seeds[0]]):
        overrides = [o.replace("{data}", data) for o in spec.overrides]
        recipe = load_recipe(grid.recipe, [*overrides, "seed=0", "name=x", f"output.dir={tmp_path / 'x'}",
                                           "device=cpu", "model.name=small_cnn"])
        planned = grid.schedule(spec.config)
        selector = recipe.components["selector"]
        assert planned["selector"] == selector.name
        assert planned["epochs"] == recipe.schedule.epochs
        assert planned["warm_start"] == recipe.schedule.warm_start_epochs
        assert planned["select_every"] == recipe.schedule.select_every
        if selector.name != "full":
            assert math.isclose(planned["fraction"], selector.params.fraction)
    for ev in grid.evals:
        assert resolve_eval_attacks(list(ev.attacks))
    if name == "cifar10_linf":  # the paper's proportions: W = E/4, T = E/6, five selections as at 30, 50, ..., 110
        sched = grid.schedule("gradmatch_0.5")
        assert (sched["epochs"], sched["warm_start"], sched["select_every"]) == (12, 3, 2)
        assert selections(sched) == 5
        assert set(grid.configs) == {"full", "random_0.5", "gradmatch_0.5", "craig_0.5"}
        assert {e.name: e.n_examples for e in grid.evals} == {"pgd50": 10000, "aa": 1000}


def test_bad_grid_reports_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "recipe": "tests/assets/tiny.yaml", "seeds": [0, -1],
                                   "configs": {"a": ["selector=full", "seed=3"], "b": "oops"},
                                   "evals": [{"name": "e", "attacks": ["pgd3"]}], "prior": {"start_s": 1},
                                   "typo": 1}))
    with pytest.raises(GridError) as err:
        load_grid(str(bad))
    text = str(err.value)
    for part in ("typo: not a grid key", "seeds:", "configs.a: 'seed=3'", "configs.b: expected a list",
                 "evals[0]: needs name, attacks", "prior: needs start_s"):
        assert part in text, text
    assert campaign.main(["plan", str(bad), "--device", "cpu"]) == 2


def test_first_fit_plan_and_costs_from_measured_runs():
    grid = load_grid("smoke")
    specs = grid.runs()
    estimates = {s.tag: 10.0 * (i + 1) for i, s in enumerate(specs)}  # 10, 20, 30, ...
    picked = [s.tag for s in campaign.plan(grid, specs, estimates, 45.0)]
    assert picked == [specs[0].tag, specs[1].tag]  # 10 + 20 fit; 30 does not fit the 15 left, nor anything later
    picked = [s.tag for s in campaign.plan(grid, specs, {**estimates, specs[3].tag: 5.0}, 45.0)]
    assert picked == [specs[0].tag, specs[1].tag, specs[3].tag]  # a later, smaller run fills the gap
    # With no measured run the prior prices everything; a measured run replaces its pieces.
    prior = campaign.learn_costs(grid, [], "cpu")
    assert prior.measured == 0 and prior.full_epoch_s == grid.prior.full_epoch_s
    rec = _record("gradmatch_0.5", 0, "gradmatch", 0.5, {"clean": 0.9, "pgd5": 0.5, "aa1": 0.4}, full_s=3.0,
                  coreset_s=1.5, select_s=0.7, epochs=4, warm=1)
    full = _record("full", 0, "full", 1.0, {"clean": 0.9, "pgd5": 0.5, "aa1": 0.4}, full_s=3.0, epochs=4)
    costs = campaign.learn_costs(grid, [full, rec], "cpu")
    assert costs.measured == 2 and costs.full_epoch_s == 3.0  # epoch 0 (compile warm-up) left out
    assert math.isclose(costs.coreset_epoch(0.5), 1.5) and math.isclose(costs.selection("gradmatch"), 0.7)
    # Its own configuration is then predicted at its measured cost (run + evaluations) times the safety factor.
    spec = next(s for s in specs if s.config == "gradmatch_0.5")
    measured = rec["timing"]["run_wall_s"] + sum(rec["timing"]["eval_wall_s"].values())
    assert math.isclose(campaign.estimate(grid, spec, costs), measured * grid.prior.safety, rel_tol=1e-9)
    assert math.isclose(costs.start_s, 12.0)  # wall − steady part: 7 s of process + 5 s of warm-up
    assert campaign.learn_costs(grid, [full, rec], "NVIDIA H200").measured == 0  # other devices' runs do not count


def _record(config, seed, selector, fraction, accuracy, *, full_s=4.0, coreset_s=2.0, select_s=1.0, epochs=4,
            warm=1, warmup_s=5.0, device="cpu"):
    """A synthetic run record shaped like the runner's."""
    rows = []
    for e in range(epochs):
        coreset = selector != "full" and e >= warm
        train = (coreset_s if coreset else full_s) + (warmup_s if e == 0 else 0.0)
        sel = {"attack_s": 0.6 * select_s, "features_s": 0.3 * select_s, "solver_s": 0.1 * select_s,
               "total_s": select_s, "size": 16} if coreset else None
        rows.append({"epoch": e, "phase": "coreset" if coreset else "full", "train_time": train,
                     "epoch_time": train + (select_s if coreset else 0.0), "samples": 32, "coreset_size": None,
                     "train_loss": 1.0, "lr": 0.1, "selection": sel})
    return {"schema": campaign.SCHEMA, "grid": "smoke", "config": config, "seed": seed, "recipe": "r.yaml",
            "overrides": [], "data": "synthetic", "git": {"commit": "abc", "dirty": False}, "device": device,
            "schedule": {"selector": selector, "fraction": fraction, "epochs": epochs, "warm_start": warm,
                         "select_every": 1, "skip_epochs": 0},
            "epochs": rows, "timing": {"run_wall_s": sum(r["epoch_time"] for r in rows) + 7.0,
                                       "eval_wall_s": {"pgd": 3.0, "aa": 4.0}},
            "accuracy": accuracy, "n_examples": {k: 32 for k in accuracy}}


def _cell(md: str, row: str, column: str, table_header: str) -> str:
    """The cell of a Markdown table (found by its header's first cell) at (row label, column name)."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {table_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    col = next(i for i, h in enumerate(header) if h.startswith(column))
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] == row:
            return cells[col]
    raise AssertionError(f"no row {row!r} in table {table_header!r}")


def test_aggregate_statistics_against_an_independent_computation(tmp_path):
    rng = np.random.default_rng(7)
    acc = {c: rng.uniform(0.3, 0.6, 3) for c in ("full", "random_0.5", "gradmatch_0.5")}
    records = []
    for config, selector, fraction in (("full", "full", 1.0), ("random_0.5", "random", 0.5),
                                       ("gradmatch_0.5", "gradmatch", 0.5)):
        for seed in range(3):
            a = float(acc[config][seed])
            records.append(_record(config, seed, selector, fraction, {"clean": a + 0.3, "pgd5": a, "aa1": a - 0.05},
                                   select_s=0.0 if selector == "random" else 1.0))
    records.append(_record("craig_0.5", 0, "craig", 0.5, {"clean": 0.8, "pgd5": 0.44, "aa1": 0.4}))  # one seed
    results = tmp_path / "results"
    for rec in records:
        campaign.write_json_atomic(results / "smoke" / f"{rec['config']}_seed{rec['seed']}.json", rec)
    assert campaign.main(["aggregate", "smoke", "--results", str(results), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "campaign_smoke.md").read_text()
    assert (tmp_path / "campaign_smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not MACHINE_PATH.search(md), MACHINE_PATH.search(md)
    g = acc["gradmatch_0.5"]
    assert _cell(md, "gradmatch_0.5", "pgd5", "configuration") == f"{100 * g.mean():.2f} ± {100 * g.std(ddof=1):.2f}"
    assert _cell(md, "craig_0.5", "pgd5", "configuration") == "44.00 ± –"  # one seed: no spread
    for other in ("random_0.5", "full"):
        d = acc["gradmatch_0.5"] - acc[other]
        se = d.std(ddof=1) / math.sqrt(3)
        row = f"gradmatch_0.5 − {other}"
        lines = [ln for ln in md.splitlines() if ln.startswith(f"| {row} | pgd5 |")]
        assert lines == [f"| {row} | pgd5 | {100 * d.mean():+.2f} ± {100 * se:.2f} | 3 | {d.mean() / se:+.1f} |"]
    one_pair = 0.44 - acc["random_0.5"][0]  # craig has seed 0 only: one pair, no standard error
    assert f"| craig_0.5 − random_0.5 | pgd5 | {100 * one_pair:+.2f} ± – | 1 | – |" in md
    # Speed: loop = Σ train + Σ selection; measured speed-up = mean full loop / own loop; ideal E/(W+(E−W)f).
    full_loop = 4 * 4.0 + 5.0
    gm_loop = 4.0 + 5.0 + 3 * 2.0 + 3 * 1.0
    assert _cell(md, "gradmatch_0.5", "loop s", "configuration | loop s") == f"{gm_loop:.1f} ± 0.0"
    assert _cell(md, "gradmatch_0.5", "speed-up measured", "configuration | loop s") == \
        f"{full_loop / gm_loop:.2f} ± 0.00"
    assert _cell(md, "gradmatch_0.5", "ideal", "configuration | loop s") == f"{4 / (1 + 3 * 0.5):.2f}×"
    assert _cell(md, "gradmatch_0.5", "steady state", "configuration | loop s") == \
        f"{4 * 4.0 / (4.0 + 3 * 2.0 + 3 * 1.0):.2f}×"
    assert _cell(md, "gradmatch_0.5", "selection share", "configuration | loop s") == \
        f"{100 * 3.0 / gm_loop:.1f} ± 0.0%"


def test_unpack_takes_only_well_formed_records(tmp_path):
    good = _record("full", 1, "full", 1.0, {"clean": 0.5})
    mismatched = _record("full", 2, "full", 1.0, {"clean": 0.5})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, rec in (("smoke/full_seed1.json", good), ("smoke/full_seed3.json", mismatched),
                          ("../escape_seed0.json", good), ("smoke/x.txt", good)):
            raw = json.dumps(rec).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    tar_path = tmp_path / "c.tar"
    tar_path.write_bytes(buffer.getvalue())
    results = tmp_path / "results"
    written = campaign.unpack(tar_path, results)
    assert [Path(w).name for w in written] == ["full_seed1.json"]
    assert sorted(p.name for p in results.rglob("*") if p.is_file()) == ["full_seed1.json"]
    assert not (tmp_path / "escape_seed0.json").exists()
    (results / "smoke" / "full_seed1.json").write_text(json.dumps({**good, "accuracy": {"clean": 0.9}}))
    assert campaign.unpack(tar_path, results) == []  # an existing, different record is kept
    assert json.loads((results / "smoke" / "full_seed1.json").read_text())["accuracy"] == {"clean": 0.9}


def test_scrub_leaves_no_machine_path():
    text = f"python bench/campaign.py run g --jpeg {campaign.ROOT}/local/gpu/c.npz --results /tmp/x/results"
    assert campaign.scrub(text) == "python bench/campaign.py run g --jpeg local/gpu/c.npz --results results"


def test_campaign_pipeline_through_the_real_cli(tmp_path, capsys):
    """runner → the run's JSON → a second call runs nothing → aggregate md + png → unpack the tar.

    One GradMatch run (a full-data warm-start epoch, then two selections) keeps the two child
    processes (``advtrain run``, ``advtrain eval``) within a few seconds each; the statistics over
    several configurations and seeds are checked on synthetic records above.
    """
    smoke = yaml.safe_load((ROOT / "bench" / "grids" / "smoke.yaml").read_text())
    smoke.update(name="pipe", seeds=[0], configs={"gradmatch_0.5": smoke["configs"]["gradmatch_0.5"]},
                 evals=[{"name": "pgd", "attacks": ["clean", "pgd2"], "n_examples": 16, "eps": "8/255",
                         "alpha": "4/255"}], report={"attacks": ["clean", "pgd2"], "headline": "pgd2"},
                 overrides=[o for o in smoke["overrides"] if not o.startswith("schedule.epochs")]
                 + ["schedule.epochs=3", "data.n_train=48"])
    grid = tmp_path / "pipe.yaml"
    grid.write_text(yaml.safe_dump(smoke, allow_unicode=True))
    results, runs, tar = tmp_path / "results", tmp_path / "runs", tmp_path / "out" / "campaign_pipe.tar"
    base = [str(grid), "--device", "cpu", "--results", str(results), "--runs", str(runs)]
    assert campaign.main(["run", *base, "--budget-s", "900", "--tar", str(tar)]) == 0
    files = sorted((results / "pipe").glob("*.json"))
    assert [f.name for f in files] == ["gradmatch_0.5_seed0.json"]
    text = files[0].read_text()
    assert not MACHINE_PATH.search(text) and str(tmp_path) not in text, MACHINE_PATH.search(text)
    rec = json.loads(text)
    report = json.loads((runs / "pipe" / "gradmatch_0.5_seed0" / "eval" / "pgd" / "report.json").read_text())
    assert rec["accuracy"] == {"clean": report["clean_acc"], "pgd2": report["robust_acc"]["pgd2"]}
    assert rec["n_examples"] == {"clean": 16, "pgd2": 16}
    assert rec["robust_bits"]["pgd2"]["bits"] == report["attacks"][0]["robust_bits"]  # clean is not an attack row
    assert [e["epoch"] for e in rec["epochs"]] == [0, 1, 2] and [e["phase"] for e in rec["epochs"]] == \
        ["full", "coreset", "coreset"]
    assert rec["timing"]["run_attempts"] == 1 and rec["timing"]["run_wall_s"] > 0
    assert set(rec["git"]) == {"commit", "dirty"} and rec["device"] == "cpu" and rec["seed"] == 0
    assert rec["schedule"] == {"selector": "gradmatch", "fraction": 0.5, "epochs": 3, "warm_start": 1,
                               "select_every": 1, "skip_epochs": 0}
    passes = [e["selection"] for e in rec["epochs"] if e["selection"]]
    assert len(passes) == 2 and all(p["total_s"] >= p["attack_s"] > 0 for p in passes)
    assert rec["overrides"][-2:] == ["selector=gradmatch", "selector.fraction=0.5"]
    with tarfile.open(tar) as t:
        assert t.getnames() == ["pipe/gradmatch_0.5_seed0.json"]
    stamp = files[0].stat().st_mtime_ns
    logs = {p: p.stat().st_size for p in (runs / "pipe").glob("*.log")}
    capsys.readouterr()
    assert campaign.main(["run", *base]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert files[0].stat().st_mtime_ns == stamp
    assert {p: p.stat().st_size for p in (runs / "pipe").glob("*.log")} == logs  # no child was started
    assert campaign.main(["aggregate", str(grid), "--results", str(results), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "campaign_pipe.md").read_text()
    assert not MACHINE_PATH.search(md) and str(tmp_path) not in md
    for attack in ("clean", "pgd2"):
        assert _cell(md, "gradmatch_0.5", attack, "configuration") == f"{100 * rec['accuracy'][attack]:.2f} ± –"
    loop = sum(e["train_time"] for e in rec["epochs"]) + sum(p["total_s"] for p in passes)
    assert _cell(md, "gradmatch_0.5", "loop s", "configuration | loop s") == f"{loop:.1f} ± –"
    assert _cell(md, "gradmatch_0.5", "selection share", "configuration | loop s") == \
        f"{100 * sum(p['total_s'] for p in passes) / loop:.1f} ± –%"
    assert (tmp_path / "campaign_pipe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(campaign.unpack(tar, tmp_path / "copy")) == 1
    assert (tmp_path / "copy" / "pipe" / files[0].name).read_bytes() == files[0].read_bytes()


def test_committed_campaign_results_hold_no_machine_path():
    """Every committed record and aggregate (bench/results/campaign*) is free of machine paths."""
    files = [p for p in (ROOT / "bench" / "results").glob("campaign*") if p.is_file()]
    files += [p for p in (ROOT / "bench" / "results" / "campaign").rglob("*.json")]
    for path in files:
        if path.suffix in (".md", ".json"):
            hit = MACHINE_PATH.search(path.read_text())
            assert hit is None, f"{path.name}: {hit.group(0)}"
    for grid in (ROOT / "bench" / "grids").glob("*.yaml"):
        assert MACHINE_PATH.search(grid.read_text()) is None, grid.name


def test_interrupted_run_resumes_else_restarts_cleanly(tmp_path, monkeypatch):
    grid = load_grid("smoke")
    spec = grid.runs(seeds=[0], configs=["gradmatch_0.5"])[0]
    folder = tmp_path / "runs" / "smoke" / spec.tag
    folder.mkdir(parents=True)
    (folder / "last.safetensors").write_bytes(b"")
    (folder / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    state = campaign.RunState.read(tmp_path / "runs", grid, spec)
    assert (state.epochs_done, state.trained, state.evals_done) == (2, False, frozenset())
    costs = campaign.learn_costs(grid, [], "cpu")
    assert campaign.estimate(grid, spec, costs, epochs_done=2) < campaign.estimate(grid, spec, costs)
    calls = []

    def fake(argv, log, hard_stop, fail_resume=False):
        calls.append(argv[-1])
        if fail_resume and argv[-1] == "--resume":
            raise campaign.CampaignError("recipe differs")
        return 2.5

    monkeypatch.setattr(campaign, "execute", fake)
    campaign.train(grid, spec, state, "cpu", None, False, 0.0)
    assert calls == ["--resume"] and state.walls["run"] == [2.5]
    calls.clear()
    monkeypatch.setattr(campaign, "execute", lambda *a: fake(*a, fail_resume=True))
    campaign.train(grid, spec, state, "cpu", None, False, 0.0)
    assert calls == ["--resume", "--overwrite"] and state.walls["run"] == [2.5]  # started over: earlier time dropped
    calls.clear()
    campaign.train(grid, spec, state, "cpu", None, True, 0.0)
    assert calls == ["--overwrite"]
    saved = json.loads((folder.parent / f"{spec.tag}.walls.json").read_text())
    assert saved["run"] == state.walls["run"]
