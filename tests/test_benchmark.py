"""CPU smoke test of scripts/benchmark.py: a tiny run of every stage (steps, scans, pipeline) and the final table."""

from __future__ import annotations

import pytest

from scripts.benchmark import COLUMNS, OTHER_KERNELS, kernel_category, main, parse_args, summarise_kernels


def test_tiny_cpu_run_prints_the_table(capsys):
    argv = ["--networks", "mamba_unet", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0"]
    results = main([*argv, "--pipeline_iters", "2", "--num_workers", "0", "--device", "cpu"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == COLUMNS
    row = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert row[0] == "mamba_unet" and len(row) == len(COLUMNS)
    (result,) = results
    assert result.train_ms > 0 and result.infer_ms > 0 and result.peak_gib is None  # no CUDA memory stats on CPU
    assert result.scan_fwd_ms > 0 and result.scan_fwd_bwd_ms > 0 and "14 scan calls per step" in result.notes
    assert result.pipeline_img_s > 0 and 0.0 <= result.val_dice <= 1.0
    assert row[1] == f"{2000.0 / result.train_ms:,.1f}"


def test_unknown_network_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["--networks", "resnet"])
    assert "unknown network" in capsys.readouterr().err


def test_kernel_categories_of_real_kernel_names():
    assert kernel_category("void selective_scan_bwd_kernel<Selective_Scan_bwd_kernel_traits<32, 4>>") == "scan"
    assert kernel_category("_scan_fwd_seq_kernel") == "scan"  # the bundle's Triton scan
    assert kernel_category("sm90_xmma_gemm_f32f32_tf32f32_f32_nn_n_tilesize128x128x32") == "matmul"
    assert kernel_category("void cudnn::cnn::conv2d_grouped_direct_kernel<float>") == "conv"
    assert kernel_category("triton_red_fused_native_layer_norm_backward_12") == "norm"
    assert kernel_category("Memcpy DtoD (Device -> Device)") == "memcpy/memset"
    assert kernel_category("triton_poi_fused_add_mul_silu_7") == OTHER_KERNELS


def test_summarise_kernels_takes_the_union_of_overlapping_kernels_as_busy_time():
    activities = [  # 2 steps, times in us: two kernels overlap by 1 us, then a gap, then a contained one
        ("gemm_a", 0.0, 4.0),
        ("elementwise", 3.0, 6.0),
        ("gemm_a", 10.0, 14.0),
        ("elementwise", 11.0, 12.0),
    ]
    profile = summarise_kernels(activities, steps=2, top_k=1)
    assert profile.busy_ms == pytest.approx((6.0 + 4.0) / 2 / 1000.0)
    assert profile.count == 2.0
    assert profile.categories == {"matmul": (pytest.approx(0.004), 1.0), OTHER_KERNELS: (pytest.approx(0.002), 1.0)}
    assert profile.top == [("gemm_a", pytest.approx(0.004), 1.0)]
    with pytest.raises(ValueError, match="steps"):
        summarise_kernels(activities, steps=0)


def test_profile_option_prints_where_the_step_goes(capsys):
    argv = ["--networks", "unet", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1", "--device", "cpu"]
    (result,) = main([*argv, "--pipeline_iters", "0", "--profile", "2"])
    out = capsys.readouterr().out
    assert set(result.profiles) == {"train", "infer"}
    for what, step_ms in (("train", result.train_ms), ("infer", result.infer_ms)):
        profile = result.profiles[what]
        assert profile.steps == 2 and profile.busy_ms > 0 and profile.count > 0
        # on CPU the operators' self times are laid end to end, so the kinds add up to the busy time
        assert sum(ms for ms, _ in profile.categories.values()) == pytest.approx(profile.busy_ms)
        assert "conv" in profile.categories  # UNet's convolutions
        assert f"unet {what} step profile over 2 steps, operators (self CPU time): {profile.busy_ms:,.2f} ms" in out
        assert f"of the {step_ms:,.2f} ms timed step" in out
    assert out.count("| kind | ms/step | % of busy | calls/step |") == 2


def test_negative_profile_steps_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["--networks", "unet", "--profile", "-1"])
    assert "--profile" in capsys.readouterr().err


def test_cross_scan_impl_option_sets_the_copies(monkeypatch, capsys):
    from scripts.networks import mamba_unet

    monkeypatch.setattr(mamba_unet, "CROSS_SCAN_IMPL", mamba_unet.CROSS_SCAN_IMPL)  # restored after the test
    argv = ["--networks", "mamba_unet", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0"]
    (result,) = main([*argv, "--pipeline_iters", "0", "--device", "cpu", "--cross_scan_impl", "views"])
    assert mamba_unet.CROSS_SCAN_IMPL == "views" and result.train_ms > 0
    assert "copies: views" in capsys.readouterr().out


def test_tile_option_sets_triton_scan_constants_and_rejects_bad_ones(monkeypatch, capsys):
    from scripts import triton_scan

    monkeypatch.setattr(triton_scan, "TILES_BY_LENGTH", {})
    monkeypatch.setattr(triton_scan, "BWD_MAXNREG", triton_scan.BWD_MAXNREG)
    args = parse_args(["--tile", "BWD_MAXNREG=224", "--tile", "BWD_BLOCK_D@3136=4"])
    assert args.tile == [("BWD_MAXNREG", None, 224), ("BWD_BLOCK_D", 3136, 4)]
    with pytest.raises(SystemExit):
        parse_args(["--tile", "BWD_WHATEVER=4"])
    assert "tile setting 'BWD_WHATEVER=4'" in capsys.readouterr().err
    argv = ["--networks", "unet", "--size", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--device", "cpu"]
    main([*argv, "--pipeline_iters", "0", "--tile", "BWD_MAXNREG=224", "--tile", "BWD_BLOCK_D@3136=4"])
    assert triton_scan.BWD_MAXNREG == 224 and triton_scan.TILES_BY_LENGTH == {3136: {"BWD_BLOCK_D": 4}}
    assert "Triton scan tiles: " in capsys.readouterr().out
