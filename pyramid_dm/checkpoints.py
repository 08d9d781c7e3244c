"""The one home of reading pyramid_dm checkpoints: the file checks, the stamp, the family check and the migration of
checkpoints written by older versions. Every loader (``sample``, ``evaluate``, ``fit --ckpt_path``'s model, a latent
model's autoencoder, :func:`pyramid_dm.engine.load_engine`) goes through :func:`read_checkpoint`.

A checkpoint is Lightning's dict. pyramid_dm adds ``checkpoint["pyramid_dm"]``, the stamp: ``family`` (pixel,
latent, pyramid, autoencoder), ``class_path`` of the LightningModule and, for diffusion models, ``level_shapes`` and
``first_stage`` (what the first stage needs besides its weights, an autoencoder's hyperparameters, so that a latent
run samples without its autoencoder's file; absent in older checkpoints, which read that file as before).
The ``state_dict`` of a diffusion model holds the engine's weights under ``first_stage.*``, ``latent_scale``,
``net.*`` and the EMA network under ``ema.module.*`` (the layout since the first release).

Migrations (:func:`migrate`), applied on every read; each recognises an older checkpoint by what it lacks, so it is
idempotent and needs no version number:
- no ``latent_scale`` buffer (pixel models from before latent diffusion): all 1;
- no ``label_dropout`` hyperparameter (trained before label dropout): 0, the null class was never trained;
- no ``schedule_options`` hyperparameter (trained before the ``ve`` schedule): None, the schedule takes none;
- no ``logit_normal_mean``/``logit_normal_std``/``mode_scale`` (trained before flow matching): SD3's defaults,
  which those runs never use (their ``training_noise`` is ``schedule`` or ``lognormal``); a pyramid without
  ``stage_bounds`` (trained before the pyramid_flow layout): None, which its layout ignores;
- no ``step_aware`` (trained before step-aware supernets): None, a plain network (same weights and names).
- no ``network`` / ``objective`` (trained before networks and objectives were named parts): ``unet`` (the only
  network there was) and None (the objective the model's options imply, as before).
- no ``objective_options`` / ``init_from`` (trained before few-step objectives): None, the settings-free objectives
  those runs trained, from their own initialisation.
A new format change adds a step here and a fixture checkpoint of the old format in ``tests/fixtures/``.

**Exports** (``python -m pyramid_dm export``): a folder with no pickle in it, read wherever a checkpoint is
(:func:`read_checkpoint`), in diffusers' layout: ``unet/diffusion_pytorch_model.safetensors`` (the EMA network under
``net.*`` and the ``latent_scale``), ``vae/diffusion_pytorch_model.safetensors`` (the first stage's weights under
``first_stage.*``, when it has any) and ``pyramid_dm.json`` (the hyperparameters, the stamp, the step, the training
cost and the data module's hyperparameters), plus a model card (``README.md``), the run's ``config.yaml`` and
diffusers' JSON files (:mod:`pyramid_dm.engine.diffusers_layout`). Format 1 (the first exports) kept all weights in
one ``model.safetensors``, with the network under ``ema.module.*``; it is still read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError

DIFFUSION_FAMILIES = ("pixel", "latent", "pyramid")


def stamp(family: str, cls: type, **extra) -> dict:
    """``checkpoint["pyramid_dm"]``: the family and class that wrote it (what loaders check), plus ``extra``."""
    return {"family": family, "class_path": f"{cls.__module__}.{cls.__name__}", **extra}


def read_torch_file(path: str | Path | None, what: str = "checkpoint", hint: str = ""):
    """Any file written by ``torch.save`` (a checkpoint, classifier weights), loaded with ``weights_only=True`` on the
    CPU, or one clear error naming ``what`` and the file."""
    p = Path(path) if path else None
    if p is None:
        raise UserError(f"{what} is not set{hint}")
    if p.is_dir():
        found = sorted(p.glob("*.ckpt")) or sorted(p.glob("checkpoints/*.ckpt"))
        last = [f for f in found if f.name == "last.ckpt"]
        example = f"e.g. {(last or found)[-1]}" if found else "it holds none, nor does a checkpoints/ folder in it"
        raise UserError(f"{what} {str(p)!r} is a directory; name a .ckpt file ({example})")
    if not p.is_file():
        raise UserError(f"{what} {str(p)!r} does not exist{hint}")
    if p.stat().st_size == 0:
        raise UserError(f"{what} {str(p)!r} is empty (0 bytes): not a checkpoint, or a copy that never finished")
    try:
        try:  # memory-mapped: checking a large checkpoint does not read all of it into memory
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {str(p)!r} is not a readable PyTorch checkpoint ({why})") from exc


EXPORT_CONFIG, EXPORT_WEIGHTS = "pyramid_dm.json", "model.safetensors"  # model.safetensors: format 1 only
COMPONENT_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' name, in unet/ and vae/
EXPORT_KEYS = ("hyper_parameters", "pyramid_dm", "global_step", "training_cost", "datamodule_hyper_parameters")
EXPORT_FORMAT = 2


def is_export(path: str | Path | None) -> bool:
    """Whether ``path`` is an export folder (holds ``pyramid_dm.json``)."""
    return path is not None and Path(path).is_dir() and (Path(path) / EXPORT_CONFIG).is_file()


def read_export(path: str | Path, what: str = "checkpoint") -> dict:
    """An export folder as the checkpoint dict it was written from (its EMA weights only)."""
    p = Path(path)
    try:
        record = json.loads((p / EXPORT_CONFIG).read_text())
        if record.get("format") == 1:
            state = load_file(p / EXPORT_WEIGHTS)
        else:
            net = load_file(p / "unet" / COMPONENT_WEIGHTS)
            vae = load_file(p / "vae" / COMPONENT_WEIGHTS) if (p / "vae" / COMPONENT_WEIGHTS).is_file() else {}
            state = {("ema.module." + k[4:] if k.startswith("net.") else k): v for k, v in net.items()} | vae
    except (OSError, ValueError) as exc:
        raise UserError(f"{what} {str(p)!r} is not a readable pyramid_dm export ({exc})") from exc
    if record.get("format") not in (1, EXPORT_FORMAT):
        raise UserError(
            f"{what} {str(p)!r} is an export of format {record.get('format')!r}; this version reads 1 and "
            f"{EXPORT_FORMAT}"
        )
    return {**{k: record.get(k) for k in EXPORT_KEYS}, "state_dict": state, "exported": True}


def write_export(ckpt: dict, out: str | Path, card: str) -> list[Path]:
    """Write the weights, ``pyramid_dm.json`` and the card of a (read, migrated) diffusion checkpoint to ``out``
    (diffusers' JSON files are the engine's: :func:`pyramid_dm.engine.diffusers_layout.write_diffusers_layout`);
    returns the files written."""
    out = Path(out)
    meta = {"format": "pyramid_dm", "version": str(EXPORT_FORMAT)}
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt["state_dict"].items()}
    parts = {
        "unet": {"net." + k[11:]: v for k, v in state.items() if k.startswith("ema.module.")}
        | {k: v for k, v in state.items() if k == "latent_scale"},
        "vae": {k: v for k, v in state.items() if k.startswith("first_stage.")},
    }
    written = []
    for name, part in parts.items():
        if part:
            (out / name).mkdir(parents=True, exist_ok=True)
            save_file(part, out / name / COMPONENT_WEIGHTS, metadata=meta)
            written.append(out / name / COMPONENT_WEIGHTS)
    record = {"format": EXPORT_FORMAT, **{k: ckpt.get(k) for k in EXPORT_KEYS}}
    (out / EXPORT_CONFIG).write_text(json.dumps(record, indent=2, default=jsonable) + "\n")
    (out / "README.md").write_text(card)
    return [*written, out / EXPORT_CONFIG, out / "README.md"]


def jsonable(value):
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r} cannot be exported as JSON")


def read_checkpoint(
    path: str | Path,
    what: str = "checkpoint",
    families: tuple[str, ...] | None = None,
    kind: str = "a pyramid_dm",
    hint: str = "",
    mismatch_hint: str = "",
) -> dict:
    """The checkpoint at ``path``, loaded with ``weights_only=True`` on the CPU, migrated to the current format.
    ``what`` names it in errors (e.g. ``model.autoencoder_ckpt``); ``families`` (None: any pyramid_dm checkpoint)
    are the families accepted (``kind`` names them, e.g. "an autoencoder"), checked from the stamp before any class is
    imported; ``hint`` ends the message of a missing file, ``mismatch_hint`` that of a checkpoint of another family."""
    ckpt = read_export(path, what) if is_export(path) else read_torch_file(path, what, hint)
    p = Path(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"{what} {str(p)!r} is not a pyramid_dm training checkpoint (no state_dict / hyper_parameters)")
    ckpt = migrate(ckpt)
    if families is not None:
        family = family_of(ckpt)
        if family not in families:
            found = ckpt["pyramid_dm"].get("class_path")
            article = "an" if (family or "x")[0] in "aeiou" else "a"
            holds = f"{article} {family} model ({found})" if family and found else "no model pyramid_dm knows"
            raise UserError(f"{what} {str(p)!r} holds {holds}, not {kind}{mismatch_hint}")
    return ckpt


def family_of(ckpt: dict) -> str | None:
    """The family a checkpoint's stamp names (older checkpoints: from the class path their hyperparameters record)."""
    st = ckpt.get("pyramid_dm") or {}
    if st.get("family"):
        return st["family"]
    class_path = ckpt.get("hyper_parameters", {}).get("_class_path", "")
    return {"PixelDiffusion": "pixel", "LatentDiffusion": "latent", "PyramidDiffusion": "pyramid"}.get(
        class_path.rpartition(".")[2]
    )


