"""FaDeX: shapes, save/load, determinism, losses, training state, and the shipped weights."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data as skdata

from face2scene_cli.archs.fadex import (
    NUM_STATS,
    FaDeX,
    FaDeXOutput,
    _window_max,
    create_fadex,
    degradation_stats,
    fadex_s,
    fadex_tiny,
    prepare_pair,
    quantile_rows,
)
from face2scene_cli.degradations.estimate import Estimate
from face2scene_cli.degradations.jpeg import jpeg_compress
from face2scene_cli.degradations.ops import gaussian_blur, resize
from face2scene_cli.degradations.record import RESIZE_MODES, Degradation, equivalent_blur
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.degradations.second_order import SecondOrderConfig, sample_second_order
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.checkpoint import load_checkpoint, save_checkpoint
from face2scene_cli.research.train.data import degradation_labels
from face2scene_cli.research.train.fadex import effective_blur, supcon_loss, warm_start
from face2scene_cli.research.train.fadex_config import load_train_config
from face2scene_cli.research.train.fadex_eval import (
    FIG3_OPERATORS,
    RANGE_LEVELS,
    _read_within,
    build_val_set,
    downscale_by_kernel,
    evaluate_fadex,
    evaluate_ranges,
    plot_fig3,
    range_target,
)
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.zoo import require_model

REPO = Path(__file__).resolve().parent.parent


def _tiny(seed: int = 0) -> FaDeX:
    torch.manual_seed(seed)
    return fadex_tiny().eval()


def _pair(b: int = 2, c: int = 3, h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, c, h, w, generator=g), torch.rand(b, c, h, w, generator=g)


def test_output_shapes_and_ranges() -> None:
    out = _tiny()(*_pair(3, 3, 64, 80))
    assert out.code.shape == (3, 16)
    assert torch.allclose(out.code.norm(dim=1), torch.ones(3), atol=1e-5)
    assert out.z.shape == (3, 16, 8, 10)
    for name in ("noise_sigma", "blur_sigma_px", "downscale", "jpeg_quality", "jpeg_probability"):
        assert getattr(out, name).shape == (3,)
    assert bool((out.noise_sigma >= 0).all() and (out.downscale >= 1).all())
    assert bool(((out.jpeg_quality >= 1) & (out.jpeg_quality <= 100)).all())
    assert bool(((out.jpeg_probability >= 0) & (out.jpeg_probability <= 1)).all())
    first = out.estimates()[0]
    assert isinstance(first, Estimate) and set(first.to_dict()) == {
        "noise_sigma",
        "blur_sigma_px",
        "downscale",
        "jpeg_quality",
        "jpeg_probability",
        "motion_px",  # 0: this model has no motion head
        "motion_angle_deg",
    }
    assert out.motion_px is None and first.motion_px == 0.0
    assert first.noise_sigma == pytest.approx(float(out.noise_sigma[0].detach()))


def test_window_max_is_max_pool_bit_for_bit() -> None:
    y = torch.rand(2, 1, 67, 90, generator=torch.Generator().manual_seed(1))
    assert torch.equal(_window_max(y, 9), F.max_pool2d(y, 9, 1, 4))


def test_quantile_rows_is_torch_quantile_bit_for_bit() -> None:
    # the heads were trained on torch.quantile's values: the faster selection must not move them
    g = torch.Generator().manual_seed(0)
    for n in (2, 1001, 82369, 165000):
        x = torch.rand(3, n, generator=g) ** 3
        for q in (0.5, 0.95, 0.99):
            assert torch.equal(quantile_rows(x, q), torch.quantile(x, q, dim=1))
            assert torch.equal(
                quantile_rows(x, q, keepdim=True), torch.quantile(x, q, dim=1, keepdim=True)
            )


def test_stat_features_track_jpeg_and_blur() -> None:
    face = torch.from_numpy(np.ascontiguousarray(skdata.astronaut()[41:201, 140:300]))
    face = face.permute(2, 0, 1)[None].float() / 255
    crop = lambda t: t[..., 11:139, 13:141]  # noqa: E731 - off the 8x8 grid
    stats = {
        name: degradation_stats(crop(x), crop(x))[0]
        for name, x in {
            "clean": face,
            "jpeg20": jpeg_compress(face, 20),
            "jpeg60": jpeg_compress(face, 60),
            "blur1": gaussian_blur(face, 1.0),
            "blur2.5": gaussian_blur(face, 2.5),
        }.items()
    }
    assert stats["clean"].shape == (NUM_STATS,)
    grid = {k: float(v[0] + v[2]) for k, v in stats.items()}  # x and y grid strength
    assert grid["jpeg20"] > grid["jpeg60"] > grid["clean"], grid
    sharp = {k: float(v[4]) for k, v in stats.items()}
    assert sharp["clean"] > sharp["blur1"] > sharp["blur2.5"], sharp
    m = fadex_tiny(stat_features=True).eval()
    assert m(crop(face), crop(face)).code.shape == (1, 16)


def test_warm_start_adds_stat_inputs_without_changing_outputs(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    old = _tiny(4)
    save_file(
        {k: v for k, v in old.state_dict().items() if k != "code_center"},
        str(tmp_path / "m.safetensors"),
    )
    new = fadex_tiny(stat_features=True).eval()
    warm_start(new, tmp_path / "m.safetensors")
    lq, hq = _pair()
    with torch.inference_mode():
        a, b = old(lq, hq), new(lq, hq)
    assert torch.allclose(a.code, b.code, atol=1e-6)
    assert torch.allclose(a.noise_sigma, b.noise_sigma, atol=1e-5)
    with pytest.raises(ConfigError):
        warm_start(fadex_tiny(code_dim=8), tmp_path / "m.safetensors")


def test_gray_and_odd_sizes() -> None:
    lq, hq = _pair(2, 1, 70, 75)
    x = prepare_pair(lq, hq)
    assert x.shape == (2, 6, 64, 72)
    assert torch.equal(x[:, 0], x[:, 2]) and torch.equal(x[:, 3], x[:, 5])
    assert _tiny()(lq, hq).z.shape == (2, 16, 8, 9)


def test_bad_inputs() -> None:
    lq, hq = _pair()
    with pytest.raises(ValueError, match="match"):
        prepare_pair(lq, hq[..., :32])
    with pytest.raises(ValueError, match="at least 16"):
        prepare_pair(lq[..., :8, :8], hq[..., :8, :8])
    with pytest.raises(ConfigError, match="unknown FaDeX variant"):
        create_fadex("fadex-xxl")
    assert create_fadex("fadex-tiny.some-weights").config.code_dim == 16


def test_save_load_round_trip(tmp_path: Path) -> None:
    m = _tiny(1)
    m.save_pretrained(str(tmp_path / "f"), safe_serialization=True)
    m2 = FaDeX.from_pretrained(str(tmp_path / "f"), use_safetensors=True).eval()
    lq, hq = _pair()
    with torch.inference_mode():
        a, b = m(lq, hq), m2(lq, hq)
    assert torch.equal(a.code, b.code) and torch.equal(a.z, b.z)
    assert torch.equal(a.noise_sigma, b.noise_sigma)


def test_deterministic() -> None:
    lq, hq = _pair()
    with torch.inference_mode():
        assert torch.equal(_tiny(7)(lq, hq).code, _tiny(7)(lq, hq).code)


def test_supcon_prefers_correct_grouping() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.arange(4).repeat_interleave(6)
    codes = torch.nn.functional.normalize(
        centres[labels] + 0.2 * torch.randn(24, 16, generator=g), dim=1
    )
    right = supcon_loss(codes, labels, 0.1)
    wrong = supcon_loss(codes, labels[torch.randperm(24, generator=g)], 0.1)
    assert float(right) < float(wrong) - 1.0
    with pytest.raises(ValueError):
        supcon_loss(codes, labels[:3])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    """Training state (weights, AdamW moments, step, torch RNG) survives without pickle."""
    m = _tiny(2).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    lq, hq = _pair()
    for _ in range(2):
        opt.zero_grad()
        m(lq, hq).noise_sigma.sum().backward()
        opt.step()
    save_checkpoint(tmp_path / "ck", m, opt, {"step": 2, "wall_s": 1.0})
    assert not list(tmp_path.glob("ck/*.pt")) and not list(tmp_path.glob("ck/*.pkl"))
    expected_rand = torch.rand(3)
    m2 = _tiny(9).train()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    torch.manual_seed(123)
    meta = load_checkpoint(tmp_path / "ck", m2, opt2)
    assert meta["step"] == 2
    assert torch.equal(torch.rand(3), expected_rand)
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)
    for step in range(2):  # the same next update from both
        for model, o in ((m, opt), (m2, opt2)):
            o.zero_grad()
            model(lq, hq).noise_sigma.sum().backward()
            o.step()
        del step
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_train_config(tmp_path: Path) -> None:
    cfg = load_train_config(REPO / "configs" / "fadex.yaml")
    assert cfg.network.variant == "fadex-s"
    assert cfg.train.ops_per_batch * cfg.train.crops_per_op >= 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="stepz"):
        load_train_config(bad)
    bad.write_text("train:\n  sizes: [64, 200]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="sizes"):
        load_train_config(bad)
    # fadex-motion.yaml is fadex-wide.yaml with parametric motion blur among the operators
    wide = load_train_config(REPO / "configs" / "fadex-wide.yaml")
    motion = load_train_config(REPO / "configs" / "fadex-motion.yaml")
    assert motion.data.degradation == dataclasses.replace(
        wide.data.degradation, p_motion=0.25, motion_range=(3.0, 14.0)
    )
    assert motion.replace("data", degradation=wide.data.degradation) == wide


def test_split_manifest_holds_out_whole_people_photo(photos: list) -> None:
    splits = load_splits(REPO / "data" / "splits.yaml")
    val = {p.name for p in splits["val"]}
    train = {p.name for p in splits["train"]}
    assert not val & train
    assert "skimage/astronaut" in val
    assert any(p.people for p in splits["val"]) and any(p.people for p in splits["train"])


def _op(**values: object) -> Degradation:
    """A FaDeX training operator: parametric, downscales resized back."""
    return Degradation("parametric", resize_back=True, **values)  # type: ignore[arg-type]


def test_operators_keep_size_and_downscale_loses_detail() -> None:
    x = torch.from_numpy(np.ascontiguousarray(skdata.astronaut()[57:153, 156:252])).permute(2, 0, 1)
    x = x[None].float() / 255
    g = torch.Generator().manual_seed(0)
    op = _op(noise_sigma=10.0, blur_sigma_px=1.0, downscale=2.0, jpeg_quality=50)
    assert apply(x, op, g).shape == x.shape
    y = apply(x, _op(downscale=3.0), g)
    assert y.shape == x.shape
    assert torch.allclose(y, resize(resize(x, (32, 32), "bicubic"), (96, 96)).clamp(0, 1))
    hf = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert float(hf(y)) < 0.7 * float(hf(x))
    assert degradation_labels(op).tolist() == [10.0, 1.0, 2.0, 50.0, 1.0, 1.0]
    # motion blur is labelled as the Gaussian of its spread (L / sqrt(12)) joined to the blur;
    # the loss then adds the resolution loss
    moving = _op(blur_sigma_px=1.5, motion_px=9.0, motion_angle_deg=20.0, downscale=2.0)
    lab = degradation_labels(moving)
    assert lab[1] == pytest.approx(math.sqrt(1.5**2 + 81 / 12)) and lab[2] == 2.0
    target = effective_blur(torch.tensor(lab[1:2]), torch.tensor(lab[2:3]))
    assert float(target) == pytest.approx(math.sqrt(1.5**2 + 81 / 12 + 0.78**2), rel=1e-5)
    # shot noise is labelled by its sigma at mid-grey, with the read noise
    camera = _op(poisson_scale=1.0, noise_sigma=2.0, jpeg_quality=80)
    assert degradation_labels(camera)[0] == pytest.approx(math.sqrt(4 + 128), rel=1e-6)
    sample = sample_second_order(SecondOrderConfig(), torch.Generator().manual_seed(0))
    assert degradation_labels(Degradation("second-order", second_order=sample))[5] == 0


def test_validation_table(photos: list, tmp_path: Path) -> None:
    """The Fig. 3 / regression table on a tiny held-out set (2 crops per operator)."""
    cfg = load_train_config(REPO / "configs" / "fadex.yaml").replace("val", crops=2, crop=64)
    splits = load_splits(REPO / "data" / "splits.yaml", verify=False)
    val = build_val_set(cfg, splits["val"])
    assert set(val.fig3) == set(FIG3_OPERATORS) and len(FIG3_OPERATORS) >= 8
    assert val.fig3["noise5"][0].shape == (2, 3, 64, 64)
    assert any(s.endswith("#face") for s in val.sources)
    table = evaluate_fadex(_tiny(), val)
    s = table["summary"]
    assert -1 <= s["same_degradation_cos"] <= 1 and 0 <= s["same_content_abs_cos"] <= 1
    assert set(table["noise"]["levels"]) >= {"0", "15", "30"}
    assert "none" in table["jpeg"]["levels"]
    json.dumps(table)
    png = plot_fig3(table, tmp_path / "fig3.png")
    assert png.stat().st_size > 1000


def test_range_check_reads_jpeg_and_fails_a_constant_reader(photos: list, shipped: FaDeX) -> None:
    """The range check on held-out VAL crops: the shipped heads read JPEG q10 and q30 within 5 (the
    quantisation trace), and a reader that ignores the input (its estimates replaced by
    constants) meets none of the ranges."""
    cfg = load_train_config(REPO / "configs" / "fadex.yaml").replace("val", crops=3, crop=96)
    val_photos = load_splits(REPO / "data" / "splits.yaml", verify=False)["val"]
    levels = {k: v[-1:] for k, v in RANGE_LEVELS.items()} | {"jpeg": (10.0, 30.0)}
    table = evaluate_ranges(shipped, cfg, val_photos, levels=levels)
    assert set(table["met"]) == set(RANGE_LEVELS)
    assert table["met"]["jpeg"] and all(r["within"] == 1.0 for r in table["jpeg"].values())
    assert table["noise"]["50"]["mean"] > 25
    assert set(table["motion"]) == {"13"}

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = shipped

        def forward(self, lq: torch.Tensor, hq: torch.Tensor) -> FaDeXOutput:
            out = self.inner(lq, hq)
            n = lq.shape[0]
            fixed = {"noise_sigma": 20.0, "blur_sigma_px": 0.5, "downscale": 1.0}
            fixed |= {"jpeg_quality": 75.0}
            return dataclasses.replace(out, **{k: torch.full((n,), v) for k, v in fixed.items()})

    fake = evaluate_ranges(Constant(), cfg, val_photos, levels=levels)
    assert not any(fake["met"].values())


def test_downscale_by_kernel_reads_every_filter(shipped: FaDeX) -> None:
    """The downscale range under each filter: the shipped head reads every filter's x4 above
    x2 and x2 above 1.3 on held-out VAL crops."""
    cfg = load_train_config(REPO / "configs" / "fadex.yaml").replace("val", crops=3, crop=96)
    val_photos = load_splits(REPO / "data" / "splits.yaml", verify=False)["val"]
    table = downscale_by_kernel(shipped, cfg, val_photos)
    assert set(table) == set(RESIZE_MODES)
    for kernel, rows in table.items():
        assert set(rows) == {f"{v:g}" for v in RANGE_LEVELS["downscale"]}
        assert rows["4"]["mean"] > rows["2"]["mean"] > 1.3, (kernel, rows)


def test_range_check_reads_motion_as_its_equivalent_blur() -> None:
    """Motion levels (segment lengths) are met within 0.5 px of L / sqrt(12), up to 4 px."""
    assert RANGE_LEVELS["motion"] == (5.0, 9.0, 13.0)
    targets = [round(range_target("motion", v), 2) for v in RANGE_LEVELS["motion"]]
    assert targets == [1.44, 2.6, 3.75] and range_target("blur", 3.0) == 3.0
    est = torch.tensor([0.9, 1.0, 1.9, 2.0])
    assert _read_within("motion", est, 5.0).tolist() == [False, True, True, False]
    assert _read_within("blur", est, 1.5).tolist() == [False, True, True, True]


# ------------------------------------------------------------------------------------------
# the shipped weights, on a held-out real crop (the astronaut is a validation photo)

FACE = (slice(57, 185), slice(156, 284))


@pytest.fixture(scope="module")
def shipped() -> FaDeX:
    info = require_model("fadex-s")
    return FaDeX.from_pretrained(str(info.folder), use_safetensors=True).eval()


@pytest.fixture(scope="module")
def astro_region() -> torch.Tensor:
    """The astronaut's face with a 16 px margin (degraded as a whole, then cropped)."""
    img = skdata.astronaut()[41:201, 140:300]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def _estimate(model: FaDeX, region: torch.Tensor, op: Degradation, seed: int = 0) -> Estimate:
    g = torch.Generator().manual_seed(seed)
    y = apply(region, op, g)
    lq = (y[..., 11:139, 13:141] * 255).round() / 255  # 128 px, off the 8x8 grid
    hq = BlindFaceRestorer().restore(lq).hq
    with torch.inference_mode():
        return model(lq, hq).estimates()[0]


