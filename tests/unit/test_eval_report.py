"""Evaluation defaults and reports: the checkpoint's ball, the step rule, AutoAttack stages,
per-example bits and the masking warning (issue 12)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from advtrain.attacks.fgsm import FGSMParams
from advtrain.attacks.perceptual.fast_lpa import FastLPAParams
from advtrain.attacks.pgd import PGDParams
from advtrain.attacks.presets import STEP_RULE, Ball, checkpoint_balls, list_eval_presets, resolve_eval_attack, step_for
from advtrain.eval.robust import AttackResult, EvalResult, evaluate
from advtrain.reports.evaluation import (
    AttackRow,
    EvaluationRecord,
    EvaluationReport,
    build_record,
    eval_markdown,
    eval_record,
    masking_warnings,
    pack_bits,
    per_example,
    unpack_bits,
)

# --- the step rule ------------------------------------------------------------------------------------

def test_step_rule_follows_eps():
    assert step_for(8 / 255, 20) == pytest.approx(2 / 255) and step_for(8 / 255, 50) == pytest.approx(2 / 255)
    assert step_for(8 / 255, 5) == pytest.approx(4 / 255)  # 2.5·ε/steps wins for few steps
    assert resolve_eval_attack("pgd50", eps=0.2).alpha == pytest.approx(0.05)  # was 2/255 whatever ε
    assert resolve_eval_attack("pgd50-l2", eps=1.0).alpha == pytest.approx(0.25)
    assert resolve_eval_attack("pgd50", eps=0.2, alpha=0.01).alpha == 0.01
    assert STEP_RULE in resolve_eval_attack("pgd50").describe()
    assert STEP_RULE not in resolve_eval_attack("pgd50", alpha=0.01).describe()
    assert any(STEP_RULE in what for _, what in list_eval_presets())


# --- the checkpoint's ball -------------------------------------------------------------------------

def test_checkpoint_balls_from_the_recipe():
    lp, lpips, trained = checkpoint_balls("adversarial", "pgd", PGDParams(eps=0.2), None)
    assert (lp.norm, lp.eps, lp.source) == ("linf", 0.2, "checkpoint: training attack (pgd)") and lpips is None
    assert trained == lp
    lp, _, trained = checkpoint_balls("trades", "pgd", PGDParams(norm="l2", eps=0.5), 0.25)
    assert (lp.norm, lp.eps, lp.source) == ("l2", 0.25, "checkpoint: recipe eval.eps") and trained.eps == 0.5
    lp, _, _ = checkpoint_balls("adversarial", "fgsm", FGSMParams(eps=4 / 255), None)
    assert (lp.norm, lp.eps) == ("linf", 4 / 255)
    lp, lpips, trained = checkpoint_balls("perceptual", "fast_lpa", FastLPAParams(bound=0.25), None)
    assert lp is None and (lpips.norm, lpips.eps) == ("lpips", 0.25) and trained == lpips
    lp, lpips, trained = checkpoint_balls("perceptual", "fast_lpa", FastLPAParams(bound=0.25), 0.1)
    assert (lp.norm, lp.eps) == (None, 0.1)  # eval.eps without an ℓp training ball: any ℓp norm
    assert checkpoint_balls("clean", "pgd", PGDParams(), None) == (None, None, None)



def test_checkpoint_ball_of_every_lp_training_attack():
    """ε flows from any registered ℓp training attack to evaluation (not from a hand-kept list of names)."""
    from advtrain.attacks import ATTACKS, TradesKLParams

    lp, _, trained = checkpoint_balls("trades", "trades_kl", TradesKLParams(norm="l2", eps=0.3), None)
    assert (lp.norm, lp.eps, lp.source) == ("l2", 0.3, "checkpoint: training attack (trades_kl)") and trained == lp
    for entry in ATTACKS.entries():
        params = entry.default_params()
        lp, lpips, _ = checkpoint_balls("adversarial", entry.name, params, None)
        assert (lp or lpips) is not None, f"attack '{entry.name}' gives evaluation no ball"


def test_resolve_with_the_checkpoint_ball():
    l2 = Ball("l2", 0.3, "checkpoint: training attack (pgd)")
    a = resolve_eval_attack("pgd50", default=l2)
    assert (a.norm, a.eps, a.eps_source, a.alpha) == ("l2", 0.3, l2.source, pytest.approx(0.075))
    aa = resolve_eval_attack("aa", default=l2)
    assert (aa.norm, aa.eps) == ("l2", 0.3)
    assert resolve_eval_attack("fgsm", default=l2).norm == "linf"  # ℓ∞ only: the preset ball
    assert resolve_eval_attack("fgsm", default=l2).eps_source == "preset default"
    at = resolve_eval_attack("pgd50@8/255", default=l2)  # an explicit bound is ℓ∞ unless -l2
    assert (at.norm, at.eps, at.eps_source) == ("linf", 8 / 255, "@ suffix")
    flag = resolve_eval_attack("pgd50", default=l2, eps=0.1, eps_text="0.1", eps_source="--eps")
    assert (flag.norm, flag.eps, flag.eps_source) == ("l2", 0.1, "--eps")
    linf = Ball("linf", 0.2, "checkpoint: training attack (pgd)")
    other = resolve_eval_attack("pgd50-l2", default=linf)
    assert (other.norm, other.eps, other.eps_source) == ("l2", 0.5, "preset default")
    lpips = Ball("lpips", 0.25, "checkpoint: training attack (fast_lpa)")
    p = resolve_eval_attack("ppgd10", lpips_default=lpips)
    assert (p.eps, p.eps_source) == (0.25, lpips.source)
    assert resolve_eval_attack("ppgd10@0.5", lpips_default=lpips).eps == 0.5
    assert resolve_eval_attack("stadv10", lpips_default=lpips).eps == 0.05  # not an LPIPS ball
    assert resolve_eval_attack("pgd50").eps_source == "preset default"


# --- AutoAttack stage by stage ----------------------------------------------------------------------

class _Source:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.labels = x, y

    def __len__(self) -> int:
        return len(self.labels)


class _Stub(nn.Module):
    """Logits = one-hot of the label stored in pixel 0 (clean), so an attack 'fools' by rewriting it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 3), 4).float()


