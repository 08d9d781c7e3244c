"""A pyramid_dm export as a diffusers pipeline (needs ``pip install diffusers``; nothing else in pyramid_dm does):

    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
    pipe = DiffusionPipeline.from_pretrained("exports/quickstart", trust_remote_code=True)  # runs its pipeline.py
    # or, with no code from the folder run:  from pyramid_dm.pipelines import PyramidDMPipeline; PyramidDMPipeline...
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)      # swap as usual
    images = pipe(batch_size=4, num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images

Components: ``unet`` (:class:`PyramidDMDenoiser`: the EMA network, called as diffusers calls a UNet, and the latent
scale), ``scheduler`` (one of diffusers' own, mapped exactly: :mod:`pyramid_dm.engine.diffusers_layout`) and ``vae``
(:class:`PyramidDMFirstStage`: a latent or pyramid model's autoencoder). Models no diffusers scheduler maps exactly
(pyramids, Pyramidal Flow, consistency and MeanFlow models) have no scheduler: the pipeline samples them with
pyramid_dm's own plan (``engine.sample``), so they still load and run here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .engine.engine import DiffusionEngine
from .engine.families import build_engine
from .engine.wrappers import Guidance


def _engine(family: str, hyper_parameters: dict, first_stage: dict | None) -> DiffusionEngine:
    return build_engine(family, dict(hyper_parameters), first_stage).eval()


@dataclass
class DenoiserOutput(BaseOutput):
    sample: Tensor


class PyramidDMDenoiser(ModelMixin, ConfigMixin):
    """The network of a single-level model as diffusers calls a UNet: ``(sample, timestep, class_labels)`` -> the
    scheduler's ``prediction_type`` (x_t and the timestep k, at t = (k + time_offset) / num_train_timesteps). Keeps
    the engine it was built from (not as a submodule: its weights are this module's ``net`` and ``latent_scale``)."""

    @register_to_config
    def __init__(
        self,
        family: str,
        hyper_parameters: dict,
        first_stage_spec: dict | None = None,
        num_train_timesteps: int = 1000,
        time_offset: int = 1,
    ):
        super().__init__()
        engine = _engine(family, hyper_parameters, first_stage_spec)
        self.net = engine.net
        self.register_buffer("latent_scale", engine.latent_scale.clone())
        self.__dict__["engine"] = engine  # unregistered: the pipeline assembles it (:meth:`PyramidDMPipeline.engine`)

    def forward(self, sample: Tensor, timestep, class_labels: Tensor | None = None, return_dict: bool = True):
        engine, c = self.engine, self.config
        t = torch.as_tensor(timestep, dtype=torch.float64, device=sample.device) + c.time_offset
        t = (t / c.num_train_timesteps).reshape(-1).expand(sample.shape[0])
        den = engine.base_denoiser(-1, self.net)
        cond = {} if class_labels is None else engine.conditioning(class_labels)
        schedule = engine.schedules[0]
        sigma = schedule.sigma(t.cpu()).to(sample.device)
        kind = den.parameterization
        if kind.velocity:  # v from x_t at the path's time t (= the scheduler's sigma)
            out = den.network(sample, t / (1 - t).clamp(min=1e-300), **cond).to(sample.dtype)
            if den.clip_x0:  # the velocity toward the clipped x0_hat = x_t - t v, as our samplers step
                tt = t.to(sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))
                out = (sample - (sample - tt * out).clamp(-1, 1)) / tt
        elif kind.diffusers:  # eps / x0 / v: the network's output is diffusers' own prediction of that name
            out = den.network(sample, sigma, t=t, **cond)
        else:  # EDM preconditioning: D(x~; sigma) as "sample"
            x = sample.double() * (1 + sigma**2).sqrt().reshape(-1, *[1] * (sample.ndim - 1))
            out = den(x, sigma, **cond)
        out = out.to(sample.dtype)
        return DenoiserOutput(sample=out) if return_dict else (out,)


