"""What every model package shares: torch on demand, checksums, and an atomic write.

A package is a folder with a weights file and a JSON manifest that names the network and pins
the weights by sha256; it is written weights first, manifest last, each under a temporary name
then renamed, so a folder with a manifest always holds the weights it describes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from spinefrac.errors import EngineUnavailableError


def require_torch() -> None:
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as error:
        raise EngineUnavailableError(
            f"learned models need PyTorch and MONAI ({error.name} is not installed): "
            "pip install 'spinefrac[learned]'"
        ) from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_package(network, manifest, output: Path, weights_name: str, manifest_name: str) -> Path:
    """Save the state dict, record its sha256 in ``manifest.weights_sha256``, write the manifest."""
    import torch

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    weights = output / weights_name
    partial_weights = output / f".{Path(weights_name).name}.partial"
    torch.save(network.state_dict(), partial_weights)
    partial_weights.replace(weights)
    manifest.weights_sha256 = sha256_of(weights)
    partial_manifest = output / f".{manifest_name}.partial"
    partial_manifest.write_text(manifest.to_json(), encoding="utf-8")
    partial_manifest.replace(output / manifest_name)
    return output
