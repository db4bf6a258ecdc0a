"""The quick GPU check's pieces on a CPU: lever variants (bench/throughput.py), the profile summary
(bench/profile_summary.py) and the bundle and targets table (bench/gpu_quick.py), issue 22."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_quick  # noqa: E402
import profile_summary as ps  # noqa: E402
import throughput  # noqa: E402

# ---------------------------------------------------------------- variants


def test_variants_from_a_spec_a_file_and_the_levers_preset(tmp_path):
    spec = throughput.parse_variants("ro:train.compile_mode=reduce-overhead; two:optim.fused=true,train.fold_bn=true")
    assert [(v.name, v.overrides) for v in spec] == [
        ("baseline", ()), ("ro", ("train.compile_mode=reduce-overhead",)),
        ("two", ("optim.fused=true", "train.fold_bn=true"))]
    path = tmp_path / "v.yaml"
    path.write_text("baseline: []\nfused: {optim.fused: true}\nlists: ['lr_schedule.milestones=[8,10]']\n")
    got = throughput.parse_variants(str(path))
    assert [(v.name, v.overrides) for v in got] == [("baseline", ()), ("fused", ("optim.fused=true",)),
                                                    ("lists", ("lr_schedule.milestones=[8,10]",))]
    levers = throughput.parse_variants("levers")
    assert [v.name for v in levers] == ["baseline", "all", "reduce_overhead", "fold_bn", "fused"]
    assert set(levers[1].overrides) == {o for v in levers[2:] for o in v.overrides}
    assert throughput.parse_variants(None) == [throughput.Variant("baseline")]


@pytest.mark.parametrize("text, message", [
    ("nocolon", "has no ':'"), ("a:x=1;a:y=2", "given twice"), ("bad name:x=1", "must be 1-40"),
    ("v:notkeyvalue", "must look like key=value"), ("missing.yaml", "cannot read it")])
def test_malformed_variants_are_refused_with_the_form_to_use(text, message):
    with pytest.raises(throughput.VariantsError, match=message):
        throughput.parse_variants(text)


def _run_throughput(monkeypatch, tmp_path, *argv: str) -> dict:
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--device", "cpu", "--models", "small_cnn", "--objectives",
                                      "clean", "--batch-size", "8", "--steps", "1", "--repeats", "1",
                                      "--out", str(tmp_path), "--name", "t", *argv])
    throughput.main()
    return json.loads((tmp_path / "t.json").read_text())


def test_a_refused_variant_is_skipped_and_the_others_still_run(monkeypatch, tmp_path):
    """An override the validator refuses (a lever not on this branch) costs its own row only."""
    record = _run_throughput(monkeypatch, tmp_path, "--variants", "nolever:train.no_such_lever=true;slow:optim.lr=0.5")
    rows = {r["variant"]: r for r in record["rows"]}
    assert [r["variant"] for r in record["rows"]] == ["baseline", "nolever", "slow"]
    assert rows["nolever"]["status"] == "skipped" and "train.no_such_lever" in rows["nolever"]["note"]
    assert rows["baseline"]["status"] == rows["slow"]["status"] == "ok"
    assert rows["slow"]["ratio_to_baseline"] == pytest.approx(rows["slow"]["img_per_s"] / rows["baseline"]["img_per_s"],
                                                              rel=1e-9)
    md = (tmp_path / "t.md").read_text()
    assert "| small_cnn | clean | no | nolever | – | skipped |" in md


def test_a_bad_set_override_stops_before_any_measurement(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _run_throughput(monkeypatch, tmp_path, "--set", "optim.lrr=0.1")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "did you mean 'lr'" in err and "Traceback" not in err
    assert not (tmp_path / "t.json").exists()


def test_the_time_limit_leaves_rows_out_as_not_run(monkeypatch, tmp_path):
    record = _run_throughput(monkeypatch, tmp_path, "--objectives", "clean,fgsm", "--time-limit", "1e-9")
    assert [(r["status"], r["note"]) for r in record["rows"]] == [("not run", "time limit (0 s)")] * 2


# ---------------------------------------------------------------- profile summary

@pytest.mark.parametrize("name, group", [
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_cudnn", "convolution"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<__nv_bfloat16, float, int, 512, true, 1, true>", "batchnorm"),
    ("nvjet_tst_128x64_64x8_1x2_h_bz_coopA_NNT", "matmul"),
    ("void at::native::multi_tensor_apply_kernel<at::native::TensorListMetadata<3>>", "optimizer"),
    ("Memcpy HtoD (Pageable -> Device)", "copy/cast"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", "copy/cast"),
    ("void at::native::nchwToNhwcKernel<__nv_bfloat16>", "copy/cast"),
    ("triton_red_fused__native_batch_norm_legit_functional_0", "batchnorm"),
    ("triton_poi_fused__to_copy_add_clamp_sign_1", "pointwise/reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "pointwise/reduction"),
    ("aten::convolution_backward", "convolution"), ("aten::native_batch_norm", "batchnorm"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "autograd engine"),
    ("Optimizer.step#SGD.step", "optimizer"), ("aten::addmm", "matmul"), ("aten::_to_copy", "copy/cast"),
    ("aten::threshold_backward", "pointwise/reduction")])
def test_kernel_and_operator_names_fall_into_their_groups(name, group):
    assert ps.classify(name) == group


def test_a_nameless_kernel_takes_its_launching_operator_group():
    assert ps.classify("kernel_0x1f", ("aten::cudnn_convolution", "aten::convolution")) == "convolution"
    assert ps.classify("kernel_0x1f") == "other"


def test_device_summary_counts_busy_time_once_and_the_gaps_as_idle():
    kernels = [ps.KernelRecord("sm90_xmma_fprop_x", 400.0, 0.0), ps.KernelRecord("sm90_xmma_fprop_x", 400.0, 1000.0),
               ps.KernelRecord("nvjet_tst_x", 100.0, 1300.0),  # overlaps the second conv (another stream)
               ps.KernelRecord("multi_tensor_apply_kernel", 50.0, 1900.0)]
    ops = [ps.OpRecord("aten::cudnn_convolution", 2, 30.0, 800.0), ps.OpRecord("aten::mm", 1, 10.0, 100.0),
           ps.OpRecord("aten::_foreach_add_", 1, 5.0, 50.0)]
    s = ps.summarise(ops, kernels, device="cuda", wall_us=2000.0, steps=2, images=64)
    busy = 400 + 400 + 50  # the matmul lies inside the second convolution
    assert s.device_busy_ms == pytest.approx(busy / 1e3, rel=1e-12)
    assert s.device_kernel_sum_ms == pytest.approx(0.95, rel=1e-12)
    groups = {g["group"]: g["ms"] for g in s.groups}
    assert groups == pytest.approx({"convolution": 0.8, "matmul": 0.1, "optimizer": 0.05,
                                    "device idle (launch gaps, host work, syncs)": (2000 - busy) / 1e3}, rel=1e-12)
    assert [k["name"] for k in s.top_kernels] == ["sm90_xmma_fprop_x", "nvjet_tst_x", "multi_tensor_apply_kernel"]
    assert s.top_kernels[0]["calls"] == 2 and s.top_ops[0]["name"] == "aten::cudnn_convolution"
    assert s.top_ops[0]["share"] == pytest.approx(800 / 950, rel=1e-12)
    assert s.host_op_ms == pytest.approx(0.045, rel=1e-12)


def test_cpu_summary_puts_the_time_outside_operators_beside_their_groups():
    ops = [ps.OpRecord("aten::mkldnn_convolution", 4, 600.0, 0.0), ps.OpRecord("aten::add", 8, 100.0, 0.0)]
    s = ps.summarise(ops, [], device="cpu", wall_us=1000.0, steps=1, images=8)
    assert {g["group"]: g["ms"] for g in s.groups} == pytest.approx(
        {"convolution": 0.6, "pointwise/reduction": 0.1, "outside operators (Python, data)": 0.3}, rel=1e-12)
    assert s.device_busy_ms is None and [o["name"] for o in s.top_ops] == ["aten::mkldnn_convolution", "aten::add"]


def test_profile_of_a_real_cpu_step_finds_its_convolution():
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(4, 3, 16, 16)

    def step() -> int:
        conv(x).relu().sum().backward()
        return len(x)

    s = ps.profile(step, torch.device("cpu"), steps=1)
    groups = {g["group"] for g in s.groups}
    assert s.images == 4 and s.wall_ms > 0 and "convolution" in groups
    assert s.top_ops and all(o["self_cpu_ms"] >= 0 for o in s.top_ops)
    text = "\n".join(ps.markdown(s.to_dict(), "demo"))
    assert "| convolution |" in text and "### demo" in text


# ---------------------------------------------------------------- bundle and targets

def _tar(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_unpack_takes_only_flat_result_files_and_hides_machine_paths(tmp_path):
    bundle = _tar(tmp_path / "q.tar", {
        "peer_baseline_cuda.json": b'{"rows": {}}', "peer_baseline_cuda.md": b"ran in /opt/torch/.venv/bin/x\n",
        "../throughput_cuda.json": b"{}", "sub/solvers_cuda.json": b"{}", "notes.txt": b"x",
        "solvers_cuda.json": b"not json", "gpu_quick_cuda.log": b"log\n"}, link="throughput_cuda_levers.md")
    written = gpu_quick.unpack(bundle, tmp_path / "res")
    assert sorted(written) == ["gpu_quick_cuda.log", "peer_baseline_cuda.json", "peer_baseline_cuda.md"]
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == sorted(written)
    assert "/opt/" not in (tmp_path / "res" / "peer_baseline_cuda.md").read_text()
    with pytest.raises(gpu_quick.BundleError, match="not a readable tar"):
        gpu_quick.unpack(tmp_path / "res" / "gpu_quick_cuda.log", tmp_path / "res")


def test_pack_keeps_result_files_only(tmp_path):
    for name in ("throughput_cuda_levers.json", "steps.txt", "solvers_cuda.md"):
        (tmp_path / name).write_text("{}")
    assert gpu_quick.pack(tmp_path, tmp_path / "out" / "g.tar") == ["solvers_cuda.md", "throughput_cuda_levers.json"]


def _record(selector: str, full: float, coreset: float, passes: list[float]) -> dict:
    epochs = [{"phase": "full", "train_time": full, "selection": None}] * 2
    epochs += [{"phase": "coreset", "train_time": coreset, "selection": {"total_s": p}} for p in passes]
    return {"schedule": {"selector": selector}, "epochs": epochs}


def test_selection_share_projected_to_the_paper_schedule():
    rec = _record("gradmatch", 10.0, 5.0, [1.0, 3.0, 2.0])
    measured, projected = gpu_quick.paper_share(rec)
    assert measured == pytest.approx(6.0 / (20 + 15 + 6), rel=1e-12)
    # paper: 30 full epochs, 90 coreset epochs, selections at 30, 50, 70, 90, 110
    assert projected == pytest.approx(5 * 2.0 / (30 * 10 + 90 * 5 + 5 * 2.0), rel=1e-12)
    assert gpu_quick.paper_share(_record("full", 10.0, 5.0, [])) is None


def test_summary_sets_each_figure_against_its_target(tmp_path):
    def row(objective, compile, variant, img, frac=None, status="ok"):
        return {"objective": objective, "compile": compile, "variant": variant, "img_per_s": img, "status": status,
                "fraction_of_measured_bf16_peak": frac, "ratio_to_baseline": None, "note": ""}

    rows = [row("pgd10", False, "baseline", 5870.0, 0.19), row("pgd10", True, "baseline", 9971.0, 0.336),
            row("pgd10", True, "all", 16000.0, 0.52), row("trades10", True, "baseline", 8169.0, 0.32),
            row("trades10", True, "fused", None, status="skipped")]
    (tmp_path / "throughput_cuda_levers.json").write_text(json.dumps(
        {"machine": {"gpu": "NVIDIA H200", "torch": "2.11", "git": "abc1234"}, "bf16_ceiling_tflops": 788.0,
         "rows": rows}))
    (tmp_path / "peer_baseline_cuda.json").write_text(json.dumps({"rows": {
        "advtrain": {"img_per_s": 9900.0, "compiled": True, "advtrain_speedup": 1.0},
        "bf16": {"img_per_s": 6000.0, "advtrain_speedup": 1.65}, "compiled": {"img_per_s": 9500.0,
                                                                              "advtrain_speedup": 1.04}}}))
    (tmp_path / "solvers_cuda.json").write_text(json.dumps({"craig_greedy": [{"rows": [
        {"n": 50000, "d": 10, "greedy": "host", "seconds": 10.9, "same_coreset": True},
        {"n": 50000, "d": 10, "greedy": "batched", "seconds": 0.4, "same_coreset": True}]}]}))
    campaign = tmp_path / "campaign"
    campaign.mkdir()
    (campaign / "gradmatch_0.5_seed0.json").write_text(json.dumps(_record("gradmatch", 5.0, 2.5, [8.3] * 5)))
    lines = gpu_quick.summary_lines(tmp_path, "cuda", campaign, ["smoke rc=0 40s"])
    table = {line.split(" | ")[1]: line for line in lines if line.startswith("| 1 |") or line.startswith("| 3 |")
             or line.startswith("| 5 |")}

    def verdict(prefix: str) -> str:
        (line,) = [v for k, v in table.items() if k.startswith(prefix)]
        return line.rstrip(" |").rsplit(" | ", 1)[1]

    assert verdict("PGD-10 AT, compiled, as today") == "missed"
    assert verdict("PGD-10 AT, compiled, best lever `all`") == "**met**"
    assert verdict("TRADES-10 AT, compiled, as today") == "missed"
    assert verdict("advtrain (compiled, 9,900 img/s) vs bf16") == "**met**"
    assert verdict("advtrain (compiled, 9,900 img/s) vs that loop") == "missed"
    assert verdict("CRAIG per class 50,000 × 10, batched") == "**met**"
    share = 5 * 8.3 / (30 * 5.0 + 90 * 2.5 + 5 * 8.3)
    (sel,) = [v for k, v in table.items() if k.startswith("selection share")]
    assert f"| {100 * share:.1f}% | ≤ 3% | missed |" in sel
    assert any("lever variants refused" in k and "fused" in v for k, v in table.items())
    assert "Steps: smoke rc=0 40s" in lines


def test_records_from_a_cuda_profile_attach_each_kernel_to_its_launching_operator():
    """The CUDA side of the reader, on an event list shaped as torch's (no GPU needed)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def span(start, end):
        return SimpleNamespace(start=start, end=end)

    conv = SimpleNamespace(name="aten::cudnn_convolution", device_type=DeviceType.CPU, cpu_parent=None,
                           kernels=[SimpleNamespace(name="kernel_a", duration=40.0)])
    conv.cpu_parent = SimpleNamespace(name="aten::convolution", cpu_parent=None)
    events = [conv, SimpleNamespace(name="kernel_a", device_type=DeviceType.CUDA, time_range=span(10.0, 50.0)),
              SimpleNamespace(name="Memcpy DtoD", device_type=DeviceType.CUDA, time_range=span(60.0, 65.0))]
    averages = [SimpleNamespace(key="aten::cudnn_convolution", count=1, self_cpu_time_total=7.0,
                                self_device_time_total=40.0, device_type=DeviceType.CPU),
                SimpleNamespace(key="kernel_a", count=1, self_cpu_time_total=0.0, self_device_time_total=40.0,
                                device_type=DeviceType.CUDA)]
    prof = SimpleNamespace(key_averages=lambda: averages, events=lambda: events)
    ops, kernels = ps.records_from_profiler(prof)
    assert ops == [ps.OpRecord("aten::cudnn_convolution", 1, 7.0, 40.0)]
    assert kernels == [ps.KernelRecord("kernel_a", 40.0, 10.0, ("aten::cudnn_convolution", "aten::convolution")),
                       ps.KernelRecord("Memcpy DtoD", 5.0, 60.0, ())]
    s = ps.summarise(ops, kernels, device="cuda", wall_us=100.0, steps=1, images=2)
    assert {g["group"]: g["ms"] for g in s.groups} == pytest.approx(
        {"convolution": 0.04, "copy/cast": 0.005, "device idle (launch gaps, host work, syncs)": 0.055}, rel=1e-12)


