"""The diffusion LightningModules orchestrate (steps, EMA, logging, optimizer); the Lightning-free engine, built by
the family's recipe (:mod:`pyramid_dm.engine.families`) from the typed arguments whose defaults are written here once,
does the rest. A checkpoint's state dict is the engine's plus the EMA network (``ema.module.*``)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric

from .. import compat
from ..checkpoints import migrate, stamp
from ..engine import BoundEngine, build_engine
from ..engine.load import ENGINE_KEYS, init_engine_from
from ..errors import UserError
from .common import StepAwareArgs, UNetArgs, check_data_shape, data_batch_size
from .ema import make_ema
from .optim import ScaledOptimizer
from .speed import SpeedArgs, apply_speed, check_speed

ENGINE_PREFIX = "engine."


class DiffusionModel(ScaledOptimizer, L.LightningModule):
    """Denoising diffusion on the first stage's representation of the images: one level (pixel, latent) or several
    generated coarse to fine (pyramid), by the same engine. Subclasses name their ``family`` (its recipe) and add
    the family's own options as typed arguments.

    Args:
        image_size, channels, num_classes: linked from the data module's manifest (num_classes 0 = unlabelled data).
        class_conditional: learn a class embedding when the data has labels (label -1 means "no label").
        label_dropout: probability of training a sample without its label (the null class), so that the same network
            is also the unconditional model classifier-free guidance needs (Ho & Salimans 2022; 0.1-0.2 typical).
        network: the network, by its name in :data:`~pyramid_dm.nets.NETWORKS` (``unet``, ``dit``, ``hdit``, or
            your own registered one); ``unet`` holds its options (:class:`UNetArgs` for ``unet``, a registered
            network's own otherwise).
        schedule: ``linear``, ``cosine``, ``sigmoid``, ``edm``, ``ve`` (NCSN's geometric noise levels, the VE SDE;
            ``schedule_options: {sigma_min, sigma_max}``, default 0.01 and 50) or ``flow`` (the straight path of flow
            matching, continuous: ``num_timesteps: 0``; ``schedule_options: {shift: s}``, s a number or ``flux`` for
            FLUX's resolution-dependent shift); ``num_timesteps`` T for a discrete
            schedule (for ``ve``: NCSN's L levels), 0 for continuous time. ``zero_terminal_snr`` rescales it so its last
            step is pure noise (needs ``v`` or ``x0``).
            ``shift_reference_resolution`` d_ref shifts its log-SNR by 2 log(d_ref / d) (simple diffusion), d the
            resolution diffused at (the image, the latent, or each pyramid level's own).
        prediction: the parameterization: the network predicts ``eps``, ``x0`` or ``v``, is ``edm``-preconditioned
            (with ``sigma_data``), or predicts the ``flow`` velocity eps - x0 on the straight path (flow matching,
            with ``schedule: flow``). Any of them samples with every sampler.
        training_noise: ``schedule`` (t uniform on the schedule), ``lognormal`` (EDM: ln sigma ~ N(mean, std^2)),
            ``logit_normal`` (SD3: t = sigmoid(logit_normal_mean + logit_normal_std z)) or ``mode`` (SD3's mode
            density with ``mode_scale``).
        loss_weighting: ``uniform`` (the network's own MSE), ``min_snr`` or ``soft_min_snr`` (with ``min_snr_gamma``),
            or ``edm``.
        lr, weight_decay, betas, warmup_steps: the default optimizer, AdamW with a linear learning-rate warm-up;
            ``fused_optimizer``: its fused kernel (one kernel for all parameters' updates), None: on when the
            weights are on a GPU.
        optimizer, lr_scheduler: replace it from YAML (LightningCLI callables), e.g. ``optimizer: {class_path:
            torch.optim.SGD, init_args: {lr: 0.01}}``; the scheduler is stepped every optimizer step.
        lr_scaling: ``none`` (default: the learning rate is used as given, whatever the number of GPUs), ``linear``
            or ``sqrt``: scale it by (effective batch / ``lr_reference_batch``) or its square root. The effective batch
            (batch x ranks x accumulation) and the learning rate used are logged as ``effective_batch_size`` and
            ``effective_lr``.
        ema_decay: EMA of the network weights, used for validation and sampling.
        sampler, sample_steps, discretization: the default sampler for ``sample()`` (None: the objective's,
            ``dpmpp_2m`` 20 steps for a diffusion model, ``consistency`` 2 after ``ect``, ``meanflow`` 1;
            ``discretization`` None: the sampler's own default grid).
        step_aware: train the network as a slimmable supernet (:class:`StepAwareArgs`), so that ``sample``,
            ``evaluate`` and ``search-steps`` can run a width policy over the noise levels (DDSM). Per-width train
            and validation losses are logged as ``train/loss_w<w>`` and ``val/loss_w<w>``.
        objective: what a training step optimises, by its name in :data:`~pyramid_dm.engine.objectives.OBJECTIVES`
            (default: ``sandwich`` with ``step_aware``, else ``denoising``; ``ect``: consistency tuning, ``meanflow``:
            :mod:`pyramid_dm.engine.few_step`); ``objective_options`` its settings. With ``step_aware`` any objective
            trains every drawn width (the sandwich rule).
        init_from: a checkpoint of the same family, network, parameterization and data whose EMA weights (and first
            stage) this model starts from when a run begins (not when it resumes): e.g. the teacher that
            ``objective: ect`` tunes into a consistency model.
        speed: how the training step runs (:class:`~pyramid_dm.models.speed.SpeedArgs`: ``compile``,
            ``channels_last``, ``activation_checkpointing``, ``matmul_precision``), applied when ``fit`` starts; none
            changes what is optimised.
    """

    family = "pixel"
    # Lightning's ThroughputMonitor reads this; set from the training FLOPs in on_fit_start. None (validate, test): no
    # FLOPs metrics, and no warning that the attribute is missing.
    flops_per_batch: int | None = None
    speed_applied: list[str] | None = None  # the speed switches turned on when fit started (once per module)

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        class_conditional: bool = True,
        label_dropout: float = 0.1,
        network: str = "unet",
        unet: UNetArgs | dict | None = None,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        schedule_options: dict | None = None,
        shift_reference_resolution: int | None = None,
        prediction: str = "eps",
        sigma_data: float = 0.5,
        training_noise: str = "schedule",
        lognormal_mean: float = -1.2,
        lognormal_std: float = 1.2,
        logit_normal_mean: float = 0.0,
        logit_normal_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        lr: float = 2e-4,
        lr_scaling: str = "none",
        lr_reference_batch: int = 128,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        fused_optimizer: bool | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.999,
        sampler: str | None = None,
        sample_steps: int | None = None,
        discretization: str | None = None,
        step_aware: StepAwareArgs | None = None,
        objective: str | None = None,
        objective_options: dict | None = None,
        init_from: str | None = None,
        speed: SpeedArgs | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        check_speed(speed)
        self.init_optimizer(optimizer, lr_scheduler)
        self.engine = build_engine(self.family, self.hparams)
        self.ema = make_ema(self.engine.net, ema_decay)
        # one mean per validation key of the objective (metric states are not persistent: not in the checkpoint)
        self.val_keys = self.engine.objective.validation_keys()
        self.val_metrics = torch.nn.ModuleList(MeanMetric() for _ in self.val_keys)

    @property
    def net(self):
        return self.engine.net

    @property
    def latent_scale(self) -> Tensor:
        return self.engine.latent_scale

    @property
    def num_classes(self) -> int:
        return self.engine.num_classes

    def for_sampling(self, ema: bool = True) -> BoundEngine:
        """The engine seen through the EMA (or the raw) network: what callbacks and evaluation sample from."""
        return BoundEngine(self.engine, self.ema.module if ema else self.engine.net)

    def sample(self, num_samples: int, *args, ema: bool = True, **kwargs):
        """:meth:`DiffusionEngine.sample` with the EMA (or the raw) network."""
        return self.for_sampling(ema).sample(num_samples, *args, **kwargs)

    def fit_latent_scale(self, images: Tensor) -> None:
        """The engine's latent scale fitted on this batch of every rank (statistics summed over the ranks)."""
        trainer = compat.attached_trainer(self)
        reduce = None
        if trainer is not None and trainer.world_size > 1:
            reduce = lambda stats: trainer.strategy.reduce(stats, reduce_op="sum")
        self.engine.fit_latent_scale(images, reduce)

    # ---- checkpoints: the file holds the engine's state dict as it is, plus ema.module.* -------------------------
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return type(state)((k.removeprefix(ENGINE_PREFIX), v) for k, v in state.items())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state = {(ENGINE_PREFIX + k if k.startswith(ENGINE_KEYS) else k): v for k, v in state_dict.items()}
        return super().load_state_dict(state, strict=strict, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        engine = self.engine
        checkpoint["pyramid_dm"] = stamp(
            self.family,
            type(self),
            level_shapes=[list(s) for s in engine.level_shapes],
            first_stage=engine.first_stage.record(),
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        migrate(checkpoint, self.family)
        # Lightning built this module from the checkpoint's hyperparameters before the migration ran; label_dropout is
        # the one migrated key whose value (0: a run from before label dropout never trained the null class, so
        # guidance must be refused) differs from the constructor's default (0.1). Every other migrated key's value
        # is its default, so the module already agrees.
        self.hparams.label_dropout = self.engine.label_dropout = checkpoint["hyper_parameters"]["label_dropout"]
        h, image_shape = checkpoint["hyper_parameters"], self.engine.image_shape
        trained = (h.get("channels"), h.get("image_size"), h.get("image_size"))
        if None not in trained and trained != image_shape:
            raise UserError(
                f"the checkpoint was trained on images of shape {trained} (C, H, W) but the data gives "
                f"{image_shape}: use the data it was trained on, or drop data.init_args.resize"
            )
        levels = checkpoint["pyramid_dm"].get("level_shapes")
        if levels is not None and [tuple(x) for x in levels] != self.engine.level_shapes:
            raise UserError(
                f"the checkpoint's model has {len(levels)} level(s) of shapes {levels} (C, H, W, coarse first) but "
                f"this config builds {self.engine.num_levels}: {self.engine.level_shapes}; use the config it was "
                "trained with (the same first stage and resolutions)"
            )

    def check_encoded_data(self) -> None:
        """Latents from ``shards encode`` must come from this model's own first stage (the same weights)."""
        dm = getattr(self.trainer, "datamodule", None)
        record = getattr(dm, "encoded", None)
        if record is None:
            return
        mine, theirs = self.engine.first_stage.fingerprint(), record["autoencoder_sha256"]
        if mine is None:
            raise UserError(
                f"data.shards: {dm.manifest.path} holds latents of the autoencoder {record['autoencoder']}, but this "
                f"{self.family} model diffuses images, not its latents: point data.shards at image shards"
            )
        if mine != theirs:
            raise UserError(
                f"data.shards: {dm.manifest.path} holds latents of another autoencoder ({record['autoencoder']}, "
                f"weights sha256 {theirs[:12]}) than this model's first stage (sha256 {mine[:12]}): encode the shards "
                "again with `shards encode --autoencoder` set to model.autoencoder_ckpt, or read the image shards"
            )

    def check_batch(self, images: Tensor) -> None:
        if images.ndim == 2:  # encoded latents: checked against the first stage when fit starts
            return
        if tuple(images.shape[1:]) != self.engine.image_shape:
            raise UserError(
                f"data images have shape {tuple(images.shape[1:])} (C, H, W) but the model expects "
                f"{self.engine.image_shape}: the model (or its checkpoint) was built for other data; point "
                "data.shards at matching shards or set data.init_args.resize"
            )

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.speed_applied is None:
            self.speed_applied = apply_speed(self.engine.net, self.hparams.speed, self.ema.module)
            if self.speed_applied:
                rank_zero_info(f"training speed switches: {', '.join(self.speed_applied)}")

    def on_fit_start(self) -> None:
        try:
            self.engine.objective.check_run(self.trainer.max_steps)
        except ValueError as e:
            raise UserError(f"model.objective_options: {e}") from None
        if self.hparams.init_from and self.global_step == 0:  # a run that begins, not one that resumes
            self.initialise_from(self.hparams.init_from)
        batch_size = data_batch_size(self)
        if batch_size:  # read by ThroughputMonitor for flops_per_sec and MFU
            self.flops_per_batch = self.engine.training_flops(batch_size)
        check_data_shape(self)
        self.check_encoded_data()

    def initialise_from(self, path: str) -> None:
        """The engine's and the EMA network's weights from the checkpoint at ``path`` (:func:`init_engine_from`)."""
        dm = getattr(self.trainer, "datamodule", None)
        data = dict(dm.hparams) if dm is not None and hasattr(dm, "hparams") else None
        new = self.engine.objective.init_keys()
        step = init_engine_from(self.engine, dict(self.hparams), path, data, new)
        self.ema.module.load_state_dict(self.engine.net.state_dict())
        rank_zero_info(f"model.init_from: weights of {path} (trained {step} steps)")

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, _ = batch
        self.engine.objective.begin_step(self.global_step)
        if batch_idx == 0:
            self.check_batch(images)
        if torch.isnan(self.engine.latent_scale).any():
            self.fit_latent_scale(images)
        out = self.engine.objective.step(self.engine, images, labels)
        for key, value in out.logs.items():
            self.log(key, value, prog_bar=key == "train/loss")
        return out.total

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update_parameters(self.engine.net)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.engine.net.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def validation_step(self, batch, batch_idx: int) -> None:
        """EMA weights; noise, t and context augmentation drawn from each sample's own seed."""
        images, labels, seeds = batch
        self.check_batch(images)
        losses = self.engine.objective.validation(self.engine, images, labels, seeds, self.ema.module)
        for key, metric in zip(self.val_keys, self.val_metrics):
            metric.update(losses[key])

    def on_validation_epoch_end(self) -> None:
        # Every rank calls compute() (it syncs), so a rank that got no validation shard cannot hang the others.
        for key, metric in zip(self.val_keys, self.val_metrics):
            self.log(key, metric.compute(), prog_bar=key == "val/loss", sync_dist=False)
            metric.reset()


class PixelDiffusion(DiffusionModel):
    """Diffusion directly on pixels (DDPM, Ho et al. 2020): the first stage is the identity."""

    family = "pixel"
