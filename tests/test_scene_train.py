"""Stage II training: degradations, losses, one real (tiny) training run with resume and export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import missing_data
from safetensors.torch import load_file

from face2scene_cli.archs.fadex import FaDeX, fadex_tiny
from face2scene_cli.degradations.record import Degradation
from face2scene_cli.degradations.sampling import apply
from face2scene_cli.research.train.scene import restoration_loss, train_scene
from face2scene_cli.research.train.scene_config import DataSection, load_scene_config
from face2scene_cli.restorers.scene import SceneRestorer
from face2scene_cli.zoo import read_model_info, verify_model, write_metadata


def test_loss_is_small_for_identical_images_and_grows_with_error() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    same, _ = restoration_loss(x, x, 0.2, 0.1, 0.02)
    noisy, parts = restoration_loss((x + 0.1 * torch.randn_like(x)).clamp(0, 1), x, 0.2, 0.1, 0.02)
    assert float(same) < 2e-3 < float(noisy)
    assert set(parts) == {"pix", "ssim", "grad", "fft"}
    assert all(v.ndim == 0 and not v.requires_grad for v in parts.values())


def test_degradations_replay_from_their_records() -> None:
    import numpy as np

    x = torch.rand(1, 3, 48, 48)
    rng = np.random.default_rng(3)
    kinds = set()
    for _ in range(30):
        deg = DataSection().degradation.sample(rng)
        kinds.add(deg.mode)
        back = Degradation.from_dict(json.loads(json.dumps(deg.to_dict())))  # JSON-able
        a, b = apply(x, deg), apply(x, back)
        assert torch.equal(a, b) and a.shape == x.shape  # the scene data keeps the size
    assert kinds == {"preset", "parametric", "second-order"}


@pytest.fixture
def tiny_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A model zoo holding a tiny FaDeX (random weights) under the name fadex-tiny."""
    zoo = tmp_path / "zoo"
    torch.manual_seed(0)
    fadex_tiny().save_pretrained(str(zoo / "fadex-tiny"), safe_serialization=True)
    (zoo / "fadex-tiny" / "README.md").write_text("# tiny test FaDeX\n")
    write_metadata(
        zoo / "fadex-tiny",
        {
            "name": "fadex-tiny",
            "version": "0",
            "task": "test",
            "licence": "Apache-2.0",
            "source": "trained here",
            "input": {},
            "trained_with": {},
        },
        ["diffusion_pytorch_model.safetensors"],
    )
    monkeypatch.setenv("F2S_MODELS_DIR", str(zoo))
    return zoo, read_model_info(zoo / "fadex-tiny").sha256