class _FakeAA:
    """Each stage fools the examples listed for it, and records which examples it was given."""

    name, family = "aa", "aa"
    group = None

    def __init__(self, fools: dict[str, set[int]]) -> None:
        self.fools, self.seen = fools, {}

    def stages(self) -> tuple[str, ...]:
        return tuple(self.fools)

    def describe(self) -> str:
        return "fake"

    def run_stage(self, model, x, y, stage):
        ids = x[:, 0, 0, 1].round().long().tolist()
        self.seen.setdefault(stage, []).extend(ids)
        x_adv = x.clone()
        for row, i in enumerate(ids):
            if i in self.fools[stage]:
                x_adv[row, 0, 0, 0] = (y[row] + 1) % 4
        return x_adv


def _stub_data(n: int = 10) -> tuple[_Source, torch.Tensor]:
    y = torch.arange(n) % 4
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = y.float()
    x[:, 0, 0, 1] = torch.arange(n).float()  # the example's index, for the fake attack
    x[0, 0, 0, 0] = (y[0] + 1) % 4  # example 0 is wrong even clean
    return _Source(x, y), y


def test_each_stage_attacks_only_the_points_still_robust(monkeypatch):
    import advtrain.data as data

    source, _ = _stub_data()
    monkeypatch.setattr(data, "iterate_batches", lambda src, idx, bs, **kw: (
        (src.x[idx[i:i + bs]], src.labels[idx[i:i + bs]], idx[i:i + bs]) for i in range(0, len(idx), bs)))
    fake = _FakeAA({"apgd-ce": {1, 2, 3}, "apgd-t": {4}, "fab-t": set(), "square": {9}})
    seen = []
    result = evaluate(_Stub(), source, [fake], n_examples=10, batch_size=3, device=torch.device("cpu"),
                      num_classes=4, progress=lambda label, done, total: seen.append((label, done, total)))
    assert fake.seen == {"apgd-ce": list(range(1, 10)), "apgd-t": [4, 5, 6, 7, 8, 9],
                         "fab-t": [5, 6, 7, 8, 9], "square": [5, 6, 7, 8, 9]}
    res = result.attacks[0]
    assert res.stage_acc == pytest.approx({"apgd-ce": 0.6, "apgd-t": 0.5, "fab-t": 0.5, "square": 0.4})
    assert res.robust_acc == pytest.approx(0.4) and res.correct.tolist() == [False] * 5 + [True] * 4 + [False]
    assert ("aa · apgd-t (6 robust)", 6, 6) in seen


