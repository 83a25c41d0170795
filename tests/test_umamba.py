"""Tests of scripts/networks/umamba.py and mamba_layer.py (U-Mamba_Bot / U-Mamba_Enc, reference spec section 6) and
of their config overrides (configs/networks/umamba_*.json, configs/deep_supervision.json)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import BUNDLE_ROOT, bundle_cli, config_list
from ignite.engine import Events
from monai.losses import DeepSupervisionLoss, DiceCELoss
from test_configs import parser_for
from test_zoo_checks import config_problems

from scripts.networks.mamba_layer import Mamba, MambaLayer
from scripts.networks.umamba import UMambaBot, UMambaEnc, deep_supervision_weights, default_topology

CONFIGS = BUNDLE_ROOT / "configs"
META = ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]

# Spec section 6: the nnU-Net plan for 224 x 224 ACDC patches, counted by building U-Mamba's own classes.
BOT_PARAMS, BOT_MAMBA_PARAMS, ENC_PARAMS = 28_760_276, 1_695_744, 27_556_250


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """The tensors here are tiny: with one thread no op waits on an OpenMP barrier of a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mamba_layout(net: torch.nn.Module) -> list[tuple[int, int, bool]]:
    """(stage, d_model, channel_token) of every Mamba layer of the encoder."""
    return [(s, m.dim, m.channel_token) for s, m in enumerate(net.encoder.mamba_layers) if isinstance(m, MambaLayer)]


# ------------------------------------------------------------------------------------------ architecture (spec 6)


def test_default_topology_is_the_acdc_plan():
    plan = default_topology(6)
    assert plan == {
        "features": [32, 64, 128, 256, 512, 512],
        "strides": [1, 2, 2, 2, 2, 2],
        "encoder_blocks": [2, 2, 2, 1, 1, 1],
        "decoder_blocks": [2, 2, 2, 1, 1],
    }
    with pytest.raises(ValueError, match="at least 2 stages"):
        default_topology(1)


def test_parameter_counts_match_the_spec():
    bot, enc = UMambaBot(), UMambaEnc()
    assert count(bot) == BOT_PARAMS
    assert mamba_layout(bot) == [(5, 512, False)] and count(bot.encoder.mamba_layers) == BOT_MAMBA_PARAMS
    assert count(enc) == ENC_PARAMS
    # Stage 1: 64 channels over 112^2 tokens, stage 3: 256 over 28^2, stage 5: channel tokens of d_model 7*7.
    assert mamba_layout(enc) == [(1, 64, False), (3, 256, False), (5, 49, True)]
    assert bot.num_outputs == enc.num_outputs == 5


def small_bot(**kwargs) -> UMambaBot:
    return UMambaBot(n_stages=4, features=(8, 16, 32, 64), **kwargs)


def small_enc(**kwargs) -> UMambaEnc:
    """5 stages (odd): Mamba after stages 0, 2 (spatial tokens) and 4 (2x2 <= 64 channels: channel tokens)."""
    return UMambaEnc(input_size=(32, 32), n_stages=5, features=(8, 16, 32, 64, 64), **kwargs)


