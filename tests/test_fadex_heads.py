"""Retraining FaDeX's heads on the frozen encoder: Z unchanged, new head inputs, training on
real training crops, and the release guard."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage import data as skdata

from face2scene_cli.archs.fadex import NUM_EDGE, FaDeX, edge_widths, fadex_tiny
from face2scene_cli.archs.motion import NUM_MOTION, motion_direction
from face2scene_cli.archs.resampling import NUM_RESAMPLING
from face2scene_cli.degradations.ops import gaussian_blur
from face2scene_cli.errors import ConfigError
from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.fadex_config import load_train_config
from face2scene_cli.research.train.fadex_heads import (
    STATISTICS_HEADS,
    HeadsConfig,
    build_features,
    build_groups,
    build_statistics_features,
    export_heads,
    load_or_build_statistics_features,
    train_heads,
    trained_heads,
    with_new_heads,
    with_statistics_head,
)

REPO = Path(__file__).resolve().parent.parent


def _face() -> torch.Tensor:
    img = skdata.astronaut()[57:185, 156:284]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


def test_edge_widths_grow_with_blur() -> None:
    face = _face()
    widths = {
        s: edge_widths(*(2 * [gaussian_blur(face, s) if s else face]))[0] for s in (0, 1, 2.5)
    }
    assert widths[0].shape == (NUM_EDGE,)
    lq = [float(widths[s][0]) for s in (0, 1, 2.5)]
    assert 0.7 < lq[0] < 1.6 and lq[0] < lq[1] < lq[2], lq
    # a sharp step edge of any contrast reads ~1 px; blurred by 2 px it reads ~2.2
    step = torch.zeros(1, 3, 64, 64)
    step[..., 32:] = 0.7
    assert float(edge_widths(step, step)[0, 0]) < 1.3
    wide = gaussian_blur(step, 2.0)
    assert 1.8 < float(edge_widths(wide, wide)[0, 0]) < 2.6


def test_new_heads_keep_the_encoder_and_z() -> None:
    torch.manual_seed(0)
    src = fadex_tiny(stat_features=True).eval()
    new = with_new_heads(src, edge_features=True, trace_features=True).eval()
    assert new.encoder_sha256() == src.encoder_sha256()
    assert new.config.edge_features and new.config.trace_features and new.config.stat_features
    lq, hq = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = src(lq, hq), new(lq, hq)
    assert torch.equal(a.z, b.z)
    assert new.features(lq, hq)[1].shape[1] == src.features(lq, hq)[1].shape[1] + NUM_EDGE + 2
    # a different encoder has a different hash
    other = fadex_tiny(stat_features=True)
    assert other.encoder_sha256() != src.encoder_sha256()


def test_new_heads_keep_the_statistics_heads() -> None:
    """New code and regression heads for a model with downscale and motion heads keep both;
    a motion head added to a model keeps its downscale head."""
    torch.manual_seed(0)
    src = with_statistics_head(fadex_tiny(stat_features=True), "downscale_head")
    both = with_statistics_head(src, "motion_head")
    assert all(torch.equal(v, both.state_dict()[k]) for k, v in src.state_dict().items())
    new = with_new_heads(both, edge_features=True)
    heads = {k: v for k, v in both.state_dict().items() if k.startswith(("down", "motion"))}
    assert any(k.startswith("motion_reg.") for k in heads)
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in heads.items())


@pytest.mark.parametrize(
    ("name", "width", "changed"),
    [("downscale_head", NUM_RESAMPLING, "downscale"), ("motion_head", NUM_MOTION, "blur_sigma_px")],
)
def test_a_statistics_head_changes_its_estimate_only(name: str, width: int, changed: str) -> None:
    """A statistics head appends its statistics to the descriptor and reads them alone:
    added to a model (the motion head to one with a downscale head), Z, the code and every
    other estimate stay bit-identical; the motion head's sigma joins the blur in quadrature."""
    torch.manual_seed(0)
    plain = fadex_tiny(stat_features=True, edge_features=True, trace_features=True)
    if name == "motion_head":
        plain = with_statistics_head(plain, "downscale_head")
    plain.eval()
    added = with_statistics_head(plain, name).eval()
    g = torch.Generator().manual_seed(1)
    lq, hq = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.inference_mode():
        a, b = plain(lq, hq), added(lq, hq)
        pooled = (plain.features(lq, hq)[1], added.features(lq, hq)[1])
        own = STATISTICS_HEADS[name].features(lq)
    assert pooled[1].shape[1] == pooled[0].shape[1] + width
    assert torch.equal(pooled[1][:, : pooled[0].shape[1]], pooled[0])
    assert torch.equal(pooled[1][:, -width:], own)
    assert plain.encoder_sha256() == added.encoder_sha256()
    fields = ("z", "code", "noise_sigma", "blur_sigma_px", "downscale", "jpeg_quality")
    for field in (*fields, "jpeg_probability"):
        if field != changed:
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(getattr(a, changed), getattr(b, changed))
    if name == "motion_head":
        motion = added.read_motion(own)
        torch.testing.assert_close(b.blur_sigma_px, torch.hypot(a.blur_sigma_px, motion))
        # the segment it stands for, and its direction, reach the estimates
        torch.testing.assert_close(b.motion_px, motion * 12**0.5)
        torch.testing.assert_close(b.motion_angle_deg, motion_direction(lq))
        assert a.motion_px is None and a.estimates()[0].motion_px == 0.0
        e = b.estimates()[0]
        assert (e.motion_px, e.motion_angle_deg) == pytest.approx(
            (float(b.motion_px[0]), float(b.motion_angle_deg[0]))
        )


