"""What the MONAI Model Zoo's CI checks on a bundle (ci/verify_bundle.py, pre-commit, code format), offline.

Metadata against the zoo schemas and the JSON formatting are in test_configs.py; the workflows themselves in
test_mamba_unet_acdc_segmentation.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pydoc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BUNDLE_ROOT, bundle_cli
from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import ID_REF_KEY, ID_SEP_KEY

CONFIGS = BUNDLE_ROOT / "configs"
METADATA = CONFIGS / "metadata.json"

# ci/verify_bundle.py: files that must / should be in a bundle, and the keys its configs must define
NECESSARY_FILES = ["configs/metadata.json", "LICENSE"]
INFER_KEYS = ["bundle_root", "device", "network_def", "inferer"]
TRAIN_KEYS = ["bundle_root", "device", "dataset_dir"]

# Every way the README combines the configs (later files override earlier ones).
CONFIG_COMBINATIONS = [
    ["train.json"],
    ["train.json", "evaluate.json"],
    ["train.json", "demo.json"],
    ["train.json", "evaluate.json", "demo.json"],
    ["train.json", "multi_gpu_train.json"],
    ["inference.json"],
] + [  # the selectable networks (configs/networks/*.json) on top of training and inference
    [base, f"networks/{net.name}"]
    for net in sorted((CONFIGS / "networks").glob("*.json"))
    for base in ("train.json", "inference.json")
]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_necessary_and_preferred_files():
    missing = [name for name in NECESSARY_FILES if not (BUNDLE_ROOT / name).is_file()]
    assert not missing, f"the zoo requires {missing} in the bundle root {BUNDLE_ROOT}"
    assert (CONFIGS / "inference.json").is_file(), "the zoo prefers configs/inference.json (MONAI Label needs it)"


def test_large_files_entries_are_downloadable_paths_inside_the_bundle():
    """large_files.yml: every entry names a relative path inside the bundle, a URL and (optionally) a known hash."""
    import yaml

    entries = yaml.safe_load((BUNDLE_ROOT / "large_files.yml").read_text())["large_files"]
    assert isinstance(entries, list), "large_files.yml: 'large_files' must be a list"
    for entry in entries:
        path = Path(entry["path"])
        assert not path.is_absolute() and ".." not in path.parts, f"large_files.yml: unsafe path {path}"
        assert entry["url"].startswith(("https://", "http://")), f"large_files.yml: {path} has no URL"
        assert entry.get("hash_type", "md5") in ("md5", "sha1", "sha256", "sha512"), f"large_files.yml: {entry}"


def test_weights_are_shipped_or_listed_in_large_files():
    """The zoo's preferred models/model.pt: committed, or downloadable through large_files.yml before its checks."""
    import yaml

    listed = {e["path"] for e in yaml.safe_load((BUNDLE_ROOT / "large_files.yml").read_text())["large_files"]}
    if "models/model.pt" not in listed and not (BUNDLE_ROOT / "models" / "model.pt").is_file():
        pytest.skip("no trained weights published yet: list models/model.pt in large_files.yml before a zoo PR")


def test_version_is_in_changelog():
    meta = load_json(METADATA)
    assert meta["version"] in meta["changelog"], f"{METADATA}: version {meta['version']} has no changelog entry"
    versions = list(meta["changelog"])
    assert versions[0] == meta["version"], f"{METADATA}: the changelog must list the newest version first"


def test_config_keys_required_by_the_zoo():
    """ci/verify_bundle.py verify_bundle_keys, including ValidationHandler's interval = @val_interval."""
    inference, train = load_json(CONFIGS / "inference.json"), load_json(CONFIGS / "train.json")
    assert not [k for k in INFER_KEYS if k not in inference], "inference.json misses zoo keys"
    assert not [k for k in TRAIN_KEYS if k not in train], "train.json misses zoo keys"
    for key in ("trainer", "dataset", "handlers", "preprocessing", "inferer"):
        assert key in train["train"], f"train.json: train#{key} missing"
    assert "max_epochs" in train["train"]["trainer"] and "data" in train["train"]["dataset"]
    for key in ("evaluator", "dataset", "handlers", "preprocessing", "postprocessing", "inferer", "key_metric"):
        assert key in train["validate"], f"train.json: validate#{key} missing"
    assert "data" in train["validate"]["dataset"]
    validation = [h for h in train["train"]["handlers"] if h["_target_"] == "ValidationHandler"]
    assert [h["interval"] for h in validation] == ["@val_interval"]


def walk(config: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(id, value) of every node of a parsed config, ids joined with MONAI's separator."""
    yield path, config
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    for key, value in items:
        yield from walk(value, f"{path}{ID_SEP_KEY}{key}" if path else str(key))


def config_problems(names: list[str]) -> list[str]:
    """Dangling @ references, unlocatable _target_ and $ expressions that do not compile, for one combination."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(METADATA))
    parser.parse()  # resolves % macros and relative ids; instantiates nothing
    locator, problems = ComponentLocator(), []
    for node_id, value in walk(parser.get()):
        if isinstance(value, dict) and "_target_" in value:
            target = value["_target_"]
            module = locator.get_component_module_name(target)
            full_name = f"{module}.{target}" if isinstance(module, str) else target
            if pydoc.locate(full_name) is None:
                problems.append(f"{node_id}: _target_ {target!r} cannot be located")
        if not isinstance(value, str):
            continue
        for ref_id in ReferenceResolver.match_refs_pattern(value):
            if ref_id not in parser:
                problems.append(f"{node_id}: dangling reference {ID_REF_KEY}{ref_id} in {value!r}")
        if value.startswith("$"):
            code = ReferenceResolver.id_matcher.sub("_ref", ReferenceResolver.normalize_id(value[1:]))
            try:
                ast.parse(code, mode="exec" if code.lstrip().startswith(("import ", "from ")) else "eval")
            except SyntaxError as err:
                problems.append(f"{node_id}: expression does not compile ({err.msg}): {value}")
    return problems


@pytest.mark.parametrize("names", CONFIG_COMBINATIONS, ids=lambda names: "+".join(Path(n).stem for n in names))
def test_every_config_combination_parses(names):
    if not all((CONFIGS / n).is_file() for n in names):
        pytest.skip(f"{names}: not every config of this combination exists")
    problems = config_problems(names)
    assert not problems, f"configs {names}:\n" + "\n".join(problems)


def test_verify_net_in_out_on_cpu():
    """The zoo's verify_data_shape through the CLI: a (1, 1, 224, 224) input gives 4 output channels."""
    result = bundle_cli(
        "verify_net_in_out", "network_def", "--meta_file", str(METADATA), "--config_file",
        str(CONFIGS / "inference.json"), "--device", "cpu", "--bundle_root", str(BUNDLE_ROOT),
    )  # fmt: skip
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "tool", [["black", "--check"], ["isort", "--check-only"], ["flake8"]], ids=lambda tool: tool[0]
)
def test_python_is_clean_under_the_zoo_formatters(tool):
    """black / isort / flake8 with the repo's settings (the zoo's: line length 120, its flake8 plugin selection)."""
    if importlib.util.find_spec(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed (requirements-dev.txt)")
    paths = [str(BUNDLE_ROOT / "scripts"), str(BUNDLE_ROOT / "tests")]
    result = subprocess.run([sys.executable, "-m", *tool, *paths], cwd=BUNDLE_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{tool[0]} found problems:\n{result.stdout}{result.stderr}"