def migrate(ckpt: dict, family: str | None = None) -> dict:
    """``ckpt`` brought to the current format in place (see the module docstring); returns it. ``family`` is what the
    caller knows the checkpoint to be when its stamp does not say."""
    st = ckpt.setdefault("pyramid_dm", {})
    if (family_of(ckpt) or family) in DIFFUSION_FAMILIES:
        hp, state = ckpt["hyper_parameters"], ckpt["state_dict"]
        if "label_dropout" not in hp:
            hp["label_dropout"] = 0.0
        hp.setdefault("schedule_options", None)
        for key, value in (("logit_normal_mean", 0.0), ("logit_normal_std", 1.0), ("mode_scale", 1.29)):
            hp.setdefault(key, value)  # flow matching's training densities (issue 17); unused by older runs
        hp.setdefault("step_aware", None)  # a slimmable supernet (issue 16); older networks are plain
        hp.setdefault("network", "unet")  # networks as registered parts (issue 25): every older model is a UNet
        hp.setdefault("objective", None)  # objectives as parts (issue 25): None is the one older runs trained
        hp.setdefault("objective_options", None)  # an objective's settings (issue 30); older objectives have none
        hp.setdefault("init_from", None)  # a checkpoint the weights started from (issue 30); older runs: none
        if (family_of(ckpt) or family) == "pyramid":
            hp.setdefault("stage_bounds", None)  # pyramid_flow's stage windows; older layouts have none
        if "latent_scale" not in state:
            state["latent_scale"] = torch.ones(len(st.get("level_shapes") or [None]))
    return ckpt


def weights(ckpt: dict, prefix: str) -> dict:
    """The entries of the checkpoint's state dict under ``prefix`` (e.g. ``ema.module.``), prefix removed."""
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file, or of an export's weights (what a step policy records of the model it was
    searched for)."""
    import hashlib

    path = Path(path) / EXPORT_WEIGHTS if is_export(path) else path
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
