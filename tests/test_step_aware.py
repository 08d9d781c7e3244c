"""Step-aware diffusion (DDSM) beyond the networks: sandwich supernet training, width policies over log-SNR, the
resumable NSGA-II search, and search-steps -> sample --step_policy through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import run_cli, run_main, wandb_inspect

from pyramid_dm.engine.step_policy import LevelPolicy, StepPolicy, log_snr
from pyramid_dm.engine.wrappers import SamplingWrapper, Widths
from pyramid_dm.eval.history import run_history
from pyramid_dm.models import PixelDiffusion
from pyramid_dm.nets.slimmable import current_width

ROOT = Path(__file__).resolve().parents[1]
UNET = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], norm_groups=8)
WIDTHS = [1.0, 0.75, 0.5, 0.25]


def supernet(distill: bool = False) -> PixelDiffusion:
    torch.manual_seed(0)
    return PixelDiffusion(8, 1, num_classes=10, unet=UNET, step_aware={"widths": WIDTHS, "distill": distill})


def test_one_sandwich_step_gives_every_parameter_a_gradient_from_largest_smallest_and_a_middle_width():
    model = supernet()
    seen = []
    model.engine.net.register_forward_pre_hook(lambda *_: seen.append(current_width()))
    terms = model.engine.objective.terms(model.engine, torch.randn(6, 1, 8, 8), torch.arange(6))
    assert [w for w, _, _ in terms][:2] == [1.0, 0.25] and terms[2][0] in (0.75, 0.5)
    assert seen == [w for w, _, _ in terms]  # each width ran once, with its own draws
    sum(loss for _, loss, _ in terms).backward()
    missing = [n for n, p in model.engine.net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_distillation_adds_the_full_widths_detached_output_as_a_target():
    plain, distilled = supernet(), supernet(distill=True)
    distilled.engine.load_state_dict(plain.engine.state_dict())
    images, labels = torch.randn(4, 1, 8, 8), torch.arange(4)
    torch.manual_seed(1)
    a = plain.engine.objective.terms(plain.engine, images, labels)
    torch.manual_seed(1)
    b = distilled.engine.objective.terms(distilled.engine, images, labels)
    assert torch.equal(a[0][1], b[0][1])  # the largest width has no teacher
    assert all(float(y) > float(x) for (_, x, _), (_, y, _) in zip(a[1:], b[1:]))  # + MSE to the teacher
    # the teacher gets no gradient through its target: the full width's own loss alone reaches it
    ratio = distilled.engine.training_flops(8) / plain.engine.training_flops(8)
    assert 1.3 < ratio < 2.0, ratio  # two teacher forwards at full width per step


def test_a_log_snr_policy_picks_the_same_width_for_the_same_noise_under_two_samplers_and_grids():
    model = supernet().engine.eval()
    model.fit_latent_scale(torch.randn(4, 1, 8, 8))
    breaks = [-4.0, 0.0, 4.0]
    policy = StepPolicy([LevelPolicy(breaks, [0.25, 0.5, 0.75, 1.0])])
    sigmas, widths = [], []
    model.net.register_forward_pre_hook(lambda *_: widths[-1].append(current_width()))  # inside the policy

    class Record(SamplingWrapper):  # outside the policy: the sigma of each call
        position = 15

        def wrap(self, den, at):
            def run(x, sigma, **cond):
                sigmas[-1].append(float(torch.as_tensor(sigma).reshape(-1)[0]))
                return den(x, sigma, **cond)

            return run

    for sampler, grid in (("dpmpp_2m", "karras"), ("ddim", "leading")):
        sigmas.append([])
        widths.append([])
        model.sample(2, sampler, 12, discretization=grid, wrappers=[Record(), Widths(policy)])
    calls = [list(zip(s, w, strict=True)) for s, w in zip(sigmas, widths)]
    # the segment of each call's log-SNR, written out: widths rise with the log-SNR (less noise, wider)
    segment = lambda sigma: sum(log_snr(sigma) >= b for b in breaks)  # noqa: E731
    for run in calls:
        assert {w for _, w in run} == {0.25, 0.5, 0.75, 1.0}
        assert all(w == [0.25, 0.5, 0.75, 1.0][segment(s)] for s, w in run)
    assert not {s for s, _ in calls[0]} & {s for s, _ in calls[1]} - {max(s for s, _ in calls[0])}  # other grids


def test_policy_files_round_trip_and_name_what_is_wrong(tmp_path):
    policy = StepPolicy(
        [LevelPolicy([0.0], [0.5, 1.0])],
        model={"checkpoint_sha256": "a" * 64, "widths": WIDTHS, "level_shapes": [[1, 8, 8]]},
        measured={"fid_proxy": 3.0},
    )
    path = policy.save(tmp_path / "p.json")
    back = StepPolicy.load(path)
    assert back == policy and json.loads(path.read_text())["version"] == 1
    back.check_model(WIDTHS, [[1, 8, 8]], "a" * 64, "p.json")
    with pytest.raises(ValueError, match=r"p.json: widths \[0.5\] are not among the checkpoint's widths \[1.0\]"):
        back.check_model([1.0], [[1, 8, 8]], "a" * 64, "p.json")
    with pytest.raises(ValueError, match="not slimmable"):
        back.check_model(None, [[1, 8, 8]], "a" * 64, "p.json")
    with pytest.raises(ValueError, match=r"1 level\(s\), the checkpoint's model 2"):
        back.check_model(WIDTHS, [[1, 4, 4], [1, 8, 8]], "a" * 64, "p.json")
    with pytest.raises(ValueError, match="--ignore_policy_hash"):
        back.check_model(WIDTHS, [[1, 8, 8]], "b" * 64, "p.json")
    back.check_model(WIDTHS, [[1, 8, 8]], "b" * 64, "p.json", ignore_hash=True)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        LevelPolicy([], [1.5])
    (tmp_path / "bad.json").write_text('{"format": "pyramid_dm.step_policy", "version": 7}')
    with pytest.raises(ValueError, match="bad.json' has version 7"):
        StepPolicy.load(tmp_path / "bad.json")
    step = StepPolicy(
        [LevelPolicy.per_step([0.5, 1.0], [2.0, 0.5, 0.0])], "per_step", budget={"samplers": ["ddim"], "steps": [2]}
    )
    assert step.levels[0].width(2.0) == 0.5 and step.levels[0].width(0.5) == 1.0
    with pytest.raises(ValueError, match="per_step policy made for samplers"):
        step.check_budget(["dpmpp_2m"], [2], "s.json")


# ---- through the CLI --------------------------------------------------------------------------------------------
def fit_supernet(root: Path, env: dict, steps: int, *extra: str) -> Path:
    """A tiny digits supernet; its sample grids are also drawn with the uniform width-0.5 policy."""
    import yaml

    callbacks = yaml.safe_load((ROOT / "configs" / "trainer" / "default.yaml").read_text())["trainer"]["callbacks"]
    grid = next(c for c in callbacks if c["class_path"].endswith("SampleGrid"))
    grid["init_args"].update(step_policy="0.5", num_samples=8)
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    args = ["fit", "--config", "configs/quickstart.yaml", "--config", str(root / "grid.yaml")]
    args += ["--exp.root", str(root), "--trainer.max_steps", str(steps)]
    args += ["--trainer.val_check_interval", str(steps), "--trainer.enable_progress_bar", "false"]
    args += [
        "--data.init_args.num_workers",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        "--data.init_args.batch_size",
        "32",
    ]
    args += ["--model.init_args.step_aware", "{widths: [1.0, 0.5, 0.25]}", *extra]
    proc = run_cli(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "quickstart"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_env, digits_shards) -> Path:
    """A tiny step-aware supernet of the digits."""
    return fit_supernet(tmp_path_factory.mktemp("runs"), session_env, 8)


def test_supernet_training_logs_every_widths_loss_and_its_training_flops(trained):
    run = next((trained / "wandb").glob("offline-run-*"))
    rows = run_history(run)
    keys = set().union(*rows)
    assert {"train/loss_w1", "train/loss_w0.25", "train/loss_w0.5", "val/loss_w0.5", "val/loss_w0.25"} <= keys
    summary = wandb_inspect(run)["summary"]
    assert summary["val/loss_w0.25"]["min"] > 0 and summary["val/loss"]["last"] > 0
    assert "samples/step_policy" in summary and list((trained / "samples").glob("step*-step_policy.png"))
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["step_aware"] == {"widths": [1.0, 0.5, 0.25]}
    model = PixelDiffusion(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    full = model.engine.training_flops_at(128, 1.0)
    assert model.engine.training_flops(128) == pytest.approx(
        full + model.engine.training_flops_at(128, 0.25) * 1 + model.engine.training_flops_at(128, 0.5)
    )


def test_search_steps_end_to_end_then_sample_with_a_front_policy(trained, session_env, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    study = tmp_path / "study"
    args = ["search-steps", "--ckpt_path", str(ckpt), "--sampler", "ddim", "--steps", "4", "--trials", "10"]
    args += ["--population", "4", "--num_samples", "16", "--batch_size", "16", "--num_real", "100", "--no_progress"]
    proc = run_cli([*args, "--study", str(study)], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((study / "front.json").read_text())["front"]
    trials = (study / "trials.csv").read_text().splitlines()
    assert len(trials) == 11 and (study / "pareto.png").stat().st_size > 1000
    assert "uniform 1" in (study / "trials.csv").read_text()
    assert [p["gflops_per_sample"] for p in points] == sorted(p["gflops_per_sample"] for p in points)
    assert all(a["fid"] > b["fid"] for a, b in zip(points, points[1:]))  # a front: cheaper is worse
    cheapest = StepPolicy.load(points[0]["policy_file"])
    assert cheapest.model["widths"] == [1.0, 0.5, 0.25] and cheapest.measured["gflops_per_sample"] > 0
    rec = wandb_inspect(next((study / "wandb").glob("offline-run-*")))
    assert rec["summary"]["trial/number"] >= 0

    # the same command again: the study is complete, nothing more runs
    again = run_cli([*args, "--study", str(study)], session_env)
    assert again.returncode == 0 and "0 trial(s) by this worker" in again.stderr

    out = tmp_path / "samples"
    sample = ["sample", "--ckpt_path", str(ckpt), "--sampler", "ddim", "--steps", "4", "--num_samples", "4"]
    proc = run_cli([*sample, "--step_policy", points[0]["policy_file"], "--out", str(out)], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "samples.json").read_text())
    used = {float(w): c for w, c in record["width_calls"][0].items()}
    assert sum(used.values()) == 4 and set(used) <= {1.0, 0.5, 0.25}
    assert used == {w: c for w, c in used.items() if c}  # per call, as the policy says
    widths = [cheapest.levels[0].width(s) for s in _ddim_sigmas(ckpt, 4)]
    assert used == {w: widths.count(w) for w in set(widths)}

    # evaluate names the policy and counts each call at its width
    ev = ["evaluate", "--ckpt_path", str(ckpt), "--sampler", "ddim", "--steps", "4", "--num_samples", "16"]
    ev += ["--num_real", "100", "--kid_subset_size", "4", "--no_wandb", "--no_progress"]
    proc = run_cli([*ev, "--step_policy", "0.25", "--out", str(tmp_path / "e1")], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli([*ev, "--out", str(tmp_path / "e2")], session_env)
    slim, full = (json.loads((tmp_path / e / "results.json").read_text())["rows"][0] for e in ("e1", "e2"))
    assert slim["step_policy"] == "uniform 0.25" and slim["mean_width"] == 0.25 and full["step_policy"] is None
    assert 0.03 < slim["gflops_per_sample"] / full["gflops_per_sample"] < 0.15


def _ddim_sigmas(ckpt: Path, steps: int) -> list[float]:
    from pyramid_dm.diffusion import sampling_sigmas
    from pyramid_dm.engine import load_engine

    engine = load_engine(str(ckpt))
    return sampling_sigmas(engine.schedules[0], steps, engine.plan.grid("ddim")).tolist()[:steps]


def test_bad_step_aware_input_is_named_and_writes_nothing(
    trained, session_env, tmp_path, digits_shards, monkeypatch, capsys
):
    refused = lambda args: run_main(args, session_env, monkeypatch, capsys)  # noqa: E731
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    base = ["search-steps", "--ckpt_path", ckpt, "--steps", "2", "--trials", "2", "--num_samples", "4"]
    code, err = refused([*base, "--num_real", "100000", "--study", str(tmp_path / "s1"), "--no_wandb"])
    assert code == 2 and "--num_real 100000: the train split of" in err
    assert not (tmp_path / "s1").exists()
    # a study directory made for another objective (here: another sample count)
    ok = run_cli([*base, "--num_real", "50", "--study", str(tmp_path / "s2"), "--no_wandb"], session_env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    other = [*base[:-1], "8", "--num_real", "50", "--study", str(tmp_path / "s2"), "--no_wandb"]
    code, err = refused(other)
    assert code == 2 and "created for another search (num_samples: 4 there, 8 here)" in err
    # a policy with a width the checkpoint was not trained at; a policy for a non-slimmable checkpoint
    sample = ["sample", "--ckpt_path", ckpt, "--num_samples", "2", "--out", str(tmp_path / "x")]
    code, err = refused([*sample, "--step_policy", "0.75"])
    assert code == 2 and "widths [0.75] are not among the checkpoint's widths [1.0, 0.5, 0.25]" in err
    code, err = refused([*sample, "--step_policy", "1.5"])
    assert code == 2 and "(0, 1]" in err
    policy = json.loads((tmp_path / "s2" / "front.json").read_text())["front"][0]["policy_file"]
    legacy = ROOT / "tests" / "fixtures" / "legacy" / "pixel.ckpt"  # a plain network of an older release
    code, err = refused(["sample", "--ckpt_path", str(legacy), "--step_policy", policy, "--out", str(tmp_path / "y")])
    assert code == 2 and "not slimmable" in err, err[-2000:]
    # a policy searched for other weights of the same model: refused, unless told to ignore the hash
    other_ckpt = tmp_path / "other.ckpt"
    state = torch.load(ckpt, weights_only=False)
    state["global_step"] += 1
    torch.save(state, other_ckpt)
    sample_other = ["sample", "--ckpt_path", str(other_ckpt), "--num_samples", "2", "--steps", "2"]
    code, err = refused([*sample_other, "--step_policy", policy, "--out", str(tmp_path / "z")])
    assert code == 2 and "pass --ignore_policy_hash" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    proc = run_cli(
        [*sample_other, "--step_policy", policy, "--ignore_policy_hash", "--out", str(tmp_path / "z")], session_env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert math.isfinite(json.loads(Path(policy).read_text())["measured"]["fid_proxy"])


def test_a_two_model_policy_runs_a_separately_trained_small_model_at_high_noise(trained, session_env, tmp_path):
    """T-Stitch in the policy interface: a small plain network (the legacy fixture: base 8, trained on the same
    digits with the same schedule) for the noisy calls, the full network after; each call costed on the model that
    ran it. A model with another schedule is refused."""
    small = ROOT / "tests" / "fixtures" / "legacy" / "pixel.ckpt"
    other = torch.load(small, weights_only=False)
    other["hyper_parameters"]["num_timesteps"] = 500
    torch.save(other, tmp_path / "other.ckpt")
    policy = tmp_path / "stitch.json"
    stitch = StepPolicy([LevelPolicy([0.0], ["small", 1.0])], name="t-stitch", models={"small": str(small)})
    stitch.save(policy)
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    ev = ["evaluate", "--ckpt_path", ckpt, "--sampler", "ddim", "--steps", "6", "--num_samples", "16", "--num_real"]
    ev += ["100", "--kid_subset_size", "4", "--no_wandb", "--no_progress"]
    proc = run_cli([*ev, "--step_policy", str(policy), "--out", str(tmp_path / "e")], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "e" / "results.json").read_text())["rows"][0]
    sigmas = _ddim_sigmas(Path(ckpt), 6)
    noisy = sum(log_snr(s) < 0 for s in sigmas)
    assert 0 < noisy < 6
    from pyramid_dm.engine import load_engine

    full = load_engine(ckpt).flops_per_call()[0]
    tiny = load_engine(str(small)).flops_per_call()[0]
    assert tiny < full / 4
    assert row["gflops_per_sample"] * 1e9 == pytest.approx(noisy * tiny + (6 - noisy) * full, rel=1e-6)
    assert row["step_policy"] == "t-stitch" and row["mean_width"] == 1.0
    stitch.models["small"] = str(tmp_path / "other.ckpt")
    stitch.save(policy)
    proc = run_cli([*ev, "--step_policy", str(policy), "--out", str(tmp_path / "bad")], session_env)
    assert proc.returncode == 2 and "does not share data and schedule" in proc.stderr and "num_timesteps" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_a_pyramid_runs_one_policy_per_level_and_costs_each_level_at_its_widths():
    from pyramid_dm.eval.sampling import sample_with_cost
    from pyramid_dm.models import PyramidDiffusion

    torch.manual_seed(0)
    model = PyramidDiffusion(8, 1, resolutions=[4, 8], unet=UNET, step_aware={"widths": WIDTHS}, sample_steps=3)
    engine = model.engine.eval()
    seen = []
    engine.net.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["level"], current_width())), with_kwargs=True)
    policy = StepPolicy([LevelPolicy([], [0.25]), LevelPolicy([0.0], [0.5, 1.0])])
    _, cost = sample_with_cost(engine, "ddim", 3, 2, 2, progress=False, wrappers=[Widths(policy)])
    calls = seen[2:8]  # the sampling calls: before them the full-width FLOP count of each level, after them the widths'
    assert {w for lv, w in calls if lv == 0} == {0.25} and {w for lv, w in calls if lv == 1} == {0.5, 1.0}
    at = {w: engine.flops_per_call(width=w) for w in WIDTHS}
    fine = [w for lv, w in calls if lv == 1]
    want = 3 * at[0.25][0] + sum(at[w][1] for w in fine)
    assert cost.gflops_per_sample * 1e9 == pytest.approx(want + cost.decoder_gflops * 1e9)
    assert [lv["nfe"] for lv in cost.levels] == [3, 3] and cost.step_policy == "policy"


def test_bf16_autocast_sandwich_step_and_bad_widths():
    model = supernet()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.engine.objective.terms(model.engine, torch.randn(4, 1, 8, 8), torch.arange(4))
    sum(loss for _, loss, _ in terms).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.engine.net.parameters())
    from pyramid_dm.errors import UserError

    with pytest.raises(
        UserError, match=r"model.step_aware.widths must be width multipliers in \(0, 1\], got \[1.0, 1.5\]"
    ):
        PixelDiffusion(8, 1, unet=UNET, step_aware={"widths": [1.0, 1.5]})
    with pytest.raises(UserError, match="unknown keys"):
        PixelDiffusion(8, 1, unet=UNET, step_aware={"widht": [1.0]})
