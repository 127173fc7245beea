"""What the end-to-end tests would only catch indirectly: the training loss includes the mixers'
auxiliary loss, the logged validation loss is the plain mean over the validation windows, the
validation windows do not depend on the seed, and the training stream moves on and resumes where
it stopped."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from famlab import api
from famlab.build import build_datamodule, build_model
from famlab.data.windows import StepWindows, sample_windows
from famlab.lit.module import LitLM
from famlab_testing import TINY


def _first(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_training_step_returns_cross_entropy_plus_aux_loss():
    cfg = api.compose(["model=tiny", "attention=update_gated"])
    dm = build_datamodule(cfg)
    model = build_model(cfg, vocab_size=dm.vocab_size)
    module = LitLM(model, None, None, total_steps=1)
    batch = dm.eval_batches(int(dm.context), 1, batch_size=2)[0]
    torch.manual_seed(0)
    returned = module.training_step(batch, 0)
    aux = model.aux_loss()
    assert aux is not None and float(aux.detach()) > 0  # update_gated prices exact cache updates
    logits = model(batch["input"])
    ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten())
    torch.testing.assert_close(returned, ce + model.aux_loss())
    assert float(returned - ce) > 0


def test_summary_val_loss_is_the_mean_over_the_validation_windows(tmp_path):
    """Recompute the final validation loss from last.ckpt over the same windows: a plain mean over
    ``data.val_batches`` batches (not n - 1, not the last batch)."""
    cfg = api.compose([*TINY, "data.val_batches=3", f"out_root={tmp_path}", "run_name=v"], run_dir=tmp_path / "v")
    summary = api.train(cfg)
    run = api.load_run(tmp_path / "v", which="last")
    batches = run.datamodule.eval_batches(int(run.cfg.model.context), int(run.cfg.data.val_batches))
    with torch.no_grad():
        losses = [F.cross_entropy(run.model(b["input"]).flatten(0, 1).float(), b["target"].flatten()) for b in batches]
    assert len(losses) == 3 and len({float(x) for x in losses}) == 3
    mean = float(torch.stack(losses).mean())
    recorded = json.loads((tmp_path / "v" / "summary.json").read_text())["final_val_loss"]
    assert recorded == summary["final_val_loss"]
    assert abs(recorded - mean) < 1e-5, (recorded, mean)


def test_validation_windows_do_not_depend_on_the_seed():
    batches = {}
    for seed in (0, 1):
        dm = build_datamodule(api.compose(["model=tiny", f"seed={seed}"]))
        assert dm.seed == seed
        batches[seed] = dm.eval_batches(int(dm.context), 3)
    assert all(_same(a, b) for a, b in zip(batches[0], batches[1]))
    recall = [build_datamodule(api.compose(["model=tiny", "data=recall", f"seed={s}"])) for s in (0, 1)]
    assert all(_same(a, b) for a, b in zip(*(r.eval_batches(64, 2) for r in recall)))


def test_training_stream_moves_on_every_batch_and_differs_between_seeds():
    dm = build_datamodule(api.compose(["model=tiny"]))
    first = _first(dm.train_dataloader(), 4)
    assert not any(_same(first[i], first[j]) for i in range(4) for j in range(i + 1, 4))
    other = build_datamodule(api.compose(["model=tiny", "seed=1"]))
    assert not _same(first[0], _first(other.train_dataloader(), 1)[0])


def test_resumed_stream_continues_at_the_saved_position():
    """The data module's checkpointed position (batches seen = steps x accumulation) is where the
    restored stream starts, not batch 0."""
    dm = build_datamodule(api.compose(["model=tiny"]))
    reference = _first(dm.train_dataloader(), 7)
    fresh = build_datamodule(api.compose(["model=tiny"]))
    fresh.load_state_dict({"batches_seen": 5})
    resumed = _first(fresh.train_dataloader(), 2)
    assert _same(resumed[0], reference[5]) and _same(resumed[1], reference[6])
    assert not _same(resumed[0], reference[0])

    class _Trainer:  # what the data module reads when Lightning saves it
        global_step, accumulate_grad_batches = 3, 2

    dm.trainer = _Trainer()
    assert dm.state_dict() == {"batches_seen": 6}


def test_step_windows_restart_at_start_step_on_every_iteration():
    tokens = torch.arange(1000, dtype=torch.int32)
    stream = StepWindows(lambda g, b: sample_windows(tokens, 8, b, g), 4, seed=0)
    stream.start_step = 2
    a, b = next(iter(stream)), next(iter(stream))
    assert _same(a, b) and a["input"].shape == (4, 8)