def test_heads_learn_operator_groups_on_real_training_crops(tmp_path: Path) -> None:
    cfg = load_train_config(REPO / "configs" / "fadex.yaml")
    cfg = cfg.replace("data", crops_per_group=4, crop=64, p_face=0.0)
    photos = load_splits(REPO / "data" / "splits.yaml", verify=False)["train"][:4]
    shards = build_groups(cfg, photos, 8, seed=0, out=tmp_path / "groups", shard=4)
    assert len(shards) == 2 and all(p.is_file() for p in shards)
    # an interrupted run keeps what was written
    assert build_groups(cfg, photos, 8, seed=0, out=tmp_path / "groups", shard=4) == shards
    torch.manual_seed(0)
    model = with_new_heads(fadex_tiny(stat_features=True), edge_features=True).eval()
    hc = HeadsConfig(views=1, sizes=(64,), steps=300, ops_per_batch=6, crops_per_op=4, dev_groups=2)
    fs = build_features(model, shards, hc)
    assert fs.features.shape == (32, model.proj[0].in_features)
    encoder = model.encoder_sha256()
    model.requires_grad_(False)
    model.proj.requires_grad_(True)
    model.reg.requires_grad_(True)
    train_heads(model, fs, hc)
    with torch.no_grad():
        q = model.heads(fs.features).q
    sim = q @ q.T
    same = fs.group[:, None] == fs.group[None, :]
    train = (fs.group < 6)[:, None] & (fs.group < 6)[None, :]
    eye = torch.eye(len(q), dtype=torch.bool)
    pos, neg = float(sim[same & train & ~eye].mean()), float(sim[~same & train].abs().mean())
    assert pos > neg + 0.3, (pos, neg)
    assert model.encoder_sha256() == encoder


@pytest.mark.parametrize(
    ("name", "width", "degradation"),
    [
        ("downscale_head", NUM_RESAMPLING, {"p_downscale": 0.7, "p_blur": 0.0}),
        ("motion_head", NUM_MOTION, {"p_motion": 0.7, "motion_range": (3.0, 15.0)}),
    ],
)
def test_a_statistics_head_trains_alone_on_real_training_crops(
    name: str, width: int, degradation: dict
) -> None:
    """With ``downscale_head`` / ``motion_head`` only the new head moves (code, regression and
    other heads keep their weights): it reads LQ crops of training photos and learns their
    operators' factor / motion blur."""
    cfg = load_train_config(REPO / "configs" / "fadex-wide.yaml")
    dist = dataclasses.replace(cfg.data.degradation, **degradation)
    cfg = cfg.replace("data", crops_per_group=4, crop=64, p_face=0.0, degradation=dist)
    photos = load_splits(REPO / "data" / "splits.yaml", verify=False)["train"][:4]
    hc = HeadsConfig(groups=12, views=1, sizes=(64,), steps=2000, ops_per_batch=6)
    hc = dataclasses.replace(hc, dev_groups=2, **{name: True})
    fs = build_statistics_features(cfg, photos, hc)
    assert fs.features.shape == (12 * 4, width) and fs.group.max() == 11
    head = STATISTICS_HEADS[name]
    torch.manual_seed(0)
    model = with_statistics_head(fadex_tiny(stat_features=True), name).eval()
    assert trained_heads(model, hc) == [getattr(model, head.module)]
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(head.module)}
    seen, target = fs.group < 10, fs.labels[:, 0]  # the 10 groups it trains on
    assert target[seen].std() > 0.2

    def error() -> float:
        with torch.no_grad():
            return float((head.read(model, fs.features) - target)[seen].abs().mean())

    constant = float((target[seen] - target[seen].median()).abs().mean())
    model.requires_grad_(False)
    getattr(model, head.module).requires_grad_(True)
    train_heads(model, fs, hc)
    assert error() < 0.5 * constant, (constant, error())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in kept.items())
    with pytest.raises(ConfigError, match=f"{name} must be true or false"):
        HeadsConfig(**{name: "yes"})
    with pytest.raises(ConfigError, match="not both"):
        HeadsConfig(downscale_head=True, motion_head=True)