# --- per-example bits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 450])
def test_bits_round_trip(n):
    bits = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    assert torch.equal(unpack_bits(pack_bits(bits), n), bits)


def _report(correct: dict[str, list[bool]], stages: dict[str, list[bool]], *, aa: str = "aa",
            pgd_alpha: float | None = None) -> EvaluationRecord:
    n = len(next(iter(correct.values())))
    attacks = [resolve_eval_attack(name, eps=8 / 255, alpha=pgd_alpha if name.startswith("pgd") else None)
               for name in correct]
    attacks = [a if a.name != "aa" else resolve_eval_attack(aa, eps=8 / 255) for a in attacks]
    results = []
    for attack, (name, bits) in zip(attacks, correct.items(), strict=True):
        mask = torch.tensor(bits)
        stage = {k: torch.tensor(v) for k, v in stages.items()} if name == "aa" else {}
        results.append(AttackResult(attack.name, attack.describe(), float(mask.float().mean()), [], 1.0, mask, stage))
    clean = torch.ones(n, dtype=torch.bool)
    result = EvalResult(n, 1.0, [], results, None, 1.0, {}, torch.arange(n), clean)
    record = json.loads(json.dumps(eval_record(result, attacks)))  # what report.json holds
    assert record == build_record(result, attacks).to_json()
    return EvaluationRecord(**{k: v for k, v in record.items() if k not in ("robust_acc", "robust_bits_encoding")
                               and k != "attacks"}, attacks=[AttackRow.from_json(r) for r in record["attacks"]])


def _mask(n: int, robust: int) -> list[bool]:
    return [i < robust for i in range(n)]


def test_per_example_bits_in_the_record_round_trip():
    record = _report({"pgd50": _mask(20, 15), "aa": _mask(20, 12)}, {s: _mask(20, 12) for s in
                     ("apgd-ce", "apgd-t", "fab-t", "square")})
    rows = {r.name: r.to_json() for r in record.attacks}
    assert rows["pgd50"]["indices"] == [[0, 20]]
    assert per_example(rows["pgd50"]) == {i: i < 15 for i in range(20)}
    assert per_example(rows["aa"]) == {i: i < 12 for i in range(20)}
    assert unpack_bits(record.clean_bits, 20).all()


# --- the masking warning ---------------------------------------------------------------------------------

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
N = 200


def test_gap_from_the_gradient_stages_is_not_called_masking():
    # The audited case: PGD-50 80%, APGD-CE 75% (a weak PGD step), APGD-T 72.5% (the targeted loss),
    # FAB-T and Square find nothing more.
    stages = dict(zip(STAGES, (_mask(N, 150), _mask(N, 145), _mask(N, 145), _mask(N, 145)), strict=True))
    record = _report({"pgd50": _mask(N, 160), "aa": _mask(N, 145)}, stages)
    [warning] = masking_warnings(record)
    assert "masking" in warning and "not a sign of gradient masking" in warning
    assert "weaker than APGD" in warning and "APGD-CE 75.0%, APGD-T 72.5%, FAB-T 72.5%, Square 72.5%" in warning
    assert "7.5%" in warning and "APGD-CE (same loss, adaptive step) accounts for 5.0%" in warning
    assert "APGD-T (targeted loss) for 2.5%" in warning
    # exactly 3 points is not "more than 3 points"
    stages = {s: _mask(100, 63) for s in STAGES}
    assert masking_warnings(_report({"pgd50": _mask(100, 66), "aa": _mask(100, 63)}, stages)) == []


