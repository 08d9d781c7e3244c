"""diffusers' folder layout for an export: which of diffusers' own schedulers sample a model exactly, and the JSON
files that ``diffusers.DiffusionPipeline.from_pretrained`` reads. Plain JSON: writing it needs no diffusers; loading it
needs :mod:`pyramid_dm.pipelines` (which imports diffusers).

The mapping (every formula in :mod:`pyramid_dm.diffusion`): diffusers' discrete schedulers keep a table
alpha_bar_k, k = 0..T-1; our step k sits at t = (k + 1) / T (:mod:`~pyramid_dm.diffusion.schedules.base`), so the
table ``trained_betas`` of any variance-preserving schedule, discrete or continuous (then T = 1000), is exact at every
integer timestep. The network sees x_t and t itself, so an eps / x0 / v network's output *is* diffusers'
``epsilon`` / ``sample`` / ``v_prediction``; an EDM-preconditioned one gives D(x; sigma) as ``sample``. Clipping x0_hat
to [-1, 1] (pixel space) is diffusers' thresholding with ``sample_max_value = 1`` (the quantile is clamped to [1, 1]),
which DDIM and DPM-Solver carry and Euler does not. A zero-terminal-SNR table sets ``rescale_betas_zero_snr`` (the
identity on a table already ending at 0; it makes diffusers cap alpha_bar at 2^-24, as our grids do). Flow models
(``straight_path``) map onto ``FlowMatchEulerDiscreteScheduler``: its sigma is the path's time t, its ``shift`` is the
schedule's s (sigma~' = s sigma~) and the network's velocity is its ``flow_prediction``.

Not mapped (the pipeline then samples with pyramid_dm's own samplers and has no scheduler component): pyramids and
Pyramidal Flow (each level or stage has its own schedule and conditions on the coarser ones, which diffusers' one
scheduler loop does not express) and few-step objectives (consistency and MeanFlow models take their own samplers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..diffusion.parameterization import PREDICTIONS, Parameterization
from ..diffusion.schedules.base import NoiseSchedule
from .engine import DiffusionEngine

DIFFUSERS_VERSION = "0.42.1"  # the version the layout was written and tested against
LIBRARY = "pyramid_dm.pipelines"  # the module holding the component and pipeline classes model_index.json names
CONTINUOUS_T = 1000  # diffusers' table length for a continuous-time schedule
# our samplers -> the diffusers scheduler a model's exported default uses (anything else: DDIM)
SCHEDULER_OF = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler"}
PIPELINE_FILE = '''"""pyramid_dm's pipeline, for ``DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)``.
Needs pyramid_dm installed; ``pyramid_dm.pipelines.PyramidDMPipeline.from_pretrained`` runs no file from here."""
from pyramid_dm.pipelines import PyramidDMPipeline  # noqa: F401
'''


def parameterization(engine: DiffusionEngine) -> Parameterization:
    return PREDICTIONS.lookup(engine.prediction)


def unmapped_reason(engine: DiffusionEngine) -> str | None:
    """Why diffusers' schedulers cannot sample ``engine`` exactly (None: they can)."""
    if engine.num_levels > 1:
        return f"a {engine.num_levels}-level model: each level has its own schedule and conditioning"
    if engine.objective.model_kind != "diffusion":
        return f"a {engine.objective.name} model: it samples with its own {engine.objective.model_kind} sampler"
    if parameterization(engine).velocity and not engine.schedules[0].straight_path:
        return "a flow network on a curved schedule"
    return None


def flow_shift(schedule: NoiseSchedule) -> float:
    """s of sigma~' = s sigma~ for a (shifted) straight-path schedule (sigma~ = 1 at t = 1/2 unshifted)."""
    return float(schedule.sigma(torch.tensor(0.5, dtype=torch.float64)))


def timestep_table(schedule: NoiseSchedule) -> tuple[int, list[float]]:
    """(T, betas): diffusers' table of a variance-preserving schedule, alpha_bar_k at t = (k + 1) / T."""
    T = schedule.num_steps or CONTINUOUS_T
    ab = schedule.alpha_bar(torch.arange(1, T + 1, dtype=torch.float64) / T)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return T, (1 - ab / prev).clamp(0, 1).tolist()


