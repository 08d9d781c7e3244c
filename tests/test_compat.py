"""Each private Lightning or W&B API that ``pyramid_dm.compat`` uses still exists and means what we rely on. A failure
here after an upgrade names the place to fix: ``pyramid_dm/compat.py``."""

from __future__ import annotations

import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from pyramid_dm import compat


def test_an_unattached_module_has_no_trainer_and_an_attached_one_has_it(tmp_path):
    model = BoringModel()
    assert compat.attached_trainer(model) is None
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model)
    assert compat.attached_trainer(model) is trainer


def test_a_lightning_optimizer_wraps_the_torch_optimizer():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert compat.raw_optimizer(LightningOptimizer(opt)) is opt


def test_the_fit_loop_state_in_a_checkpoint_has_the_counters_resume_reads(tmp_path):
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loop = compat.fit_loop_state(torch.load(tmp_path / "c.ckpt", weights_only=False))
    assert loop[compat.BATCH_PROGRESS]["total"]["completed"] == 3
    assert compat.checkpoint_logging_step(loop) == 3
    compat.set_logging_step(trainer, 7)
    assert compat.checkpoint_logging_step(trainer.fit_loop.state_dict()) == 7  # what the next checkpoint holds


def test_lightning_installs_its_requeue_handler_under_slurm(tmp_path, monkeypatch):
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "job", "SLURM_JOB_ID": "1", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["handler"] = compat.requeue_handler(signal.SIGUSR1)

    before = signal.getsignal(signal.SIGUSR1)
    try:
        trainer = L.Trainer(
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
            plugins=[SLURMEnvironment(auto_requeue=True)],
            callbacks=[Probe()],
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(BoringModel())
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert seen["handler"] is not None and seen["handler"] is not before


def test_the_wandb_logger_keeps_its_init_arguments_until_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="p")
    assert isinstance(compat.wandb_init_kwargs(logger), dict) and not compat.wandb_started(logger)
    compat.set_wandb_run_id(logger, "abc123")
    assert logger.version == "abc123" and compat.wandb_init_kwargs(logger)["id"] == "abc123"


def test_wandb_accepts_the_flush_setting_and_runs_know_their_starting_step(tmp_path, monkeypatch):
    import wandb

    settings = wandb.Settings(**{compat.WANDB_FLUSH_SETTING: 0.25})
    assert getattr(settings, compat.WANDB_FLUSH_SETTING) == pytest.approx(0.25)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="p", settings=settings)
    try:
        assert compat.run_starting_step(run) == 0
    finally:
        run.finish()
        wandb.teardown()  # stops this process's wandb-core, so nothing started later can attach to it


def test_the_step_bounded_progress_bar_drops_lightnings_minus_two():
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import RichProgressBar

    from pyramid_dm.callbacks.progress import use_step_bounded_bar

    trainer = Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False)
    bar = trainer.progress_bar_callback
    bar.setup(trainer, None, "fit")  # where Lightning gives the bar its trainer
    trainer.fit_loop.max_epochs = -1  # what fit makes of max_epochs=None when max_steps bounds the run
    hook = lambda b, epoch: getattr(b, compat.TRAIN_DESCRIPTION)(epoch).strip()  # noqa: E731
    assert type(bar) is RichProgressBar and hook(bar, 3) == "Epoch 3/-2"  # Lightning's
    use_step_bounded_bar(trainer)
    assert isinstance(bar, RichProgressBar) and hook(bar, 3) == "Epoch 3"
    bounded = Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False)
    use_step_bounded_bar(bounded)
    bounded.progress_bar_callback.setup(bounded, None, "fit")
    assert hook(bounded.progress_bar_callback, 2) == "Epoch 2/3"


def test_the_training_progress_of_a_fit_loop_excludes_its_validation_loop(tmp_path):
    trainer = L.Trainer(max_steps=3, val_check_interval=2, logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, limit_val_batches=1)  # fmt: skip
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    loop = compat.fit_loop_state(torch.load(tmp_path / "c.ckpt", weights_only=False))
    progress = compat.training_progress(loop)
    assert loop[compat.BATCH_PROGRESS] in progress
    assert any(k.startswith(compat.VAL_LOOP) for k in loop)  # Lightning still nests the val loop under the epoch loop
    assert all(p is not v for k, v in loop.items() if k.startswith(compat.VAL_LOOP) for p in progress)


def test_optuna_marks_a_dead_workers_running_trial_failed_through_its_storage():
    import optuna
    from optuna.trial import TrialState

    study = optuna.create_study()
    trial = study.ask()
    (running,) = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    compat.fail_trial(study, running)
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL and trial.number == running.number


def test_a_conv_runs_with_a_slice_of_its_weights_and_keeps_its_padding_mode():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular")
    x = torch.randn(1, 2, 5, 5)
    w, b = conv.weight[:3, :2], conv.bias[:3]
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), w, b)
    assert torch.allclose(compat.conv_forward(conv, x, w, b), want, atol=1e-6)


def test_lightnings_summary_table_and_depth_are_what_the_cost_summary_reads():
    from lightning.pytorch.callbacks import ModelSummary

    from pyramid_dm import compat

    table = compat.summary_table(10, 10, 0.1, {"train": 1, "eval": 0}, 0, [(" ", ["0"]), ("Name", ["net"])])
    assert "Total Flops" in table and "Total params" in table
    assert compat.summary_depth(ModelSummary(max_depth=3)) == 3
