"""Training of the Stage II scene restorer + MapNet (``f2s train scene --config ...``).

FaDeX is frozen; MapNet and the scene network train jointly. The config is BasicSR-style YAML
(``data`` / ``network`` / ``train`` / ``val`` / ``logging``,
:class:`~face2scene_cli.research.train.scene_config.SceneTrainConfig`).

Data (:mod:`~face2scene_cli.research.train.scene_data`): regions of the TRAIN photos of
``data/splits.yaml`` (the FaDeX split, reused) degraded once by ``data.degradation`` (a
:class:`~face2scene_cli.degradations.sampling.DegradationDistribution`: a mix of the named
presets, a parametric grid (blur -> downscale and back -> noise -> JPEG with random values)
and Real-ESRGAN's second-order pipeline); stored as uint8 (so JPEG is never re-encoded per
step). From the SAME degraded region a face-sized crop (centred on a dlib face in people
photos) is cut at native resolution and restored by :class:`BlindFaceRestorer`, as at
inference; FaDeX's map Z of that (LQ, HQ) pair is cached per sample once FaDeX's weights
exist. Each step draws random sub-crops (+ flips / 90° turns) of cached regions.

Conditioning: ``train.condition`` is ``blind`` (every sample gets MapNet's null tokens; usable
before FaDeX exists) or ``code`` (MapNet(Z) tokens, replaced by the null tokens with
probability ``train.cond_dropout`` >= 0.2 so the blind mode stays a fair baseline). With
``network.mapnet.noise_levels``, the tokens (coded or null) also carry each sample's noise
curve, read off its degraded region as ``f2s restore`` reads a photo's, except in a
``train.noise_dropout`` share of the samples (so a caller without a curve gets a fair result).
``train.init_from`` warm-starts from another run's checkpoint (e.g. the blind phase).

Losses: Charbonnier + ``w_ssim`` (1 - SSIM) + ``w_grad`` L1 of image gradients + ``w_fft``
L1 of FFT amplitudes; with ``w_gan > 0`` also a non-saturating adversarial term from a U-Net
critic trained alongside (:mod:`~face2scene_cli.research.train.discriminator`; its weights and
optimizer are checkpointed in ``checkpoint-critic/`` and never exported). An EMA of the
weights is what validation and export use. ``train.amp: bf16`` runs the forward passes under
bf16 autocast (for a GPU; the weights, optimizer, EMA and losses stay fp32).

Validation (:func:`~face2scene_cli.research.train.scene_data.build_val_items`) reads each VAL
photo's code as ``f2s restore`` does: off its face crop, else off its scene crops.

Run folder: ``config.yaml``, ``data_manifest.json``, ``cache/`` (degraded regions, codes),
``log.jsonl``, ``val.jsonl``, ``checkpoint/`` (weights, EMA, optimizer, step, wall time, RNG
states; safetensors + JSON, no pickle), ``result.json``. The best validation weights are
exported to ``logging.export_to`` (a model folder with metadata and card,
:mod:`~face2scene_cli.research.train.scene_export`) whenever the validation score (the
items' mean PSNR, each counted up to :data:`SCORE_CEILING_DB`) improves over the previous
export.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor

from face2scene_cli.archs.mapnet import MapNet
from face2scene_cli.degradations.noise_level import estimate_noise_curve
from face2scene_cli.errors import ConfigError
from face2scene_cli.hashing import file_sha256
from face2scene_cli.registry import create
from face2scene_cli.research.metrics import ssim_torch
from face2scene_cli.research.splits import load_splits
from face2scene_cli.research.train.checkpoint import load_checkpoint, save_checkpoint
from face2scene_cli.research.train.discriminator import UNetDiscriminator, critic_losses
from face2scene_cli.research.train.scene_config import (
    SCORE_CEILING_DB,
    SceneTrainConfig,
    TrainSection,
)
from face2scene_cli.research.train.scene_data import (
    build_cache,
    build_val_items,
    cache_codes,
    check_cache_photos,
    evaluate_items,
    load_cache,
    save_cache,
)
from face2scene_cli.research.train.scene_export import export_model
from face2scene_cli.restorers.face.blind import BlindFaceRestorer
from face2scene_cli.restorers.scene import RestoreSettings, SceneRestorer, noise_features

__all__ = ["load_warm", "restoration_loss", "scene_modules", "train_scene"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# losses


def _charbonnier(a: Tensor, b: Tensor, eps: float = 1e-3) -> Tensor:
    return torch.sqrt((a - b) ** 2 + eps * eps).mean()


def restoration_loss(
    out: Tensor, target: Tensor, w_ssim: float, w_grad: float, w_fft: float
) -> tuple[Tensor, dict[str, float]]:
    r"""Pixel + structure loss of :math:`(B, 3, H, W)` batches in [0, 1]; returns the total and
    its parts (detached 0-dim tensors: reading them waits for the device, so the trainer does
    that only on the steps it logs)."""
    pix = _charbonnier(out, target)
    ssim = (
        ssim_torch(out.clamp(0, 1).float(), target.float()).mean() if w_ssim else out.new_zeros(())
    )
    dxo, dyo = out[..., :, 1:] - out[..., :, :-1], out[..., 1:, :] - out[..., :-1, :]
    dxt, dyt = target[..., :, 1:] - target[..., :, :-1], target[..., 1:, :] - target[..., :-1, :]
    grad = (dxo - dxt).abs().mean() + (dyo - dyt).abs().mean()
    fft = (torch.fft.rfft2(out).abs() - torch.fft.rfft2(target).abs()).abs().mean() / out.shape[-1]
    total = pix + w_ssim * (1 - ssim) + w_grad * grad + w_fft * fft
    parts = {"pix": pix, "ssim": ssim, "grad": grad, "fft": fft}
    return total, {k: v.detach() for k, v in parts.items()}


# ------------------------------------------------------------------------------------------
# checkpoints, schedule, batches


def scene_modules(net: torch.nn.Module, mapnet: MapNet) -> torch.nn.ModuleDict:
    """The scene network and its MapNet as one module (``net.*``, ``mapnet.*``): what the
    checkpoints, the EMA and warm starts hold."""
    return torch.nn.ModuleDict({"net": net, "mapnet": mapnet})


def load_warm(model: torch.nn.Module, state: dict[str, Tensor], src: Path) -> None:
    """Warm start from ``state``; only the layers of a newly added full-resolution refinement
    or its token modulation (``net.refine*``) or of MapNet's noise-curve input
    (``mapnet.noise_embed``), all zero-initialised, may be missing from it."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = ("net.refine.", "net.refine_mod.", "mapnet.noise_embed.")
    new_layers = [k for k in missing if not k.startswith(fresh)]
    if new_layers or unexpected:
        raise ConfigError(
            f"train.init_from {src} does not fit the network: missing {new_layers[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


def _deadline(tc: TrainSection, start: float) -> float:
    """Monotonic time at which to stop (max_minutes, and the UTC deadline if given)."""
    end = start + tc.max_minutes * 60
    if tc.deadline_utc:
        hh, mm = (int(v) for v in tc.deadline_utc.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if target < now - dt.timedelta(hours=12):
            target += dt.timedelta(days=1)
        end = min(end, start + (target - now).total_seconds())
    return end


def _lr(tc: TrainSection, step: int, progress: float) -> float:
    """Learning rate after linear warm-up; ``progress`` in [0, 1] drives the cosine decay."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.lr_schedule == "constant":
        return tc.lr * warm
    if tc.lr_schedule != "cosine":
        raise ValueError(f"train.lr_schedule must be constant or cosine, not {tc.lr_schedule!r}")
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return warm * (tc.lr_min + (tc.lr - tc.lr_min) * cos)


def _crops(x: Tensor, idx: Tensor, y0: Tensor, x0: Tensor, side: int) -> Tensor:
    """``x[idx[b], :, y0[b]:y0[b] + side, x0[b]:x0[b] + side]`` for every b in one gather:
    :math:`(N, C, H, W)` -> :math:`(B, C, side, side)`, on ``x``'s device."""
    ar = torch.arange(side, device=x.device)
    ys, xs = y0[:, None] + ar, x0[:, None] + ar
    return x[idx[:, None, None], :, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)


def _dihedral(x: Tensor, transpose: Tensor, flip_w: Tensor, flip_h: Tensor) -> Tensor:
    """Each square sample of :math:`(B, C, S, S)` transposed / flipped where its :math:`(B,)`
    bool masks say: the three together draw all eight rotations and reflections."""

    def where(mask: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return torch.where(mask.view(-1, 1, 1, 1), y, z)

    x = where(transpose, x.transpose(-1, -2), x)
    x = where(flip_w, x.flip(-1), x)
    return where(flip_h, x.flip(-2), x)


def _batch(
    cache: dict[str, Any],
    codes: Tensor | None,
    noise: Tensor | None,
    tc: TrainSection,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """A training batch drawn from the cache, on the cache's device: random samples, crops at
    random offsets (the clean crop ``scale`` x larger at the same place) and a random
    rotation / reflection each; ``lq`` :math:`(B, 3, c, c)` and ``clean``
    :math:`(B, 3, c s, c s)` in [0, 1], the samples' codes and noise features, or None."""
    n, r = cache["lq"].shape[0], cache["lq"].shape[-1]
    s, c = cache["clean"].shape[-1] // r, tc.crop  # an upscaler's clean crop is s x larger
    dev = cache["lq"].device
    idx, y0, x0 = (
        torch.from_numpy(v).to(dev)
        for v in (
            rng.integers(0, n, size=tc.batch),
            *rng.integers(0, r - c + 1, size=(2, tc.batch)),
        )
    )
    masks = torch.from_numpy(rng.random((3, tc.batch)) < 0.5).to(dev)
    lq = _dihedral(_crops(cache["lq"], idx, y0, x0, c), *masks).float() / 255
    clean = _dihedral(_crops(cache["clean"], idx, y0 * s, x0 * s, c * s), *masks).float() / 255
    z = None if codes is None else codes[idx].float()
    return lq, clean, z, None if noise is None else noise[idx]


# ------------------------------------------------------------------------------------------
# the loop


def _fadex(name: str) -> tuple[torch.nn.Module | None, str | None, int]:
    """(frozen FaDeX or None, its zoo sha256, Z channels)."""
    from face2scene_cli.archs.fadex import create_fadex
    from face2scene_cli.restorers.loading import load_fadex
    from face2scene_cli.zoo import models_dir, require_model

    folder = models_dir() / name
    if not (folder / "metadata.json").is_file():
        return None, None, int(create_fadex(name).z_channels)
    info = require_model(name)
    fadex = load_fadex(name).requires_grad_(False)
    return fadex, info.sha256, int(fadex.z_channels)


def validation_score(table: dict[str, Any]) -> float:
    """The score a run exports on: the mean PSNR of :func:`evaluate_items`' items (its
    ``means``), each counted up to :data:`SCORE_CEILING_DB`."""
    return float(np.mean([min(v["psnr"], SCORE_CEILING_DB) for v in table["means"].values()]))


def train_scene(config: SceneTrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train MapNet + the scene network as configured (see the module docstring).

    Args:
        config: the training configuration.
        resume: continue from ``<run_dir>/checkpoint`` (weights, EMA, optimizer, step, wall
            time, RNG states).

    Returns:
        The ``result.json`` dict (steps, wall time, best validation, export).
    """
    t0 = time.monotonic()
    tc = config.train
    torch.set_num_threads(tc.threads)
    stop_at = _deadline(tc, t0)
    run = Path(config.logging.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict()))))
    splits = load_splits(Path(config.data.splits))
    manifest = {
        s: [
            {"name": p.name, "source": p.source, "sha256": p.sha256 or file_sha256(p.path)}
            for p in ps
        ]
        for s, ps in splits.items()
    }
    (run / "data_manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    blind_fr = BlindFaceRestorer()

    # 1. data (cached across runs with the same data section)
    cache_dir = Path(config.data.cache_from) if config.data.cache_from else run / "cache"
    key_fields = {k: v for k, v in dataclasses.asdict(config.data).items() if k != "cache_from"}
    key = json.dumps(key_fields, sort_keys=True)
    if config.data.cache_from or (
        (cache_dir / "key.json").is_file() and (cache_dir / "key.json").read_text() == key
    ):
        cache = load_cache(cache_dir)
    else:
        cache = build_cache(config.data, splits["train"], blind_fr)
        save_cache(cache_dir, cache)
        (cache_dir / "key.json").write_text(key)
    check_cache_photos(cache, [p.name for p in splits["train"]], cache_dir)
    device = torch.device(tc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but CUDA is not available")
    fadex, fadex_sha, z_ch = _fadex(config.network.fadex)
    if fadex is not None:  # the codes of a large cache are computed where training runs
        torch.nn.Module.to(fadex, device)
    # the scene model depends on Z only: the encoder's hash says which FaDeX heads fit it too
    trained_with = (
        {"fadex": fadex_sha, "fadex_encoder": fadex.encoder_sha256()} if fadex is not None else {}
    )
    codes = None
    if tc.condition == "code":
        if fadex is None:
            raise ConfigError(f"train.condition=code needs FaDeX weights ({config.network.fadex})")
        code_file = cache_dir / f"codes-{trained_with['fadex_encoder'][:16]}.safetensors"
        if code_file.is_file():
            codes = load_file(str(code_file))["z"]
        else:
            codes = cache_codes(fadex, cache["face_lq"], cache["face_hq"], device=device)
            save_file({"z": codes.contiguous()}, str(code_file))
    # what the steps draw from lives where they run (a GPU cuts and turns its own crops)
    samples = {k: cache[k].to(device) for k in ("lq", "clean")}
    codes = None if codes is None else codes.to(device)
    scale = config.data.scale
    val_items = (
        build_val_items(splits["val"], config.val, blind_fr, scale) if config.val.enabled else []
    )
    if fadex is not None:
        with torch.inference_mode():
            for it in val_items:
                it.z = fadex.encode_pair(it.face_lq.to(device), it.face_hq.to(device))

    # 2. networks, optimizer, EMA
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    arch = {**({"upscale": scale} if scale > 1 else {}), **config.network.overrides}
    net = create("scene_net", config.network.variant, **arch)
    ctx_dim = int(net.cond.token_dim)
    mapnet = MapNet(
        **{
            "in_channels": z_ch,
            "dim": 128,
            "heads": 4,
            "depth": 1,
            "cross_attention_dim": ctx_dim,
            **config.network.mapnet,
        }
    )
    noise = None
    if mapnet.noise_embed is not None:
        curves = [estimate_noise_curve(x) for x in cache["lq"]]
        noise = noise_features(curves, mapnet.config.noise_levels).to(device)
    model = scene_modules(net, mapnet)
    ema = scene_modules(
        create("scene_net", config.network.variant, **arch),
        MapNet.from_config(mapnet.config),
    )
    ema.load_state_dict(model.state_dict())
    torch.nn.Module.to(model, device)
    torch.nn.Module.to(ema, device)
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=0.0
    )
    critic = opt_critic = None
    if tc.w_gan:
        critic = UNetDiscriminator(tc.critic_channels).to(device)
        opt_critic = torch.optim.Adam(critic.parameters(), lr=tc.critic_lr, betas=(0.9, 0.99))
    step, wall_before, best, phases = 0, 0.0, -math.inf, []
    ckpt, ckpt_critic = run / "checkpoint", run / "checkpoint-critic"
    if resume:
        if critic is not None and ckpt_critic.is_dir():
            load_checkpoint(ckpt_critic, critic, opt_critic)
        meta = load_checkpoint(ckpt, model, opt)
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        step, wall_before, best = int(meta["step"]), float(meta["wall_s"]), float(meta["best"])
        phases = list(meta.get("phases", []))
        rng = np.random.default_rng([tc.seed, step])
    elif tc.init_from:
        src = Path(tc.init_from)
        if (src / "scene.json").is_file():  # a model folder (e.g. the shipped weights)
            loaded = SceneRestorer.from_pretrained(src)
            state = scene_modules(loaded.net, loaded.mapnet).state_dict()
            done = json.loads((src / "training.json").read_text(encoding="utf-8"))["phases"]
            prev = {
                "step": done[-1]["steps"],
                "wall_s": done[-1]["wall_s"],
                "phases": done[:-1],
                "condition": done[-1]["condition"],
                "run": done[-1]["run"],  # the release's last phase keeps its own name
            }
        else:  # a run's checkpoint folder
            state = load_file(str(src / "ema.safetensors"))
            prev = json.loads((src / "state.json").read_text(encoding="utf-8"))
        load_warm(model, state, src)
        load_warm(ema, state, src)
        phases = [
            *prev.get("phases", []),
            {
                "run": prev.get("run", str(src)),
                "steps": prev["step"],
                "wall_s": prev["wall_s"],
                "condition": prev.get("condition"),
            },
        ]
        # export only what beats the previous export (the blind phase's, for a code phase),
        # when its score was taken on the same validation items
        same_val = prev.get("val_items") == config.val.items_key()
        if same_val and np.isfinite(prev.get("best", -math.inf)):
            best = float(prev["best"])
    prior_steps = sum(p["steps"] for p in phases)
    prior_wall = sum(p["wall_s"] for p in phases)
    # bf16 autocast: the weights, optimizer and EMA stay fp32; a no-op context under "none"
    autocast = functools.partial(
        torch.autocast, device.type, dtype=torch.bfloat16, enabled=tc.amp == "bf16"
    )

    def validate() -> dict[str, Any]:
        ema_r = SceneRestorer(
            ema["net"], RestoreSettings(color_fix=config.network.color_fix), ema["mapnet"], device
        )
        with torch.inference_mode():
            table = {"blind": evaluate_items(ema_r, val_items, "blind", scale=scale)}
            if fadex is not None and tc.condition == "code":
                table["code"] = evaluate_items(ema_r, val_items, "code", scale=scale)
        return table

    def checkpoint(step: int, wall: float, best: float) -> None:
        """Weights, EMA, optimizer and the run's state (what ``--resume`` reads back)."""
        state = {
            "step": step,
            "wall_s": wall,
            "best": best,
            "phases": phases,
            "condition": tc.condition,
            "fadex": fadex_sha,
            "val_items": config.val.items_key(),
        }
        if critic is not None:
            save_checkpoint(ckpt_critic, critic, opt_critic, {"step": step})
        save_checkpoint(ckpt, model, opt, state)
        save_file(
            {k: v.contiguous() for k, v in ema.state_dict().items()}, str(ckpt / "ema.safetensors")
        )

    input_table = evaluate_items(None, val_items, "input", scale=scale)  # type: ignore[arg-type]
    (run / "val_input.json").write_text(json.dumps(input_table["means"], indent=1))
    log = (run / "log.jsonl").open("a", encoding="utf-8")
    last_ckpt = last_val = time.monotonic()
    t_loop, steps_here, start_step = time.monotonic(), 0, step
    export_info: dict[str, Any] | None = None
    stop_file = run / "STOP"  # touch it to end the run cleanly (checkpoint, val, export)
    stop_file.unlink(missing_ok=True)
    while step < tc.steps and time.monotonic() < stop_at and not stop_file.exists():
        # 3. one step
        # the run is bounded by steps and by wall time: decay along whichever ends first
        progress = max(
            steps_here / max(1, tc.steps - start_step),
            (time.monotonic() - t0) / max(1e-6, stop_at - t0),
        )
        lr = _lr(tc, step, progress)
        for g in opt.param_groups:
            g["lr"] = lr
        lq, clean, z, noise_b = _batch(samples, codes, noise, tc, rng)
        with autocast():
            if z is not None:
                tokens = mapnet(z).tokens
                keep = torch.from_numpy(rng.random(tc.batch) >= tc.cond_dropout).to(device)
                tokens = torch.where(keep.view(-1, 1, 1), tokens, mapnet.null_tokens(tc.batch))
            else:
                tokens = mapnet.null_tokens(tc.batch)
            if noise_b is not None:
                keep = torch.from_numpy(rng.random(tc.batch) >= tc.noise_dropout).to(device)
                shifted = mapnet.with_noise(tokens, noise_b)
                tokens = torch.where(keep.view(-1, 1, 1), shifted, tokens)
            out = net(lq, tokens).float()
        loss, parts = restoration_loss(out, clean, tc.w_ssim, tc.w_grad, tc.w_fft)
        if critic is not None:
            with autocast():
                g_adv, d_loss = critic_losses(critic, out, clean)
            loss = loss + tc.w_gan * g_adv
            parts |= {"gan": g_adv.detach(), "critic": d_loss.detach()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        if critic is not None:
            opt_critic.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_critic.step()
        step += 1
        steps_here += 1
        decay = min(tc.ema, (1 + steps_here) / (10 + steps_here))
        with torch.no_grad():  # one fused update instead of a kernel per tensor
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        wall = wall_before + time.monotonic() - t0
        if step % config.logging.log_every == 0 or steps_here == 1:
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": loss.item(),
                        **{k: v.item() for k, v in parts.items()},
                        "lr": lr,
                        "s_per_step": (time.monotonic() - t_loop) / steps_here,
                        "wall_s": wall,
                    }
                )
                + "\n"
            )
            log.flush()
        ending = step >= tc.steps or time.monotonic() >= stop_at or stop_file.exists()
        # 4. validation + export when improved
        if time.monotonic() - last_val > config.val.every_s or ending:
            table = validate() if val_items else {}
            score = (
                validation_score(table["code" if "code" in table else "blind"]) if table else -1.0
            )
            row = {
                "step": step,
                "wall_s": wall,
                "score": score,
                **{m: t["means"] for m, t in table.items()},
            }
            (run / "val.jsonl").open("a").write(json.dumps(row) + "\n")
            if (score > best or not val_items) and config.logging.export_to:
                best = max(best, score)
                export_info = {
                    "steps": prior_steps + step,
                    "wall_s": prior_wall + wall,
                    "phases": [
                        *phases,
                        {"run": str(run), "steps": step, "wall_s": wall, "condition": tc.condition},
                    ],
                    "hardware": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else f"CPU, {tc.threads} torch threads (2 cores shared with other jobs)",
                    "val": row,
                    "val_input": input_table["means"],
                    "config": config.to_dict(),
                    "trained_with": trained_with,
                    "data_manifest": manifest,
                }
                export_model(
                    Path(config.logging.export_to),
                    ema["net"],
                    ema["mapnet"],
                    config,
                    export_info,
                    half=config.logging.export_half,
                )
            last_val = time.monotonic()
        if time.monotonic() - last_ckpt > config.logging.checkpoint_every_s or ending:
            checkpoint(step, wall, best)
            last_ckpt = time.monotonic()
    log.close()
    wall = wall_before + time.monotonic() - t0
    checkpoint(step, wall, best)
    result = {
        "steps": step,
        "wall_s": wall,
        "best": best,
        "exported": export_info is not None,
        "total_steps": prior_steps + step,
        "total_wall_s": prior_wall + wall,
    }
    (run / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result