# ---------------------------------------------------------------- before / after


def _throughput_file(path: Path, commit: str, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"command": f"python bench/throughput.py --name {path.stem}",
                                "git": {"commit": commit}, "rows": rows}))
    return path


def _row(objective: str, img_per_s: float, seconds: list[float], images: int = 64, **extra) -> dict:
    return {"model": "m", "objective": objective, "compile": False, "variant": "baseline", "status": "ok",
            "images": images, "img_per_s": img_per_s, "median_seconds": sorted(seconds)[len(seconds) // 2],
            "all_seconds": seconds, **extra}


def test_before_after_pairs_the_common_rows_with_medians_ranges_and_best_passes(tmp_path):
    import throughput_ab

    before = [_throughput_file(tmp_path / f"b{i}.json", "aaa", [_row("pgd10", v, [64 / v, 0.8]),
                                                                  _row("clean", 900.0, [0.1])])
              for i, v in enumerate((100.0, 110.0, 90.0))]
    after = [_throughput_file(tmp_path / f"a{i}.json", "bbb",
                              [_row("pgd10", v, [64 / v, 64 / 160]), _row("fgsm", 300.0, [0.2]),
                               _row("clean", 0.0, [1.0], status="skipped")])
             for i, v in enumerate((120.0, 80.0))]
    rows, sources = throughput_ab.compare(before, after)
    assert [r["objective"] for r in rows] == ["pgd10"]  # clean skipped after, fgsm never before
    (row,) = rows
    assert row["before"] == pytest.approx(100.0) and row["after"] == pytest.approx(100.0)
    assert row["before_range"] == pytest.approx([90.0, 110.0]) and row["after_range"] == pytest.approx([80.0, 120.0])
    assert row["best_before"] == pytest.approx(110.0) and row["best_after"] == pytest.approx(160.0)
    assert row["best_ratio"] == pytest.approx(160 / 110) and row["files"] == [3, 2]
    assert {s["git"] for s in sources["before"]} == {"aaa"} and len(sources["after"]) == 2


def test_before_after_writes_one_command_without_the_run_names(tmp_path):
    import subprocess

    _throughput_file(tmp_path / "tp_b.json", "aaa", [_row("pgd10", 100.0, [0.64])])
    _throughput_file(tmp_path / "tp_a.json", "bbb", [_row("pgd10", 50.0, [1.28])])
    done = subprocess.run([sys.executable, str(ROOT / "bench/throughput_ab.py"), "--before", "tp_b.json", "--after",
                           "tp_a.json", "--out", str(tmp_path), "--name", "ab"], cwd=tmp_path, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "ab.md").read_text()
    assert "Before: aaa; after: bbb" in text and "Each run: `python bench/throughput.py` (with" in text
    assert "--name tp_" not in text
    assert "| m | pgd10 | False | baseline | 100.0 |" in text and "| 0.500 |" in text