def _tiny_config(tmp_path: Path, **train: object) -> Path:
    splits = Path("data/splits.yaml")
    if not splits.is_file():
        missing_data("data/splits.yaml missing")
    doc = yaml.safe_load(splits.read_text())
    keep = {
        "skimage/camera": "train",
        "skimage/chelsea": "train",
        "skimage/astronaut": "val",
        "skimage/coffee": "val",  # no face: validated on its scene crops' code
    }
    photos = [dict(p, split=keep[p["name"]]) for p in doc["photos"] if p["name"] in keep]
    (tmp_path / "splits.yaml").write_text(yaml.safe_dump({"photos": photos}))
    cfg = {
        "name": "scene-test",
        "data": {
            "splits": str(tmp_path / "splits.yaml"),
            "region": 64,
            "face_crop": 32,
            "samples": 6,
            "base_long_side": [256, 128],
        },
        "network": {
            "variant": "scene-tiny",
            "fadex": "fadex-tiny",
            "mapnet": {"dim": 16, "heads": 2},
        },
        "train": {"batch": 2, "crop": 32, "steps": 2, "threads": 2, **train},
        "val": {"long_side": 64, "presets": ["noise15"], "second_order_seeds": [], "face_crop": 32},
        "logging": {
            "run_dir": str(tmp_path / "run"),
            "export_to": str(tmp_path / "export"),
            "log_every": 1,
        },
    }
    path = tmp_path / "scene.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_training_run_resumes_and_exports(tmp_path: Path, tiny_zoo) -> None:
    _, fadex_sha = tiny_zoo
    cfg_path = _tiny_config(tmp_path, condition="code", cond_dropout=0.5)
    untouched = {
        "data.degradation": {"p_clean": 0.5, "p_poisson": 0.3, "p_gray_noise": 0.2},
        "network.mapnet": {"dim": 16, "heads": 2, "noise_levels": [0.0, 128.0, 255.0]},
    }
    result = train_scene(load_scene_config(cfg_path, untouched))
    assert result["steps"] == 2
    run = tmp_path / "run"
    assert (run / "checkpoint" / "ema.safetensors").is_file()
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    # resume continues the step count
    cfg = load_scene_config(cfg_path, {"train.steps": 3, **untouched})
    assert train_scene(cfg, resume=True)["steps"] == 3
    # the export is a verified zoo folder that records the FaDeX it was trained with
    info = read_model_info(tmp_path / "export")
    assert verify_model(info) == []
    assert info.trained_with["fadex"] == fadex_sha
    fadex = FaDeX.from_pretrained(str(tiny_zoo[0] / "fadex-tiny"))
    assert info.trained_with["fadex_encoder"] == fadex.encoder_sha256()
    restorer = SceneRestorer.from_pretrained(tmp_path / "export")
    out = restorer.restore(torch.rand(1, 3, 40, 40), None)
    assert out.shape == (1, 3, 40, 40) and torch.isfinite(out).all()
    # MapNet learned from the samples' noise curves (its noise input starts at zero)
    assert restorer.takes_noise and float(restorer.mapnet.noise_embed[-1].weight.abs().max()) > 0
    # the release says which photos it was trained on; every cached sample is one of them
    training = json.loads((tmp_path / "export" / "training.json").read_text())
    train = {p["name"] for p in training["data_manifest"]["train"]}
    assert train == {"skimage/camera", "skimage/chelsea"}
    assert all(p["sha256"] for p in training["data_manifest"]["train"])
    photos = json.loads((run / "cache" / "photos.json").read_text())
    assert len(photos) == 6 and set(photos) <= train
    # the untouched share is in the cache and on the card
    cache = load_file(str(run / "cache" / "samples.safetensors"))
    same = [torch.equal(a, b) for a, b in zip(cache["lq"], cache["clean"], strict=True)]
    assert 0 < sum(same) < 6
    card = (tmp_path / "export" / "README.md").read_text()
    assert "50% of the regions left untouched" in card
    assert "30% of the parametric draws with camera shot noise" in card
    assert "20% of the parametric draws gray noise" in card