def test_statistics_cache_is_keyed_by_the_view_sizes(tmp_path: Path) -> None:
    """Cached statistics are reused only for the same settings: other view sizes make (and
    keep) a cache of their own."""
    cfg = load_train_config(REPO / "configs" / "fadex-motion-head.yaml")
    cfg = cfg.replace("data", crops_per_group=2, crop=64, p_face=0.0)
    photos = load_splits(REPO / "data" / "splits.yaml", verify=False)["train"][:2]
    hc = HeadsConfig(groups=5, views=1, sizes=(48,), motion_head=True)
    small = load_or_build_statistics_features(cfg, photos, hc, tmp_path)
    larger = dataclasses.replace(hc, sizes=(64,))
    other = load_or_build_statistics_features(cfg, photos, larger, tmp_path)
    assert len(list(tmp_path.glob("motion_reg-*.safetensors"))) == 2
    again = load_or_build_statistics_features(cfg, photos, hc, tmp_path)
    assert torch.equal(again.features, small.features)
    assert not torch.equal(small.features, other.features)


def test_export_refuses_a_different_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fadex_tiny().save_pretrained(str(tmp_path / "dest"), safe_serialization=True)
    fadex_tiny().save_pretrained(str(tmp_path / "trained"), safe_serialization=True)
    (tmp_path / "trained" / "result.json").write_text(json.dumps({}))
    weights = tmp_path / "dest" / "diffusion_pytorch_model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(ValueError, match="encoder differs"):
        export_heads(tmp_path / "trained", tmp_path / "dest", REPO / "configs" / "fadex.yaml")
    assert weights.read_bytes() == before


def _train_heads_command(
    tmp_path: Path, config: str, crops: int, *extra: str
) -> tuple[FaDeX, dict, FaDeX, dict]:
    """``f2s train fadex-heads`` on a tiny FaDeX, 20 operators of ``crops`` crops, 30 steps:
    (source, printed result, trained model, its result.json)."""
    from typer.testing import CliRunner

    from face2scene_cli.cli.commands import train as train_cmd

    doc = yaml.safe_load((REPO / "configs" / config).read_text(encoding="utf-8"))
    doc["data"].update(crops_per_group=crops, p_face=0.0, splits=str(REPO / "data" / "splits.yaml"))
    doc["train"].update(crops_per_op=min(crops, doc["train"]["crops_per_op"]))
    doc["val"].update(crops=2, crop=64)
    cfg = tmp_path / "fadex.yaml"
    cfg.write_text(yaml.safe_dump(doc), encoding="utf-8")
    torch.manual_seed(0)
    src = fadex_tiny(stat_features=True)
    src.save_pretrained(str(tmp_path / "src"), safe_serialization=True)
    args = ["fadex-heads", "--config", str(cfg), "--from", str(tmp_path / "src")]
    args += ["--run-dir", str(tmp_path / "run"), "--groups", "20", "--steps", "30", *extra]
    result = CliRunner().invoke(train_cmd.app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    saved = json.loads((Path(out["out"]) / "result.json").read_text(encoding="utf-8"))
    return src, out, FaDeX.from_pretrained(out["out"]), saved


def test_train_fadex_heads_command_end_to_end(tmp_path: Path) -> None:
    src, out, trained, saved = _train_heads_command(tmp_path, "fadex.yaml", 4)
    assert set(out["dev"]) >= {"same_degradation_cos", "same_content_abs_cos", "blur_mae"}
    assert trained.config.edge_features and trained.config.trace_features
    assert trained.encoder_sha256() == src.encoder_sha256()
    assert saved["heads"]["steps"] == 30 and saved["descriptors"] == 20 * 4 * 2


@pytest.mark.parametrize(
    ("name", "config", "dev"),
    [
        ("downscale_head", "fadex-downscale.yaml", {"downscale_4", "downscale_at_blur2"}),
        ("motion_head", "fadex-motion-head.yaml", {"motion_13", "blur_4"}),
    ],
)
def test_train_fadex_heads_command_trains_a_statistics_head(
    tmp_path: Path, name: str, config: str, dev: set[str]
) -> None:
    extra = ("--set", f"{name}=true", "--set", "sizes=[64]")
    src, out, trained, saved = _train_heads_command(tmp_path, config, 2, *extra)
    assert dev <= set(out["dev"])
    assert trained.config[name] and trained.encoder_sha256() == src.encoder_sha256()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in src.state_dict().items())
    assert saved["descriptors"] == 20 * 2 * 2 and saved["dev_score"] is None
    module = STATISTICS_HEADS[name].module
    assert len(list((tmp_path / "run").glob(f"{module}-*.safetensors"))) == 1