def test_shipped_noise_estimate_is_monotonic(shipped: FaDeX, astro_region: torch.Tensor) -> None:
    est = [
        _estimate(shipped, astro_region, _op(noise_sigma=s)).noise_sigma for s in (2.0, 10.0, 25.0)
    ]
    assert est[0] < est[1] < est[2], est


def test_shipped_jpeg_probability(shipped: FaDeX, astro_region: torch.Tensor) -> None:
    clean = _estimate(shipped, astro_region, _op()).jpeg_probability
    jpeg = _estimate(shipped, astro_region, _op(jpeg_quality=30)).jpeg_probability
    assert jpeg > clean + 0.1, (clean, jpeg)


@pytest.mark.parametrize("factor", [2.0, 3.0, 4.0])
def test_shipped_reads_the_downscale_factor(
    shipped: FaDeX, astro_region: torch.Tensor, factor: float
) -> None:
    """A held-out face shrunk by 2, 3 or 4 and enlarged back reads within 20% of its factor,
    and the same face blurred by as much (the resolution loss's effective blur) as none."""
    read = _estimate(shipped, astro_region, _op(downscale=factor)).downscale
    assert abs(read - factor) <= 0.2 * factor, read
    blurred = _estimate(shipped, astro_region, _op(blur_sigma_px=0.39 * factor)).downscale
    assert blurred < 1.2, blurred


