"""Every config parses, resolves and instantiates in the combinations the README uses; metadata is valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT
from monai.bundle import ConfigParser, verify_metadata

CONFIGS = BUNDLE_ROOT / "configs"
SCHEMAS = BUNDLE_ROOT.parent / "shared" / "tools"


def parser_for(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE_ROOT), **overrides})
    return parser


def small_phantom_overrides(tmp_path: Path) -> dict:
    return {
        "dataset_dir": str(tmp_path / "phantom"),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"),
        "log_dir": str(tmp_path / "logs"),
        "patch_size": [32, 32],
        "num_workers": 0,
    }


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.json")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_json_is_formatted_like_the_model_zoo(path):
    """The zoo's pre-commit runs pretty-format-json --indent=4 --no-sort-keys; a config must be a fixed point of it."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4) + "\n"


@pytest.mark.parametrize("schema", ["meta_schema.json", "meta_schema_20240725.json"])
def test_metadata_validates_against_the_zoo_schemas(schema):
    if not (SCHEMAS / schema).exists():
        pytest.skip(f"schema copy {schema} not available")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMAS / schema))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert {"mamba-ssm", "causal-conv1d"} <= set(meta["required_packages_version"])


def test_train_config_instantiates_trainer_and_evaluator(tmp_path):
    parser = parser_for("train.json", "demo.json", **small_phantom_overrides(tmp_path))
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch_length == parser.get_parsed_content("val_interval")
    assert trainer.state.max_epochs == parser.get_parsed_content("max_iterations") // trainer.state.epoch_length
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert evaluator.data_loader.batch_size == 1
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    expected = (parser.get_parsed_content("batch_size"), 1, 32, 32)
    assert batch["image"].shape == expected and batch["label"].shape == expected
    assert batch["image"].dtype == torch.float32 and set(batch["label"].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_compile_override_passes_its_mode_to_torch_compile(tmp_path, monkeypatch):
    """`--compile true --compile_mode reduce-overhead`: the trainer compiles its network once, with that mode (the
    recorder stands in for torch.compile, which on CPU would take minutes at the first step)."""
    calls = []

    def recording_compile(model, **kwargs):
        calls.append((model, kwargs))
        return model

    monkeypatch.setattr(torch, "compile", recording_compile)
    overrides = {**small_phantom_overrides(tmp_path), "compile": True, "compile_mode": "reduce-overhead"}
    trainer = parser_for("train.json", "demo.json", **overrides).get_parsed_content("train#trainer")
    assert calls == [(trainer.network, {"mode": "reduce-overhead"})]
    default = parser_for("train.json")
    assert default["compile"] is False and default["compile_mode"] == "default"


def test_paper_recipe_is_the_default():
    parser = parser_for("train.json")
    assert parser["batch_size"] == 24 and parser["max_iterations"] == 10000 and parser["val_interval"] == 200
    assert parser["learning_rate"] == 0.01 and parser["patch_size"] == [224, 224]
    assert parser["optimizer"]["momentum"] == 0.9 and parser["optimizer"]["weight_decay"] == 1e-4
    assert parser["lr_scheduler"]["power"] == 0.9
    loss = parser["loss"]
    assert loss["lambda_dice"] == loss["lambda_ce"] == 0.5 and loss["squared_pred"] and loss["batch"]


def test_evaluate_config_resolves_on_top_of_train(tmp_path):
    parser = parser_for("train.json", "evaluate.json", "demo.json", **small_phantom_overrides(tmp_path))
    handlers = parser.get_parsed_content("validate#handlers")
    assert [type(h).__name__ for h in handlers] == ["CheckpointLoader", "StatsHandler", "SegmentationReport"]
    assert parser["evaluation_split"] == "val"  # the test split stays held out unless asked for
    import scripts.data

    expected = scripts.data.datalist("phantom", str(tmp_path / "phantom"), "val")
    assert parser.get_parsed_content("validate#datalist") == expected


def test_inference_network_matches_metadata_shapes():
    parser = parser_for("inference.json")
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    net = parser.get_parsed_content("network_def").eval()
    shape = meta["inputs"]["image"]["spatial_shape"]
    x = torch.rand(1, meta["inputs"]["image"]["num_channels"], *[s // 7 for s in shape])  # 32x32: a multiple of 32
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, meta["outputs"]["pred"]["num_channels"], *x.shape[2:])


@pytest.mark.parametrize(
    "names", [("train.json",), ("train.json", "networks/mamba_unet.json"), ("inference.json",)], ids="+".join
)
def test_cross_scan_impl_override_reaches_every_ss2d_block(names):
    """`--cross_scan_impl triton` (a top-level key, default "gather") sets how every SS2D block moves its map; an
    unknown value is refused when the network is built, naming the choices."""
    from scripts.networks.mamba_unet import SS2D

    assert parser_for(*names)["cross_scan_impl"] == "gather"
    net = parser_for(*names, cross_scan_impl="triton").get_parsed_content("network_def")
    blocks = [m for m in net.modules() if isinstance(m, SS2D)]
    assert len(blocks) == 14 and {b.cross_scan_impl for b in blocks} == {"triton"}
    with pytest.raises(RuntimeError, match="Failed to instantiate") as failure:  # MONAI wraps the network's error
        parser_for(*names, cross_scan_impl="copy").get_parsed_content("network_def")
    assert "cross_scan_impl must be None or one of" in str(failure.value.__cause__)