def scheduler_config(engine: DiffusionEngine) -> dict | None:
    """The exported scheduler's config (``_class_name`` included), or None where none maps exactly."""
    if unmapped_reason(engine):
        return None
    schedule = engine.schedules[0]
    head = {"_diffusers_version": DIFFUSERS_VERSION}
    if parameterization(engine).velocity:
        return {**head, "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": CONTINUOUS_T,
                "shift": flow_shift(schedule)}  # fmt: skip
    T, betas = timestep_table(schedule)
    sampler = engine.plan.resolve()[0][0]
    name = SCHEDULER_OF.get(sampler, "DDIMScheduler")
    clip = engine.first_stage.pixel_space
    config = {
        **head,
        "_class_name": name,
        "num_train_timesteps": T,
        "trained_betas": betas,
        "prediction_type": parameterization(engine).diffusers or "sample",  # else D as "sample" (EDM)
        "timestep_spacing": "trailing" if schedule.zero_terminal_snr else "leading",
        "rescale_betas_zero_snr": schedule.zero_terminal_snr,
    }
    # every scheduler's settings, so that each survives a swap (``from_config`` keeps the keys a class ignores):
    # DDIM's clip_sample defaults to True (a clamp of latents too) and Euler has no thresholding
    config.update(thresholding=clip, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
    config.update(clip_sample=False, set_alpha_to_one=True)
    config.update(solver_order=2, algorithm_type="dpmsolver++", lower_order_final=True, final_sigmas_type="zero")
    return config


def exact_schedulers(engine: DiffusionEngine) -> list[str]:
    """diffusers' schedulers that sample ``engine`` exactly from the exported config (``from_config``)."""
    if unmapped_reason(engine):
        return []
    if parameterization(engine).velocity:
        return ["FlowMatchEulerDiscreteScheduler"]
    found = ["DDIMScheduler", "DPMSolverMultistepScheduler"]
    return found + ([] if engine.first_stage.pixel_space else ["EulerDiscreteScheduler (integer timesteps)"])


def denoiser_config(ckpt: dict, engine: DiffusionEngine, scheduler: dict | None) -> dict:
    """``unet/config.json``: what :class:`pyramid_dm.pipelines.PyramidDMDenoiser` rebuilds the network from, with the
    timestep convention of ``scheduler`` (:func:`scheduler_config`)."""
    return {
        "_class_name": "PyramidDMDenoiser",
        "_diffusers_version": DIFFUSERS_VERSION,
        "family": ckpt["pyramid_dm"]["family"],
        "hyper_parameters": ckpt["hyper_parameters"],
        "first_stage_spec": ckpt["pyramid_dm"].get("first_stage"),
        "num_train_timesteps": scheduler["num_train_timesteps"] if scheduler else CONTINUOUS_T,
        "time_offset": 0 if parameterization(engine).velocity else 1,  # flow: the scheduler's sigma is t
    }


def write_diffusers_layout(ckpt: dict, engine: DiffusionEngine, out: Path, jsonable) -> list[Path]:
    """model_index.json, pipeline.py and each component's config; the weights are written by the caller."""
    scheduler = scheduler_config(engine)
    has_vae = any(k.startswith("first_stage.") for k in ckpt["state_dict"])
    index = {
        "_class_name": ["pipeline", "PyramidDMPipeline"],
        "_diffusers_version": DIFFUSERS_VERSION,
        "unet": [LIBRARY, "PyramidDMDenoiser"],
        "scheduler": ["diffusers", scheduler["_class_name"]] if scheduler else [None, None],
        "vae": [LIBRARY, "PyramidDMFirstStage"] if has_vae else [None, None],
    }
    files = {"model_index.json": index, "unet/config.json": denoiser_config(ckpt, engine, scheduler)}
    if scheduler:
        files["scheduler/scheduler_config.json"] = scheduler
    if has_vae:
        scale = [float(s) for s in engine.latent_scale]
        files["vae/config.json"] = {
            "_class_name": "PyramidDMFirstStage",
            "_diffusers_version": DIFFUSERS_VERSION,
            "family": ckpt["pyramid_dm"]["family"],
            "hyper_parameters": ckpt["hyper_parameters"],
            "first_stage_spec": ckpt["pyramid_dm"].get("first_stage"),
            "scaling_factor": scale if len(scale) > 1 else scale[0],
        }
    written = []
    for name, content in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(json.dumps(content, indent=2, default=jsonable) + "\n")
        written.append(out / name)
    (out / "pipeline.py").write_text(PIPELINE_FILE)
    return [*written, out / "pipeline.py"]
