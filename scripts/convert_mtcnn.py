"""Convert facenet-pytorch 2.6.0's MTCNN weights into the f2s model zoo (``models/mtcnn``).

The wheel ships ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` (torch state dicts). We never
install or import facenet-pytorch (it pins an old torch and imports torchvision): the three
files are read straight out of the wheel's zip, loaded with ``torch.load(weights_only=True)``,
checked key by key and shape by shape against our own networks
(``face2scene_cli.faces.backends.mtcnn``), loaded strictly, and written as safetensors with a
``config.json``, ``metadata.json`` (sha256 pins) and a ``README.md`` model card.

Verification done here, once: the written safetensors reload bit-identically to the ``.pt``
tensors, and a forward pass plus the full cascade on a real photo give identical outputs from
both (the golden numbers are printed and written to the card).

Usage::

    python scripts/convert_mtcnn.py                       # pip download the wheel itself
    python scripts/convert_mtcnn.py --wheel /path/facenet_pytorch-2.6.0-py3-none-any.whl

When ``benchmarks/results/faces.json`` exists (``python benchmarks/bench_faces.py``), its
detection table goes into the model card; rerunning the script rewrites identical weights.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.faces.backends.mtcnn import (  # noqa: E402
    MTCNN,
    WEIGHT_NAMES,
    MTCNNConfig,
)
from face2scene_cli.hashing import file_sha256  # noqa: E402
from face2scene_cli.zoo import ModelFiles, check_state_dict, write_metadata  # noqa: E402

PACKAGE = "facenet-pytorch"
VERSION = "2.6.0"
WHEEL_NAME = f"facenet_pytorch-{VERSION}-py3-none-any.whl"
MEMBERS = {name: f"facenet_pytorch/data/{name}.pt" for name in WEIGHT_NAMES}
BENCH_JSON = ROOT / "benchmarks" / "results" / "faces.json"


def fetch_wheel(dest: Path) -> Path:
    """``pip download facenet-pytorch==2.6.0 --no-deps`` into ``dest``; returns the wheel."""
    cmd = [
        sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}",
        "--no-deps", "--only-binary=:all:", "-d", str(dest),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheel = dest / WHEEL_NAME
    if not wheel.is_file():
        raise SystemExit(f"pip download did not produce {wheel}")
    return wheel


def read_state_dicts(wheel: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The three state dicts, read from the wheel's zip without extracting or installing."""
    states = {}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for net, member in MEMBERS.items():
            if member not in names:
                raise SystemExit(f"{wheel.name} has no {member}")
            data = io.BytesIO(zf.read(member))
            states[net] = torch.load(data, map_location="cpu", weights_only=True)
    return states


def golden_image() -> np.ndarray:
    """scikit-image's astronaut (512x512 RGB), the photo the golden numbers are taken on."""
    from PIL import Image

    from face2scene_cli.research.sample_data import package_photos

    for photo in package_photos():
        if photo.name == "skimage/astronaut":
            with Image.open(photo.path) as im:
                return np.asarray(im.convert("RGB"))
    raise SystemExit("skimage/astronaut not found: is scikit-image installed?")


def golden(model: MTCNN, image: np.ndarray) -> dict:
    """Forward passes on fixed inputs and the full cascade on ``image``."""
    gen = torch.Generator().manual_seed(0)
    x12 = torch.rand(2, 3, 31, 37, generator=gen) * 2 - 1
    x24 = torch.rand(4, 3, 24, 24, generator=gen) * 2 - 1
    x48 = torch.rand(4, 3, 48, 48, generator=gen) * 2 - 1
    with torch.inference_mode():
        p = model.pnet(x12)
        r = model.rnet(x24)
        o = model.onet(x48)
    out = model.detect(image, min_face=20)
    return {
        "pnet": [t.numpy() for t in p],
        "rnet": [t.numpy() for t in r],
        "onet": [t.numpy() for t in o],
        "boxes": out.boxes,
        "scores": out.scores,
        "landmarks": out.landmarks,
    }


def convert(wheel: Path, dest: Path) -> dict:
    """Write ``dest`` (config, safetensors, metadata, card); returns facts for the card."""
    wheel_sha = file_sha256(wheel)
    states = read_state_dicts(wheel)

    # 1. keys and shapes against our networks, then a strict load
    reference = MTCNN(MTCNNConfig())
    for net, state in states.items():
        check_state_dict(getattr(reference, net), state, f"{wheel.name}:{MEMBERS[net]}")
        getattr(reference, net).load_state_dict(state, strict=True)
    reference.eval()

    # 2. write safetensors + config, reload through the public loader
    dest.mkdir(parents=True, exist_ok=True)
    files = reference.save_pretrained(dest)
    loaded = MTCNN.from_pretrained(dest, ModelFiles(dest))  # as written, before it is pinned
    for net, state in states.items():
        got = getattr(loaded, net).state_dict()
        for key, tensor in state.items():
            if got[key].dtype != tensor.dtype or not torch.equal(got[key], tensor):
                raise SystemExit(f"{net}.{key}: safetensors differ from the .pt tensor")

    # 3. golden outputs: .pt weights vs the reloaded safetensors, bit for bit
    image = golden_image()
    want, got = golden(reference, image), golden(loaded, image)
    for key, value in want.items():
        pairs = (
            zip(value, got[key], strict=True) if isinstance(value, list) else [(value, got[key])]
        )
        for a, b in pairs:
            if a.shape != b.shape or not np.array_equal(a, b):
                raise SystemExit(f"golden output {key!r} differs after conversion")
    params = {net: sum(p.numel() for p in getattr(loaded, net).parameters()) for net in states}

    # 4. metadata pins the weights and config
    meta = {
        "name": "mtcnn",
        "version": f"{PACKAGE}-{VERSION}",
        "task": "face-detection",
        "licence": "MIT (facenet-pytorch)",
        "source": f"converted from {PACKAGE} {VERSION} wheel (PyPI)",
        "input": {
            "image": "RGB uint8 (H, W, 3), any size",
            "normalisation": "(x - 127.5) * 0.0078125",
            "crops": {"pnet": "pyramid, 12 px window", "rnet": 24, "onet": 48},
            "outputs": "boxes x0,y0,x1,y1; score; 5 landmarks (x, y) eye, eye, nose, mouth, mouth",
        },
        "trained_with": {},
        "source_wheel": {"file": wheel.name, "sha256": wheel_sha},
        "parameters": params,
    }
    write_metadata(dest, meta, files)
    facts = {
        "wheel": wheel.name,
        "wheel_sha256": wheel_sha,
        "params": params,
        "golden": {
            "boxes": np.round(want["boxes"], 2).tolist(),
            "scores": np.round(want["scores"], 5).tolist(),
            "landmarks": np.round(want["landmarks"], 2).tolist(),
        },
    }
    (dest / "README.md").write_text(model_card(facts), encoding="utf-8")
    for path in dest.iterdir():
        path.chmod(0o644)
    return facts