class PyramidDMFirstStage(ModelMixin, ConfigMixin):
    """A latent or pyramid model's first stage (its autoencoder): ``decode(levels)`` -> images in [-1, 1]."""

    @register_to_config
    def __init__(
        self,
        family: str,
        hyper_parameters: dict,
        first_stage_spec: dict | None = None,
        scaling_factor: float | list[float] = 1.0,
    ):
        super().__init__()
        self.first_stage = _engine(family, hyper_parameters, first_stage_spec).first_stage

    def decode(self, levels: list[Tensor]) -> Tensor:
        return self.first_stage.decode(levels)


class PyramidDMPipeline(DiffusionPipeline):
    """Sampling a pyramid_dm export in diffusers (see the module docstring)."""

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["scheduler", "vae"]

    def __init__(self, unet: PyramidDMDenoiser, scheduler=None, vae: PyramidDMFirstStage | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """model_index.json names this class through the folder's ``pipeline.py`` (what ``DiffusionPipeline`` needs,
        with ``trust_remote_code``); loaded through this class itself, no code from the folder runs."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = config["_class_name"][1]
        return out

    @property
    def engine(self) -> DiffusionEngine:
        """The pyramid_dm engine of the components (their weights, on the pipeline's device)."""
        engine = self.unet.engine
        engine.net = self.unet.net
        if self.vae is not None:
            engine.first_stage = self.vae.first_stage
        engine.latent_scale = self.unet.latent_scale
        return engine.to(self.unet.device)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        class_labels: Tensor | list[int] | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Images of ``batch_size`` samples: ``num_inference_steps`` scheduler steps (default: the model's own plan),
        from ``latents`` (default: drawn with ``generator``); ``class_labels`` (-1: the null class) and classifier-free
        ``guidance_scale`` for a class-conditional model. ``output_type``: "pil", "np" (in [0, 1]) or "pt" ([0, 1])."""
        engine = self.engine
        labels = None if class_labels is None else torch.as_tensor(class_labels, device=self.unet.device)
        Guidance(guidance_scale).begin(engine, batch_size, labels)  # a clear error where guidance cannot apply
        if self.scheduler is None:  # no exact diffusers scheduler: pyramid_dm's own samplers
            wrappers = [Guidance(guidance_scale)] if guidance_scale != 1.0 else []
            images = engine.sample(
                batch_size, steps=num_inference_steps, labels=labels, generator=generator, wrappers=wrappers
            )
        else:
            images = engine.decode(
                [
                    self._scheduler_loop(
                        engine, batch_size, num_inference_steps, generator, latents, labels, guidance_scale
                    )
                ]
            ).clamp(-1, 1)
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            images = self.numpy_to_pil(images) if output_type == "pil" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _scheduler_loop(self, engine, batch_size, steps, generator, latents, labels, guidance_scale) -> Tensor:
        shape = (batch_size, *engine.level_shapes[0])
        device, dtype = self.unet.device, self.unet.dtype
        x = (
            latents.to(device)
            if latents is not None
            else randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        )
        self.scheduler.set_timesteps(steps or engine.plan.resolve()[1][0], device=device)  # before init_noise_sigma
        x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        # DDIM's eps from the clipped x0_hat, as every pyramid_dm sampler (diffusers' DDIMPipeline has the same option)
        clipped = "use_clipped_model_output" in inspect.signature(self.scheduler.step).parameters
        step_options = {"use_clipped_model_output": True} if clipped else {}
        scaled = hasattr(self.scheduler, "scale_model_input")
        guided = guidance_scale != 1.0
        for k in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(x, k) if scaled else x  # FlowMatch* take x_t as it is
            if guided:
                out = self._guided(model_input, k, labels, guidance_scale)
            else:
                out = self.unet(model_input, k, labels).sample
            x = self.scheduler.step(out, k, x, **step_options).prev_sample
        return x

    def _guided(self, x: Tensor, k, labels: Tensor, scale: float) -> Tensor:
        """Classifier-free guidance on the prediction, as diffusers' pipelines guide: affine in D, so the same as
        pyramid_dm's guidance of D, except where x0_hat is clipped (pixel space), which diffusers' thresholding does
        after guiding and pyramid_dm's denoiser before (each branch)."""
        both = self.unet(torch.cat([x, x]), k, torch.cat([labels, torch.full_like(labels, -1)])).sample
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)