def test_square_finding_more_is_called_masking():
    stages = dict(zip(STAGES, (_mask(N, 150), _mask(N, 150), _mask(N, 150), _mask(N, 140)), strict=True))
    record = _report({"pgd50": _mask(N, 150), "aa": _mask(N, 140)}, stages)
    [warning] = masking_warnings(record)
    assert "Square (gradient-free) fooled 5.0%" in warning and "a sign of gradient masking" in warning


def test_pgd_finding_what_apgd_missed_is_called_masking():
    stages = {s: _mask(N, 150) for s in STAGES}
    pgd = [i < 140 or i >= 150 for i in range(N)]  # fools 140..149, which AutoAttack left robust
    record = _report({"pgd50": pgd, "aa": _mask(N, 150)}, stages, pgd_alpha=0.1)
    [warning] = masking_warnings(record)
    assert "pgd50 (α=0.1) fooled 10 examples (5.0%)" in warning and "gradient masking" in warning


def test_small_differences_and_reduced_budgets():
    stages = {s: _mask(N, 150) for s in STAGES}
    stages["square"] = _mask(N, 149)  # one example: within noise
    assert masking_warnings(_report({"pgd50": _mask(N, 152), "aa": _mask(N, 149)}, stages)) == []
    pgd = [i < 140 for i in range(N)]
    stages = {s: _mask(N, 150) for s in STAGES}
    [warning] = masking_warnings(_report({"pgd50": pgd, "aa": _mask(N, 150)}, stages, aa="aa5"))
    assert "non-standard" in warning and "too small a budget" in warning and "masking" not in warning


def test_markdown_is_readable():
    stages = dict(zip(STAGES, (_mask(N, 150), _mask(N, 145), _mask(N, 145), _mask(N, 145)), strict=True))
    record = _report({"pgd50": _mask(N, 160), "aa": _mask(N, 145)}, stages)
    record.clean_acc, record.union_acc = 0.99, 0.7251
    report = EvaluationReport("m", "c", "best", 3, "digits", "test", "Linf",
                              "ℓ∞ ε=0.2 (checkpoint: training attack (pgd))", "8/255", 8 / 255, "--eps", record, [],
                              1.0, "cpu", 0, "0", masking_warnings(record))
    text = eval_markdown(report)
    assert "| clean | none | no attack | 99.0% | |" in text
    assert "| aa | 72.5% | 72.5% | 72.5% | 72.5% |" not in text  # stage table lists each stage
    assert "| aa | 75.0% | 72.5% | 72.5% | 72.5% |" in text
    assert "72.5%" in text and "0.7251" not in text and "{" not in text and "eps 0" not in text
    assert f"step when not given: {STEP_RULE}" in text
    keys = list(report.to_json())  # the keys report.json has always had, in their order
    assert keys[:11] == ["model", "checkpoint", "checkpoint_kind", "epoch", "dataset", "split", "threat_model",
                         "training_threat_model", "eps", "eps_float", "eps_source"]
    assert keys[11:] == ["n_examples", "clean_acc", "per_class_clean_acc", "robust_acc", "union_acc",
                         "union_acc_by_group", "attacks", "clean_indices", "clean_bits", "robust_bits_encoding",
                         "time_s", "precision", "eps_sweep", "total_time_s", "device", "seed", "advtrain_version",
                         "warnings"]


# --- threat(): one accessor for every reader of ε / norm / bound ----------------------------------------