def bench_table() -> str:
    """The detection table from ``benchmarks/results/faces.json``, when it exists."""
    if not BENCH_JSON.is_file():
        return "_Not measured yet: run `python benchmarks/bench_faces.py`, then this script._\n"
    data = json.loads(BENCH_JSON.read_text(encoding="utf-8"))
    return data["markdown"] + "\n" + data.get("setup", "") + "\n"


def model_card(facts: dict) -> str:
    p = facts["params"]
    total = sum(p.values())
    g = facts["golden"]
    return f"""# mtcnn: MTCNN face detector (P-Net / R-Net / O-Net) with 5 landmarks

**Not trained here.** The weights are facenet-pytorch {VERSION}'s
(`facenet_pytorch/data/{{pnet,rnet,onet}}.pt`), which facenet-pytorch converted from the
original MTCNN release (Zhang, Zhang, Li, Qiao: "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", IEEE SPL 2016; trained on WIDER FACE and CelebA).

- **Task**: face detection + 5 landmarks (eye centres, nose tip, mouth corners).
- **Architecture**: 3-stage cascade; P-Net (fully convolutional, 12 px window, stride 2),
  R-Net (24x24 crops), O-Net (48x48 crops), PReLU activations. Our code:
  `face2scene_cli/faces/backends/mtcnn.py`.
- **Parameters**: {total:,} (P-Net {p["pnet"]:,}, R-Net {p["rnet"]:,}, O-Net {p["onet"]:,}).
- **Input**: RGB uint8, any size; normalised as `(x - 127.5) * 0.0078125`.
- **Settings** (`config.json`): thresholds 0.6 / 0.7 / 0.7, pyramid factor 0.709,
  NMS 0.5 (per level) / 0.7 / 0.7 / 0.7 ("min" overlap after O-Net).
- **Source**: `{facts["wheel"]}` from PyPI, sha256 `{facts["wheel_sha256"]}`.
- **Licence**: MIT (facenet-pytorch, (c) 2019 Timothy Esler).
- **Files**: `pnet.safetensors`, `rnet.safetensors`, `onet.safetensors`, `config.json`,
  pinned by sha256 in `metadata.json`.

## Conversion

```
python scripts/convert_mtcnn.py --wheel {facts["wheel"]}   # or without --wheel: pip download
```

The script reads the three `.pt` files out of the wheel zip (facenet-pytorch is never
installed or imported), loads them with `torch.load(weights_only=True)`, checks every key and
shape against our networks, loads them strictly and writes safetensors. It then checks that
the safetensors reload bit-identically and that forward passes and the whole cascade on
scikit-image's astronaut give identical results with the `.pt` and the safetensors weights.
Golden result on the astronaut (512x512, min face 20):

- box `{g["boxes"]}`, score `{g["scores"]}`
- landmarks `{g["landmarks"]}`

## Behaviour

Our cascade follows facenet-pytorch's `detect_face` (same pyramid, thresholds, preprocessing,
box calibration, square boxes, landmark layout, NMS thresholds). Differences: NMS is our own
(numpy, stable order), the networks run channels-last (2-5x faster on CPU), and a
candidate whose box lies wholly outside the image is dropped instead of misaligning the
batch. Cross-checked once against
facenet-pytorch's own `detect_face` code run from the wheel (torchvision replaced by a stub
with a brute-force NMS): the same faces on all 47 sample photos, boxes and landmarks within
0.0002 px.

`f2s`'s `MTCNNDetector` adds a final cut on the O-Net probability (default 0.95, chosen on
the table below; facenet-pytorch returns everything above 0.7) and the `--min-face` filter.

## Evaluation (real photos shipped in packages; faces counted by hand)

{bench_table()}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"{WHEEL_NAME} (default: pip download it)")
    parser.add_argument("--dest", type=Path, default=ROOT / "models" / "mtcnn")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="f2s-mtcnn-") as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        if wheel.name != WHEEL_NAME:
            raise SystemExit(f"expected {WHEEL_NAME}, got {wheel.name}")
        facts = convert(wheel, args.dest)
    print(f"wrote {args.dest} from {facts['wheel']} (sha256 {facts['wheel_sha256']})")
    print(f"parameters: {facts['params']}")
    print(f"golden astronaut detection: {json.dumps(facts['golden'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