@pytest.mark.parametrize("length", [5.0, 9.0, 13.0])
def test_shipped_reads_a_motion_blur_as_blur(
    shipped: FaDeX, astro_region: torch.Tensor, length: float
) -> None:
    """A held-out face blurred by a 5, 9 or 13 px motion reads, over three directions, within
    0.5 px of the Gaussian of the same spread (L / sqrt 12: 1.44, 2.60, 3.75 px), not as
    sharp; the face left sharp still reads sharp."""
    reads = [
        _estimate(shipped, astro_region, _op(motion_px=length, motion_angle_deg=a)).blur_sigma_px
        for a in (0.0, 60.0, 120.0)
    ]
    assert abs(float(np.mean(reads)) - equivalent_blur(0.0, length)) <= 0.5, reads
    assert _estimate(shipped, astro_region, _op()).blur_sigma_px < 0.3


def test_shipped_metadata_matches_variant() -> None:
    info = require_model("fadex-s")
    cfg = json.loads((info.folder / "config.json").read_text(encoding="utf-8"))
    variant = fadex_s().config
    assert cfg["channels"] == list(variant.channels)
    flags = ("stat_features", "edge_features", "trace_features", "downscale_head", "motion_head")
    for key in flags:
        assert cfg[key] == variant[key], key
    # the scene model was trained on this encoder's Z
    scene = require_model("scene-embedded")
    fadex = FaDeX.from_pretrained(str(info.folder), use_safetensors=True)
    assert scene.trained_with["fadex_encoder"] == fadex.encoder_sha256()
    assert info.licence == "Apache-2.0" and info.source == "trained here"


def test_train_command_rejects_bad_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from face2scene_cli.cli.commands import train as train_cmd

    bad = tmp_path / "bad.yaml"
    bad.write_text("network:\n  variant: fadex-s\nbogus: 1\n", encoding="utf-8")
    result = CliRunner().invoke(train_cmd.app, ["fadex", "--config", str(bad)])
    assert result.exit_code == 2, result.output
    assert "bogus" in result.output
