"""A checkpoint into an engine, without Lightning or a Trainer:

from pyramid_dm.engine import load_engine
engine = load_engine("runs/quickstart/checkpoints/last.ckpt")      # the EMA weights, on the CPU
images = engine.sample(16, labels=engine.sample_labels(0, 16))
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import DIFFUSION_FAMILIES, family_of, migrate, read_checkpoint, weights
from ..errors import UserError
from .engine import DiffusionEngine
from .families import build_engine

# what the engine's state dict holds; a checkpoint stores it as it is, plus the EMA network under ``ema.module.``
ENGINE_KEYS = ("first_stage.", "net.", "latent_scale")


def engine_from_checkpoint(ckpt: dict, path: str | Path, ema: bool = True) -> DiffusionEngine:
    """The engine a read diffusion checkpoint describes, with its EMA (or raw) network weights; migrated here too
    (:func:`~pyramid_dm.checkpoints.migrate` is idempotent), so a dict from a plain ``torch.load`` works."""
    migrate(ckpt)
    h = dict(ckpt["hyper_parameters"])
    try:
        engine = build_engine(family_of(ckpt), h, ckpt["pyramid_dm"].get("first_stage"))
    except UserError as exc:
        saved = h.get("autoencoder_ckpt")
        if not saved or Path(saved).is_file():
            raise
        raise UserError(  # a checkpoint from before first stages were recorded in it: it needs the autoencoder file
            f"{path}: this checkpoint reads its autoencoder from model.autoencoder_ckpt = {saved!r} (the value saved "
            f"in its hyperparameters), which does not exist as seen from {Path.cwd()}; run from the directory it was "
            "trained in, or copy the autoencoder checkpoint there"
        ) from exc
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(ENGINE_KEYS)}
    if not ema and ckpt.get("exported"):
        raise UserError(f"{path} is an export: it holds the EMA weights only (drop --no_ema)")
    if ema:
        state = {k: v for k, v in state.items() if not k.startswith("net.")}
        state.update({f"net.{k}": v for k, v in weights(ckpt, "ema.module.").items()})
    try:
        engine.load_state_dict(state)
    except RuntimeError as exc:
        what = f"the {engine.family} model its hyperparameters describe"
        raise UserError(f"{path}: weights do not fit {what} ({exc})") from exc
    return engine


def load_engine(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> DiffusionEngine:
    """The diffusion engine of the checkpoint at ``path`` (pixel, latent or pyramid), in eval mode on ``device``,
    with its EMA weights (``ema=False``: the raw ones)."""
    ckpt = read_checkpoint(path, "checkpoint", DIFFUSION_FAMILIES, "a diffusion model")
    return engine_from_checkpoint(ckpt, path, ema).to(device).eval()


def ema_net_from_checkpoint(path: str | Path, map_location="cpu") -> nn.Module:
    """The EMA network of a checkpoint, bare (no Lightning needed to use it)."""
    return load_engine(path, ema=True, device=map_location).net


def _family_of_class(class_path: str) -> str | None:
    """The family of a config's model class (imported: configs are as trusted as code)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UserError(f"cannot import {class_path!r} ({exc})") from exc
    return getattr(cls, "family", None)


def build_model(
    ckpt: dict,
    ckpt_path: str,
    config: dict | None,
    device: torch.device,
    ema: bool = True,
    command: str = "evaluate",
    config_named: bool = True,
):
    """The engine of a read checkpoint (its EMA weights, or the raw ones), on ``device``; its family must be a
    diffusion family and match the config's model (a latent config cannot evaluate a pixel checkpoint). A config the
    user did not name (``config_named`` False: the ``config.yaml`` found beside the checkpoint) may only name a
    ``pyramid_dm`` class: its module is never imported because a file sits next to a checkpoint."""
    migrate(ckpt)
    family = family_of(ckpt)
    if family not in DIFFUSION_FAMILIES:
        found = f"{family} model ({ckpt['pyramid_dm'].get('class_path')})" if family else "no model pyramid_dm knows"
        raise UserError(
            f"{ckpt_path} holds {'an' if found[0] in 'aeiou' else 'a'} {found}, not a diffusion model; `{command}` "
            f"needs the checkpoint of a pixel, latent or pyramid diffusion run"
        )
    want_path = ((config or {}).get("model") or {}).get("class_path")
    if want_path and not config_named and not want_path.startswith("pyramid_dm."):
        raise UserError(
            f"the config.yaml beside {ckpt_path} names the model class {want_path!r}, outside pyramid_dm; it was not "
            "imported: pass that config with --config to use it"
        )
    if want_path:
        want_family = _family_of_class(want_path)
        if want_family != family:
            raise UserError(
                f"{ckpt_path} is a {family} diffusion checkpoint ({ckpt['pyramid_dm'].get('class_path')}) but the "
                f"config's model is {want_path} ({want_family}); pass the config the checkpoint was trained with"
            )
    return engine_from_checkpoint(ckpt, ckpt_path, ema).to(device).eval()