def test_validation_reads_a_photo_without_a_face_off_its_scene_crops() -> None:
    """The trainer validates as f2s restore reads: the astronaut's code off its face crop, the
    coffee photo's (no face) off its 8 scene crops, restored blind, with their confidences."""
    from face2scene_cli.pipelines.reading import SCENE_CROPS, scene_crop_boxes
    from face2scene_cli.research.splits import load_splits
    from face2scene_cli.research.train.scene_config import ValSection
    from face2scene_cli.research.train.scene_data import build_val_items
    from face2scene_cli.restorers.face.blind import BlindFaceRestorer

    names = {"skimage/astronaut", "skimage/coffee"}
    photos = [p for p in load_splits(Path("data/splits.yaml"))["val"] if p.name in names]
    if len(photos) != 2:
        missing_data("the astronaut and coffee VAL photos")
    val = ValSection(long_side=256, presets=("noise15",), second_order_seeds=(), face_crop=48)
    items = {it.name: it for it in build_val_items(photos, val, BlindFaceRestorer())}
    astronaut, coffee = items["skimage/astronaut"], items["skimage/coffee"]
    assert astronaut.face_lq.shape == (1, 3, 48, 48) and len(astronaut.weights) == 1
    lq = (coffee.lq[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    boxes = scene_crop_boxes(lq, 48, SCENE_CROPS)
    assert coffee.face_lq.shape == (SCENE_CROPS, 3, 48, 48) == coffee.face_hq.shape
    for crop, (x0, y0, x1, y1) in zip(coffee.face_lq, boxes, strict=True):
        assert torch.equal(crop, coffee.lq[0, :, y0:y1, x0:x1])
    assert len(coffee.weights) == SCENE_CROPS and all(0 < w <= 1 for w in coffee.weights)
    assert not torch.equal(coffee.face_hq, coffee.face_lq)  # the noise was restored


def test_validation_scores_parametric_items_and_resets_best_when_items_change(
    tmp_path: Path, tiny_zoo
) -> None:
    from face2scene_cli.errors import ConfigError

    cfg_path = _tiny_config(tmp_path)
    blur3 = {"val.parametric": {"blur3": {"blur_sigma_px": 3.0}}}
    train_scene(load_scene_config(cfg_path, blur3))
    rows = [json.loads(x) for x in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
    assert set(rows[-1]["blind"]) == {"noise15", "blur3"}
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["val_items"]["parametric"] == {"blur3": {"blur_sigma_px": 3.0}}
    # a warm start validated on other (here harder) items exports its first score: the
    # best of the earlier items is not a bar for it
    warm = {
        "train.init_from": str(tmp_path / "run" / "checkpoint"),
        "logging.run_dir": str(tmp_path / "run2"),
        "logging.export_to": str(tmp_path / "export2"),
    }
    train_scene(
        load_scene_config(cfg_path, {**warm, "val.parametric": {"noise50": {"noise_sigma": 50.0}}})
    )
    assert (tmp_path / "export2" / "training.json").is_file()
    with pytest.raises(ConfigError, match=r"val\.parametric\.bad"):
        load_scene_config(cfg_path, {"val.parametric": {"bad": {"sharpness": 2}}})
    camera = {"camera": {"poisson_scale": 1.0, "noise_sigma": 2.0, "gray_noise": True}}
    assert load_scene_config(cfg_path, {"val.parametric": camera}).val.parametric == camera


def test_validation_score_counts_each_item_up_to_the_ceiling() -> None:
    """A clean item restored at 77 dB counts as 50: it would otherwise outweigh tenths of a
    dB on every degraded item (and the ceiling is part of what makes scores comparable)."""
    from face2scene_cli.research.train.scene import validation_score
    from face2scene_cli.research.train.scene_config import SCORE_CEILING_DB, ValSection

    means = {"clean": {"psnr": 77.0}, "noise15": {"psnr": 32.0}, "mixed": {"psnr": 28.0}}
    assert SCORE_CEILING_DB == 50.0
    assert validation_score({"means": means}) == pytest.approx((50 + 32 + 28) / 3)
    better_clean = {**means, "clean": {"psnr": 90.0}}
    better_noise = {**means, "noise15": {"psnr": 32.3}}
    assert validation_score({"means": better_noise}) > validation_score({"means": better_clean})
    assert ValSection().items_key()["score_ceiling_db"] == 50.0


def test_a_learned_x2_upscaler_trains_on_aligned_pairs_and_exports(
    tmp_path: Path, tiny_zoo
) -> None:
    from face2scene_cli.errors import ConfigError
    from face2scene_cli.research.train.scene_config import SceneTrainConfig
    from face2scene_cli.research.train.scene_data import for_scale

    over = {
        "data.scale": 2,
        "data.region": 96,
        "train.crop": 32,
        "val.second_order_seeds": [3],
    }
    cfg = load_scene_config(_tiny_config(tmp_path, condition="code", cond_dropout=0.5), over)
    assert train_scene(cfg)["steps"] == 2
    restorer = SceneRestorer.from_pretrained(tmp_path / "export")
    assert restorer.upscale == 2
    assert restorer.restore(torch.rand(1, 3, 24, 40), None, scale=2).shape == (1, 3, 48, 80)
    rows = [json.loads(x) for x in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
    assert set(rows[-1]["code"]) == {"noise15", "second-order-3"}
    # the pairs: LQ regions at half the clean regions' size
    cache = load_file(str(tmp_path / "run" / "cache" / "samples.safetensors"))
    assert cache["lq"].shape[-1] * 2 == cache["clean"].shape[-1] == 96
    # preset/parametric records end at 1/2 size; second-order ones get final_scale 2
    noise = for_scale(Degradation.from_preset("noise15", 1), 2)
    assert noise.mode == "parametric" and noise.downscale == 2 and not noise.resize_back
    assert apply(torch.rand(1, 3, 32, 32), noise).shape == (1, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"must equal data\.scale"):
        SceneTrainConfig(
            data=cfg.data,
            network=dataclasses.replace(cfg.network, overrides={"upscale": 4}),
            train=cfg.train,
        )


def test_upscaler_batches_cut_aligned_lq_and_clean_crops() -> None:
    import numpy as np

    from face2scene_cli.research.train.scene import _batch
    from face2scene_cli.research.train.scene_config import TrainSection

    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(4, 3, 24, 24, generator=g) * 255).round()
    clean = torch.nn.functional.interpolate(clean, scale_factor=4, mode="nearest")  # 96 px
    lq = torch.nn.functional.interpolate(clean, scale_factor=0.25, mode="area")  # exact
    cache = {"lq": lq.to(torch.uint8), "clean": clean.to(torch.uint8)}
    tc = TrainSection(batch=6, crop=12)
    lq_b, clean_b, _, _ = _batch(cache, None, None, tc, np.random.default_rng(0))
    assert lq_b.shape == (6, 3, 12, 12) and clean_b.shape == (6, 3, 48, 48)
    down = torch.nn.functional.interpolate(clean_b, scale_factor=0.25, mode="area")
    assert torch.allclose(lq_b, down, atol=1e-6)  # same place, same flip and turn


def test_batch_crops_are_the_cached_samples_turned_and_flipped_every_way() -> None:
    import numpy as np

    from face2scene_cli.research.train.scene import _batch
    from face2scene_cli.research.train.scene_config import TrainSection

    g = torch.Generator().manual_seed(1)
    lq = (torch.rand(3, 3, 20, 20, generator=g) * 255).to(torch.uint8)
    cache = {"lq": lq, "clean": lq.clone()}
    noise = torch.arange(3.0)[:, None].expand(3, 5)  # each sample's noise features: its index
    tc = TrainSection(batch=64, crop=8)
    lq_b, clean_b, _, noise_b = _batch(cache, None, noise, tc, np.random.default_rng(3))
    assert torch.equal(lq_b, clean_b)
    seen = set()
    for crop, features in zip((lq_b * 255).round().to(torch.uint8), noise_b, strict=True):
        # the one place and transform of some cached sample that gives this crop
        hits = [
            (i, k, flip)
            for i in range(3)
            for y in range(13)
            for x in range(13)
            for k in range(4)
            for flip in (False, True)
            if torch.equal(
                torch.rot90(lq[i, :, y : y + 8, x : x + 8], k, (-2, -1)).flip(-1)
                if flip
                else torch.rot90(lq[i, :, y : y + 8, x : x + 8], k, (-2, -1)),
                crop,
            )
        ]
        assert len(hits) == 1 and torch.equal(features, noise[hits[0][0]])  # its own curve
        seen.add(hits[0][1:])
    assert len(seen) == 8  # all four turns, each also mirrored


def test_bf16_autocast_training_keeps_fp32_weights_and_a_close_loss(
    tmp_path: Path, tiny_zoo
) -> None:
    from face2scene_cli.errors import ConfigError

    losses = {}
    for amp in ("none", "bf16"):
        (tmp_path / amp).mkdir()
        cfg_path = _tiny_config(tmp_path / amp, condition="code", cond_dropout=0.5)
        assert train_scene(load_scene_config(cfg_path, {"train.amp": amp}))["steps"] == 2
        run = tmp_path / amp / "run"
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        losses[amp] = rows[0]["loss"]
        ema = load_file(str(run / "checkpoint" / "ema.safetensors"))
        assert all(v.dtype == torch.float32 for v in ema.values())
    # the same first batch: bf16 changes the loss by its rounding, not by a different batch
    assert losses["bf16"] == pytest.approx(losses["none"], rel=0.05)
    assert losses["bf16"] != losses["none"]
    with pytest.raises(ConfigError, match="amp"):
        load_scene_config(cfg_path, {"train.amp": "fp8"})


def test_a_cache_with_photos_outside_the_train_split_is_refused(tmp_path: Path, tiny_zoo) -> None:
    from face2scene_cli.errors import ConfigError

    train_scene(load_scene_config(_tiny_config(tmp_path)))
    cache = tmp_path / "run" / "cache"
    photos = json.loads((cache / "photos.json").read_text())
    (cache / "photos.json").write_text(json.dumps(["skimage/astronaut", *photos[1:]]))
    reuse = {"data.cache_from": str(cache), "logging.run_dir": str(tmp_path / "run2")}
    with pytest.raises(ConfigError, match=r"outside the train split.*skimage/astronaut"):
        train_scene(load_scene_config(tmp_path / "scene.yaml", reuse))
    (cache / "photos.json").unlink()  # a cache from before photos were recorded
    with pytest.raises(ConfigError, match="does not record its samples' photos"):
        train_scene(load_scene_config(tmp_path / "scene.yaml", reuse))


def test_warm_start_adds_a_refinement_or_a_noise_input_and_refuses_other_mismatches(
    tmp_path: Path,
) -> None:
    from face2scene_cli.archs.mapnet import mapnet_tiny
    from face2scene_cli.archs.scene_net import scene_tiny
    from face2scene_cli.errors import ConfigError
    from face2scene_cli.research.train.scene import load_warm, scene_modules

    torch.manual_seed(0)
    old = scene_modules(scene_tiny(), mapnet_tiny(cross_attention_dim=16))
    new = scene_modules(scene_tiny(refine_channels=8), mapnet_tiny(cross_attention_dim=16))
    load_warm(new, old.state_dict(), tmp_path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # the zero-initialised refinement starts where the old net was
        assert torch.equal(new["net"](x), old["net"](x))
    with pytest.raises(ConfigError, match="does not fit"):
        load_warm(old, new.state_dict(), tmp_path)
    # MapNet's noise-curve input is added the same way: it starts at zero
    noisy = scene_modules(
        scene_tiny(), mapnet_tiny(cross_attention_dim=16, noise_levels=(0.0, 255.0))
    )
    load_warm(noisy, old.state_dict(), tmp_path)
    tokens = old["mapnet"].null_tokens(1)
    with torch.no_grad():
        assert torch.equal(noisy["mapnet"].with_noise(tokens, torch.tensor([[3.0, 9.0]])), tokens)


@pytest.mark.parametrize("path", sorted(Path("configs").glob("scene*.yaml")), ids=str)
def test_every_scene_config_in_the_repository_loads(path: Path) -> None:
    cfg = load_scene_config(path)
    assert cfg.data.region % cfg.data.scale == 0 and cfg.name


def test_code_condition_needs_dropout_and_fadex(tmp_path: Path) -> None:
    from face2scene_cli.errors import ConfigError

    cfg_path = _tiny_config(tmp_path, condition="code", cond_dropout=0.1)
    with pytest.raises(ConfigError, match=r"cond_dropout must be >= 0\.2"):
        load_scene_config(cfg_path)


def test_evaluation_table_and_targets_on_a_real_photo(tmp_path: Path) -> None:
    from face2scene_cli.archs.mapnet import mapnet_tiny
    from face2scene_cli.archs.scene_net import scene_tiny
    from face2scene_cli.config import EvalConfig
    from face2scene_cli.faces.detect import create_detector
    from face2scene_cli.pipelines.reading import DegradationReader
    from face2scene_cli.research.eval.items import degraded_items
    from face2scene_cli.research.eval.scene import EvalModels, evaluate
    from face2scene_cli.research.eval.tables import targets, to_markdown
    from face2scene_cli.research.sample_data import package_photos
    from face2scene_cli.restorers.face.blind import BlindFaceRestorer
    from face2scene_cli.restorers.scene import RestoreSettings

    photos = [(p.name, p.path) for p in package_photos() if p.name == "skimage/astronaut"]
    if not photos:
        missing_data("scikit-image astronaut not available")
    variants = ("input", "nlm", "usm", "blind", "code", "upper", "wrong")
    cfg = EvalConfig(long_side=192, second_order=0, nlm_h=(5, 15), variants=variants)
    items = degraded_items(photos, cfg)
    torch.manual_seed(0)
    restorer = SceneRestorer(
        scene_tiny(token_dim=32), RestoreSettings(), mapnet_tiny(cross_attention_dim=32)
    )
    reader = DegradationReader(fadex_tiny().eval(), BlindFaceRestorer())
    models = EvalModels(restorer, reader, create_detector("mtcnn"))
    cache = tmp_path / "oracles.json"
    table = evaluate(items, models, cfg, oracle_cache=cache).table
    assert list(table["by_degradation"]) == ["noise15", "blur-noise", "mixed"]
    noise = table["by_degradation"]["noise15"]
    assert set(noise) == {"input", "nlm", "usm", "blind", "code", "upper", "wrong"}
    # NLM at its best h denoises sigma-15 noise; the untrained residual net is near the identity
    assert noise["nlm"]["psnr"] > noise["input"]["psnr"] + 1
    assert abs(noise["blind"]["psnr"] - noise["input"]["psnr"]) < 0.2
    assert table["nlm_h"]["noise15"] in (5, 15) and cache.is_file()
    checks = {c["target"]: c for c in targets(table)}
    assert not checks["noise15: code PSNR gain over input >= +3 dB"]["pass"]
    md = to_markdown(table, list(checks.values()))
    assert "| noise15 (1) |" in md and "**no**" in md


def test_the_critic_learns_to_tell_clean_patches_from_blurred_ones() -> None:
    import numpy as np
    from skimage import data as skdata

    from face2scene_cli.research.train.discriminator import UNetDiscriminator, critic_losses

    photo = torch.from_numpy(np.ascontiguousarray(skdata.astronaut())).permute(2, 0, 1) / 255
    torch.manual_seed(0)
    critic = UNetDiscriminator(channels=8)
    opt = torch.optim.Adam(critic.parameters(), lr=2e-3, betas=(0.9, 0.99))
    blur = torch.nn.AvgPool2d(5, stride=1, padding=2, count_include_pad=False)

    def patches(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ys, xs = torch.randint(0, 512 - 32, (2, n))
        real = torch.stack([photo[:, y : y + 32, x : x + 32] for y, x in zip(ys, xs, strict=True)])
        return real, blur(real)

    real, fake = patches(16)
    g_loss, d_loss = critic_losses(critic, fake.requires_grad_(), real)
    g_loss.backward()  # the restorer's term reaches the input, not the critic
    assert fake.grad is not None and all(p.grad is None for p in critic.parameters())
    for _ in range(60):
        real, fake = patches(16)
        _, d_loss = critic_losses(critic, fake, real)
        opt.zero_grad()
        d_loss.backward()
        opt.step()
    critic.eval()
    real, fake = patches(32)
    with torch.no_grad():
        on_real, on_fake = critic(real).mean((1, 2, 3)), critic(fake).mean((1, 2, 3))
    assert (on_real > on_fake).float().mean() > 0.9


def test_adversarial_training_checkpoints_its_critic_and_resumes_it(
    tmp_path: Path, tiny_zoo
) -> None:
    from face2scene_cli.errors import ConfigError

    cfg_path = _tiny_config(tmp_path, w_gan=0.1, critic_channels=8)
    assert train_scene(load_scene_config(cfg_path))["steps"] == 2
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["gan"] > 0 and r["critic"] > 0 for r in rows)
    critic_file = run / "checkpoint-critic" / "model.safetensors"
    before = load_file(str(critic_file))
    assert json.loads((run / "checkpoint-critic" / "state.json").read_text())["step"] == 2
    # a resume with no step left saves the critic it read back, not a fresh one
    assert train_scene(load_scene_config(cfg_path), resume=True)["steps"] == 2
    reread = load_file(str(critic_file))
    assert all(torch.equal(before[k], reread[k]) for k in before)
    assert train_scene(load_scene_config(cfg_path, {"train.steps": 3}), resume=True)["steps"] == 3
    after = load_file(str(critic_file))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # and it trains on
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_scene_config(cfg_path, {"train.crop": 30})


def test_every_run_of_the_gpu_plan_loads() -> None:
    plan = yaml.safe_load(Path("configs/gpu-plan.yaml").read_text())
    for name, run in plan["runs"].items():
        cfg = load_scene_config(Path(run["config"]), run.get("set", {}))  # unknown keys raise
        assert cfg.train.w_gan == run["set"].get("train.w_gan", 0.0), name
