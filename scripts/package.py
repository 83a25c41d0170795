"""Build the bundle zip the Model Zoo serves: ``<name>_v<version>.zip`` with one top folder named after the bundle.

Same content rules as the zoo's ``ci/utils.py: compress_bundle`` (what ``python -m monai.bundle download`` fetches
and unpacks): configs/, scripts/, docs/, LICENSE, large_files.yml and, when given, the trained weights as
models/model.pt (a plain state dict); never tests/, virtual environments, caches or run outputs. The zip is
byte-reproducible: entries sorted, every timestamp fixed (the zoo touches files to 2022-05-30 00:00), fixed modes.

    python -m scripts.package                                   # models/model.pt if present -> dist/<name>_v<v>.zip
    python -m scripts.package --ckpt_file demo/models/model.pt --half --output_dir /tmp
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "mamba_unet_acdc_segmentation"
INCLUDED_DIRS = ("configs", "scripts", "docs")
INCLUDED_FILES = ("LICENSE", "large_files.yml")
EXCLUDED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
ZIP_TIMESTAMP = (2022, 5, 30, 0, 0, 0)
FILE_MODE = 0o644


class PackageError(RuntimeError):
    """A bundle that cannot be packaged (missing file, unreadable weights)."""


def bundle_files(bundle_root: Path) -> Iterator[tuple[str, Path]]:
    """(path inside the bundle, file) for every file that goes into the zip, sorted."""
    for name in INCLUDED_FILES:
        if not (bundle_root / name).is_file():
            raise PackageError(f"{bundle_root / name}: required bundle file is missing")
    files = [bundle_root / name for name in INCLUDED_FILES]
    for folder in INCLUDED_DIRS:
        if not (bundle_root / folder).is_dir():
            raise PackageError(f"{bundle_root / folder}: required bundle folder is missing")
        files += [
            p
            for p in (bundle_root / folder).rglob("*")
            if p.is_file() and not EXCLUDED_PARTS & set(p.parts) and not p.name.endswith(EXCLUDED_SUFFIXES)
        ]
    for path in sorted(files, key=lambda p: p.relative_to(bundle_root).as_posix()):
        yield path.relative_to(bundle_root).as_posix(), path


def weights_bytes(ckpt_file: Path, half: bool) -> bytes:
    """The state dict in ``ckpt_file`` serialised again; with ``half`` its floating tensors stored as float16."""
    try:
        state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise PackageError(f"{ckpt_file}: cannot read the weights ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PackageError(f"{ckpt_file}: expected a plain state dict {{name: tensor}} (the best-model model.pt)")
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_TIMESTAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = FILE_MODE << 16
    archive.writestr(info, data, compresslevel=9)


def package_bundle(
    output_dir: str | Path,
    bundle_root: str | Path = BUNDLE_ROOT,
    ckpt_file: str | Path | None = None,
    half: bool = False,
    name: str = BUNDLE_NAME,
) -> Path:
    """Write ``output_dir/<name>_v<version>.zip`` (version from configs/metadata.json) and return its path.

    ``ckpt_file`` defaults to ``bundle_root/models/model.pt`` when that exists; without weights the zip holds the
    code and configs only (users then train, or fetch weights with ``download_large_files``).
    """
    bundle_root = Path(bundle_root)
    metadata = bundle_root / "configs" / "metadata.json"
    try:
        version = json.loads(metadata.read_text())["version"]
    except (OSError, ValueError, KeyError) as err:
        raise PackageError(f"{metadata}: cannot read the bundle version ({err})") from err
    if ckpt_file is None and (bundle_root / "models" / "model.pt").is_file():
        ckpt_file = bundle_root / "models" / "model.pt"
    output = Path(output_dir) / f"{name}_v{version}.zip"
    output.parent.mkdir(parents=True, exist_ok=True)
    files = list(bundle_files(bundle_root))  # fails before anything is written
    weights = None if ckpt_file is None else weights_bytes(Path(ckpt_file), half)
    partial = output.with_suffix(".partial.zip")  # still matched by .gitignore's *.zip
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            for arcname, path in files:
                _add(archive, f"{name}/{arcname}", path.read_bytes())
            if weights is not None:
                _add(archive, f"{name}/models/model.pt", weights)
        partial.replace(output)  # never leave a truncated zip under the final name
    finally:
        partial.unlink(missing_ok=True)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=str(BUNDLE_ROOT / "dist"))
    parser.add_argument("--ckpt_file", help="weights to ship as models/model.pt (default: models/model.pt if present)")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the download)")
    args = parser.parse_args(argv)
    try:
        output = package_bundle(args.output_dir, ckpt_file=args.ckpt_file, half=args.half)
    except PackageError as err:
        print(f"package failed: {err}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(output) as archive:
        has_weights = f"{BUNDLE_NAME}/models/model.pt" in archive.namelist()
        print(
            f"{output}: {len(archive.namelist())} files, {output.stat().st_size / 2**20:.1f} MiB, weights: {has_weights}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