def load_checkpoint(path: str) -> dict:
    return read_checkpoint(path, "--ckpt_path")


# what a model initialised from another checkpoint must share with it: the network, what it is trained to predict,
# and the data's shape (a network's dropout may differ: consistency tuning adds it)
INIT_KEYS = (
    "image_size", "channels", "num_classes", "class_conditional", "network", "unet", "prediction", "sigma_data",
    "schedule", "num_timesteps", "zero_terminal_snr", "schedule_options", "shift_reference_resolution",
    "layout", "first_stage", "resolutions", "stage_bounds", "shared_body", "spade",
)  # fmt: skip


def init_engine_from(
    engine: DiffusionEngine, options: dict, path: str | Path, data: dict | None, new_keys: tuple[str, ...] = ()
) -> int:
    """Load the checkpoint at ``path`` (its EMA network, first stage and latent scale) into ``engine``, built from
    the hyperparameters ``options``: ``model.init_from``, e.g. consistency tuning from a trained model. Refused,
    naming the key: another family, another network or parameterization (:data:`INIT_KEYS`, compared key by key with
    the checkpoint's, a key of another family as None), other levels, or other ``data`` (the data module's
    hyperparameters: the shards' name and the resize). Network weights whose names contain ``new_keys`` (inputs the
    objective adds) may be missing from the checkpoint. Returns the checkpoint's global step."""
    what = "model.init_from"
    ckpt = read_checkpoint(path, what, (engine.family,), f"a {engine.family} model", mismatch_hint=(
        f": initialise a {engine.family} model from a {engine.family} checkpoint of the same data and network"
    ))  # fmt: skip
    theirs = ckpt["hyper_parameters"]
    for key in INIT_KEYS:
        mine, their = options.get(key), theirs.get(key)
        if key == "unet":
            mine, their = ({k: v for k, v in (d or {}).items() if k != "dropout"} for d in (mine, their))
        if mine != their:
            raise UserError(
                f"{what} {str(path)!r} was trained with {key} = {their!r}, this model has {key} = {mine!r}: tuning "
                "needs the teacher's network, parameterization, schedule and data shape"
            )
    levels = ckpt["pyramid_dm"].get("level_shapes")
    if levels is not None and [tuple(s) for s in levels] != engine.level_shapes:
        raise UserError(f"{what} {str(path)!r} has levels {levels}, this model {engine.level_shapes}")
    their_data = ckpt.get("datamodule_hyper_parameters") or {}
    for key in ("shards", "resize"):
        mine, their = (data or {}).get(key), their_data.get(key)
        if key == "shards":  # the same shards moved elsewhere are the same data
            mine, their = (None if v is None else Path(str(v).rstrip("/")).name for v in (mine, their))
        if data is not None and their is not None and mine != their:
            raise UserError(
                f"{what} {str(path)!r} was trained on data.{key} = {their!r}, this run reads {mine!r}: tune on the "
                "data the teacher learnt"
            )
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(ENGINE_KEYS) and not k.startswith("net.")}
    state.update({f"net.{k}": v for k, v in weights(ckpt, "ema.module.").items()})
    try:
        result = engine.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{what} {str(path)!r}: weights do not fit this model ({exc})") from exc
    missing = [k for k in result.missing_keys if not any(p in k for p in new_keys)]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{what} {str(path)!r}: weights do not fit this model (missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]})"
        )
    return int(ckpt.get("global_step", 0))