@pytest.mark.parametrize("make", [small_bot, small_enc], ids=["bot", "enc"])
def test_output_shapes_and_deep_supervision(make):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    plain, supervised = make(), make(deep_supervision=True)
    supervised.load_state_dict(plain.state_dict())  # the option adds no parameters
    out = plain(x)
    assert out.shape == (2, 4, 32, 32)  # training mode without deep supervision: one tensor
    out.sum().backward()  # ... which leaves the lower heads without gradient (DistributedDataParallel must know)
    unused = [n for n, p in plain.named_parameters() if p.grad is None]
    assert unused and all(n.startswith("decoder.seg_layers.") for n in unused)
    assert plain.unused_parameters_in_training and not supervised.unused_parameters_in_training
    heads = supervised(x)
    assert isinstance(heads, list) and len(heads) == supervised.num_outputs
    assert [tuple(h.shape) for h in heads] == [(2, 4, 32 // 2**i, 32 // 2**i) for i in range(supervised.num_outputs)]
    supervised.eval()
    plain.eval()
    with torch.no_grad():
        full = supervised(x)
        assert isinstance(full, torch.Tensor) and full.shape == (2, 4, 32, 32)
        torch.testing.assert_close(full, plain(x))
        torch.testing.assert_close(full, heads[0].detach())  # InstanceNorm: no running stats, same in both modes


def test_enc_layout_for_an_odd_stage_count_and_input_checks():
    net = small_enc()
    assert mamba_layout(net) == [(0, 8, False), (2, 32, False), (4, 4, True)]
    # Backward through a Mamba layer followed by a stride-2 1x1 conv (a channels-last input there segfaults in
    # oneDNN on CPU, so the layer must hand back a contiguous map).
    net(torch.randn(1, 1, 32, 32)).square().mean().backward()
    assert net.encoder.stages[1][0].skip.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="built for input_size"):
        net(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        small_bot()(torch.randn(1, 1, 36, 36))
    with pytest.raises(ValueError, match=r"expects input \(B, 1, H, W\)"):
        small_bot()(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="decoder_blocks needs 3 entries"):
        UMambaBot(n_stages=4, decoder_blocks=(1, 1))


def test_deep_supervision_weights_exclude_the_lowest_resolution():
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    # With MONAI's DeepSupervisionLoss the lowest-resolution head gets no gradient, the others do.
    torch.manual_seed(0)
    net = small_bot(deep_supervision=True)
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=deep_supervision_weights(3))
    loss(net(torch.randn(2, 1, 32, 32)), torch.randint(0, 4, (2, 1, 32, 32)).float()).backward()
    lowest, *others = net.decoder.seg_layers
    assert lowest.weight.grad.abs().max() == 0
    assert all(head.weight.grad.abs().max() > 0 for head in others)


# ---------------------------------------------------------------------------------------------- the Mamba module


def mamba_state_shapes(d_model: int, d_state: int, d_conv: int, expand: int) -> dict[str, tuple[int, ...]]:
    """mamba_ssm.modules.mamba_simple.Mamba's state dict (bias=False, conv_bias=True), from its constructor."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    return {
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }


@pytest.mark.parametrize("d_model, d_state, d_conv, expand", [(512, 16, 4, 2), (49, 16, 4, 2), (24, 8, 3, 3)])
def test_state_dict_and_init_follow_mamba_ssm(d_model, d_state, d_conv, expand):
    module = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    state = module.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == mamba_state_shapes(d_model, d_state, d_conv, expand)
    torch.testing.assert_close(module.A_log, torch.log(torch.arange(1.0, d_state + 1)).expand(expand * d_model, -1))
    assert torch.equal(module.D, torch.ones(expand * d_model))
    step = F.softplus(module.dt_proj.bias)
    assert step.min() >= 1e-4 and step.max() <= 0.1 + 1e-6
    assert module.dt_proj.weight.abs().max() <= module.dt_rank**-0.5
    Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand).load_state_dict(state)  # strict round trip


def reference_mamba(x: torch.Tensor, module: Mamba) -> torch.Tensor:
    """The same math written step by step: per-tap causal conv, per-step recurrence; x (B, L, d_model)."""
    d_inner, d_state, rank, width = module.d_inner, module.d_state, module.dt_rank, module.d_conv
    batch, length, _ = x.shape
    xs, gate = (x @ module.in_proj.weight.t()).split(d_inner, dim=-1)  # (B, L, d_inner) each
    taps = module.conv1d.weight[:, 0, :]  # (d_inner, width); tap width-1 multiplies the current step
    conv = []
    for t in range(length):
        acc = module.conv1d.bias.expand(batch, d_inner)
        for k in range(width):
            if t - (width - 1) + k >= 0:
                acc = acc + taps[:, k] * xs[:, t - (width - 1) + k]
        conv.append(acc)
    u = F.silu(torch.stack(conv, dim=1))
    dt_in, b_in, c_in = (u @ module.x_proj.weight.t()).split([rank, d_state, d_state], dim=-1)
    step = F.softplus(dt_in @ module.dt_proj.weight.t() + module.dt_proj.bias)  # (B, L, d_inner)
    decay_rate = -torch.exp(module.A_log)  # (d_inner, N)
    state = x.new_zeros(batch, d_inner, d_state)
    outputs = []
    for t in range(length):
        state = torch.exp(step[:, t, :, None] * decay_rate) * state
        state = state + step[:, t, :, None] * b_in[:, t, None, :] * u[:, t, :, None]
        outputs.append((state * c_in[:, t, None, :]).sum(-1) + module.D * u[:, t])
    y = torch.stack(outputs, dim=1) * F.silu(gate)
    return y @ module.out_proj.weight.t()


def test_mamba_matches_a_float64_step_by_step_reference_with_gradients():
    torch.manual_seed(0)
    module = Mamba(8, d_state=4, d_conv=4, expand=2, scan_backend="torch").double()
    with torch.no_grad():  # a non-trivial D and biases, so every term is exercised
        module.D.uniform_(0.5, 1.5)
        module.conv1d.bias.normal_()
    x = torch.randn(2, 37, 8, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 37, 8, dtype=torch.float64)
    inputs = [x, *module.parameters()]
    ours = module(x)
    ours_grads = torch.autograd.grad(ours, inputs, grad_out)
    ref = reference_mamba(x, module)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    names = ["x"] + [n for n, _ in module.named_parameters()]
    for name, got, want in zip(names, ours_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"grad {name}: {m}")


def test_mamba_layer_token_modes_and_shape_check():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5)
    spatial, channel = MambaLayer(6), MambaLayer(15, channel_token=True)
    for layer, tokens in ((spatial, x.flatten(2).transpose(1, 2)), (channel, x.flatten(2))):
        expected = layer.mamba(layer.norm(tokens))
        expected = expected.transpose(1, 2) if not layer.channel_token else expected
        torch.testing.assert_close(layer(x), expected.reshape(x.shape))
    with pytest.raises(ValueError, match="built for d_model=15"):
        channel(torch.randn(2, 6, 4, 4))


def test_bf16_autocast_keeps_the_mamba_layer_in_float32_and_finite():
    """The layer runs in float32 under autocast (U-Mamba's AMP NaNs: huge scan outputs, spec section 7 #11)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4) * 1e4
    for layer in (MambaLayer(16), MambaLayer(16, channel_token=True)):
        reference = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x.bfloat16())
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        torch.testing.assert_close(out, layer(x.bfloat16().float()))  # nothing inside ran in bfloat16
        assert torch.isfinite(reference).all()
    net = UMambaEnc(input_size=(32, 32), n_stages=4, features=(8, 16, 32, 64))  # spatial and channel tokens
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(torch.randn(2, 1, 32, 32) * 1e4)
    logits.float().square().mean().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.fixture
def no_tf32():
    """Compare the scans, not tf32 matmul rounding; restores the flags afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("mamba_ssm") is None,
    reason="needs a CUDA GPU and mamba-ssm",
)
def test_cpu_path_matches_mamba_ssm_on_gpu(no_tf32):
    """Our CPU path vs mamba_ssm's Mamba on the GPU with one state dict; then our CUDA path vs the CPU path."""
    from mamba_ssm.modules.mamba_simple import Mamba as MambaSSM

    from scripts.networks.mamba_layer import mamba_fused_path_available

    torch.manual_seed(0)
    reference = MambaSSM(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    ours = Mamba(64, d_state=16, d_conv=4, expand=2, scan_backend="torch")
    ours.load_state_dict({k: v.cpu() for k, v in reference.state_dict().items()})
    x = torch.randn(2, 300, 64)
    grad_out = torch.randn(2, 300, 64)

    def run(module: torch.nn.Module, device: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        module.zero_grad()
        inp = x.to(device, copy=True).requires_grad_(True)  # a new leaf per run (x itself must stay grad-free)
        out = module(inp)
        out.backward(grad_out.to(device))
        grads = {"input": inp.grad.cpu(), **{n: p.grad.cpu() for n, p in module.named_parameters()}}
        return out.detach().cpu(), grads

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    cpu_out, cpu_grads = run(ours, "cpu")
    ref_out, ref_grads = run(reference, "cuda")
    assert rel(cpu_out, ref_out) < 1e-4
    assert set(cpu_grads) == set(ref_grads)
    worst = max((rel(cpu_grads[n], g), n) for n, g in ref_grads.items())
    assert worst[0] < 1e-3, f"gradient {worst[1]} differs by {worst[0]:.2e} (relative to its max)"

    gpu = Mamba(64, d_state=16, d_conv=4, expand=2, scan_backend="cuda").cuda()
    gpu.load_state_dict(reference.state_dict())
    gpu_out, gpu_grads = run(gpu, "cuda")
    print(f"mamba-ssm fused path (causal-conv1d) available: {mamba_fused_path_available()}")
    assert rel(gpu_out, cpu_out) < 1e-4
    worst = max((rel(g, cpu_grads[n]), n) for n, g in gpu_grads.items())
    assert worst[0] < 1e-3, f"gradient {worst[1]} differs by {worst[0]:.2e} (relative to its max)"

    # The full networks on the GPU path: finite under bf16 autocast with deep supervision, at the ACDC size.
    for net in (UMambaBot(deep_supervision=True).cuda(), UMambaEnc(deep_supervision=True).cuda()):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            heads = net(torch.randn(2, 1, 224, 224, device="cuda") * 100)
        sum(h.float().square().mean() for h in heads).backward()
        assert all(torch.isfinite(h).all() for h in heads)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "names",
    [
        ["train.json", "networks/umamba_bot.json", "deep_supervision.json"],
        ["train.json", "evaluate.json", "demo.json", "networks/umamba_enc.json", "deep_supervision.json"],
        ["train.json", "multi_gpu_train.json", "networks/umamba_bot.json", "deep_supervision.json"],
        ["train.json", "evaluate.json", "networks/umamba_enc.json"],
    ],
    ids=lambda names: "+".join(Path(n).stem for n in names),
)
def test_config_combinations_resolve(names):
    problems = config_problems(names)
    assert not problems, f"configs {names}:\n" + "\n".join(problems)


def test_network_overrides_build_the_spec_networks():
    bot = parser_for("train.json", "networks/umamba_bot.json").get_parsed_content("network_def")
    assert isinstance(bot, UMambaBot) and count(bot) == BOT_PARAMS and not bot.deep_supervision
    enc = parser_for("inference.json", "networks/umamba_enc.json").get_parsed_content("network_def")
    assert isinstance(enc, UMambaEnc) and count(enc) == ENC_PARAMS and enc.input_size == (224, 224)
    small = parser_for("train.json", "networks/umamba_enc.json", patch_size=[64, 64])
    assert small.get_parsed_content("network_def").input_size == (64, 64)  # Enc follows the patch size


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    """One phantom for every run of this module (the first run writes it)."""
    return tmp_path_factory.mktemp("umamba_data") / "phantom"


def test_deep_supervision_override_trains_on_all_heads_and_keeps_pred_full_resolution(tmp_path, phantom_dir):
    parser = parser_for(
        "train.json", "demo.json", "networks/umamba_bot.json", "deep_supervision.json",
        dataset_dir=str(phantom_dir), ckpt_dir=str(tmp_path / "models"), log_dir=str(tmp_path / "logs"),
        patch_size=[32, 32], batch_size=2, max_iterations=1, val_interval=1,
    )  # fmt: skip
    parser["network_def#n_stages"] = 4
    parser["train#handlers"] = []  # one bare iteration: no validation or checkpoints
    assert parser.get_parsed_content("network_def").deep_supervision
    loss = parser.get_parsed_content("train#trainer#loss_function")
    assert isinstance(loss, DeepSupervisionLoss) and isinstance(loss.loss, DiceCELoss)
    assert loss.weights == pytest.approx(deep_supervision_weights(3))
    trainer = parser.get_parsed_content("train#trainer")
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: seen.extend(engine.state.output))
    trainer.run()
    assert [tuple(item["pred"].shape) for item in seen] == [(4, 32, 32)] * 2  # the full-resolution head
    assert all(math.isfinite(item["loss"]) for item in seen)


# ------------------------------------------------------------------------------------- end to end through the CLI


@pytest.mark.parametrize(
    "network, extra",
    [("umamba_bot", []), ("umamba_enc", ["deep_supervision.json"])],
    ids=["bot", "enc+deep_supervision"],
)
def test_tiny_training_run_on_the_phantom(tmp_path, phantom_dir, network, extra):
    """4-stage variants at 32 x 32 (the 6-stage net needs >= 64 x 64: InstanceNorm of a 1 x 1 bottleneck fails)."""
    bundle_cli(
        "run", "training", "--config_file", config_list("train.json", "demo.json", f"networks/{network}.json", *extra),
        *META, "--bundle_root", str(BUNDLE_ROOT), "--dataset_dir", str(phantom_dir),
        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--log_dir", str(tmp_path / "logs"),
        "--max_iterations", "2", "--val_interval", "2", "--batch_size", "2", "--patch_size", "[32,32]",
        "--network_def#n_stages", "4",
    )  # fmt: skip
    latest = torch.load(tmp_path / "models" / "latest.pt", map_location="cpu", weights_only=True)
    assert latest["iteration"] == 2 and 0.0 <= latest["best_metric"] <= 1.0
    # model.pt loads into the inference network (no deep supervision there: the heads are in the state dict anyway).
    inference = parser_for("inference.json", f"networks/{network}.json", patch_size=[32, 32])
    inference["network_def#n_stages"] = 4
    net = inference.get_parsed_content("network_def")
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True))
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 4, 32, 32)