def test_every_attack_params_and_eval_attack_answer_threat():
    from advtrain.attacks import ATTACKS, section_threat
    from advtrain.attacks.perceptual.lpa import LPAParams
    from advtrain.attacks.perceptual.ppgd import PPGDParams
    from advtrain.attacks.recolor import ReColorAdvParams
    from advtrain.attacks.stadv import StAdvParams

    expected = {"pgd": ("linf", 8 / 255), "fgsm": ("linf", 8 / 255), "trades_kl": ("linf", 8 / 255),
                "fast_lpa": ("lpips", 0.5)}
    assert set(ATTACKS.names()) == set(expected)
    for entry in ATTACKS.entries():
        threat = entry.default_params().threat()
        assert (threat.metric, threat.bound) == expected[entry.name]
    assert PGDParams(norm="l2", eps=0.3).threat().norm == "l2" and FastLPAParams().threat().norm is None
    for params, metric in ((PPGDParams(bound=0.2), "lpips"), (LPAParams(bound=0.2), "lpips"),
                           (StAdvParams(bound=0.2), "flow"), (ReColorAdvParams(bound=0.2), "color")):
        assert (params.threat().metric, params.threat().bound) == (metric, 0.2)
    for name in ("pgd20-l2@0.3", "ppgd3@0.2", "stadv3@0.2", "recolor3@0.2", "fgsm@0.2"):
        attack = resolve_eval_attack(name)
        assert attack.threat().bound == pytest.approx(attack.eps) and attack.threat().metric == attack.norm
    assert resolve_eval_attack("pgd20@4/255").threat().describe() == "ℓ∞ ε=4/255"
    # what compare reads from a finished run's recipe.yaml (values as written there)
    assert section_threat({"name": "pgd", "norm": "l2", "eps": "8/255"}).bound == pytest.approx(8 / 255)
    assert section_threat({"name": "fast_lpa", "bound": 0.25}).metric == "lpips"
    for damaged in (None, {}, {"name": "nope"}, {"name": "pgd", "eps": "8/0"}, {"name": "pgd", "eps": [1]}, [1]):
        assert section_threat(damaged) is None, damaged
    assert section_threat({"name": "pgd", "oops": 1}).bound == pytest.approx(8 / 255)  # other keys: not its business


def test_overfit_probe_reads_the_training_threat():
    from advtrain.train.overfit import probe_attack

    assert (probe_attack(PGDParams(norm="l2", eps=0.3)).norm, probe_attack(PGDParams(norm="l2", eps=0.3)).eps) == \
        ("l2", 0.3)
    assert probe_attack(FGSMParams(eps=4 / 255)).eps == pytest.approx(4 / 255)
    assert (probe_attack(FastLPAParams()).norm, probe_attack(None).eps) == ("linf", 8 / 255)


# --- where reports go and where the data is ---------------------------------------------------------

def test_each_evaluation_gets_its_own_folder(tmp_path):
    from advtrain.commands.evaluate import new_report_folder

    folders = [new_report_folder(tmp_path / "eval", "pgd20_eps8-255") for _ in range(3)]
    assert [f.name for f in folders] == ["pgd20_eps8-255", "pgd20_eps8-255-2", "pgd20_eps8-255-3"]
    assert all(f.is_dir() for f in folders)


def test_report_label_names_attacks_and_eps():
    from advtrain.commands.evaluate import EvalOptions, report_label

    attacks = [resolve_eval_attack("pgd20@8/255"), resolve_eval_attack("aa-l2@1")]
    report = EvaluationReport("m", "c", None, 1, "d", "test", "L2+Linf", None, "8/255", 8 / 255, "@ suffix",
                              EvaluationRecord(0, 1.0, [], None, {}, [], [], "", 0.0), [], 0.0, "cpu", 0, "0")
    options = EvalOptions([], 1, 1, {}, [("0", 0.0)], "val", [], None, None, 0)
    assert report_label(report, attacks, options) == "pgd20@8-255+aa-l2@1_eps8-255_sweep_val"
    long = [resolve_eval_attack(f"pgd{i}") for i in range(1, 60)]
    assert len(report_label(report, long, options)) <= 80


def test_run_origin_undoes_the_output_dir(tmp_path):
    from advtrain.commands.evaluate import run_origin

    ckpt = tmp_path / "runs" / "tiny" / "last.safetensors"
    assert run_origin(ckpt, "runs/tiny") == tmp_path.resolve()
    assert run_origin(ckpt, "./runs/tiny") == tmp_path.resolve()
    for moved in ("runs/other", "elsewhere/runs/tiny/x", "../runs/tiny", "~/runs/tiny", str(tmp_path / "runs/tiny"),
                  "", None, 3):
        assert run_origin(ckpt, moved) is None
