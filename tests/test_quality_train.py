"""Training: the schedule, the answer-only loss, repeatability and resuming from a checkpoint."""

import dataclasses

import pytest
import torch

import baselines
import yoco
from bench.quality import train as tr
from bench.quality.tasks import IGNORE, Vocab

VOCAB = Vocab(8, 8, 8)
CONFIG = tr.TrainConfig(seq_len=24, batch_size=4, steps=6, lr=3e-3, warmup_steps=2, checkpoint_every=3,
                        pairs=(2, 4), vocab=VOCAB)


def tiny_model(arch="transformer", **overrides):
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB.size, n_layers=2, max_seq_len=24, **overrides)
    if arch == "transformer":
        return baselines.from_preset("tiny", **fields)
    return yoco.from_preset("tiny", self_decoder=arch, **fields)


def test_warmup_then_cosine_to_the_floor():
    c = tr.TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    f = [tr.lr_factor(s, c) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up to the peak
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # then never rises
    assert f[99] == pytest.approx(0.1) and f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 45 / 89)).item()))


def test_step_schedule():
    c = tr.TrainConfig(steps=110, warmup_steps=10, schedule="step", min_lr_ratio=0.05)
    assert [tr.lr_factor(s, c) for s in (10, 60, 70, 98, 109)] == [1.0, 1.0, 0.3, 0.05, 0.05]


def test_loss_counts_answer_positions_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.full((2, 5), IGNORE)
    targets[0, 3], targets[1, 4] = 2, 6
    loss = tr.answer_loss(logits, targets)
    expected = torch.nn.functional.cross_entropy(torch.stack([logits[0, 3], logits[1, 4]]), torch.tensor([2, 6]))
    torch.testing.assert_close(loss, expected)
    other = logits.clone()
    other[0, :3] += 5.0  # positions that are not answers
    torch.testing.assert_close(tr.answer_loss(other, targets), loss)


def test_weight_decay_spares_norms_and_clipping_bounds_the_update():
    model = tiny_model()
    groups = tr.make_optimizer(model, CONFIG).param_groups
    assert groups[0]["weight_decay"] == CONFIG.weight_decay and all(p.dim() == 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.dim() == 1 for p in groups[1]["params"])


def test_training_repeats_bitwise_and_lowers_the_loss():
    a, b = tiny_model(), tiny_model()
    config = dataclasses.replace(CONFIG, steps=12, checkpoint_every=100)
    ra, rb = tr.train(a, config), tr.train(b, config)
    assert ra.final_loss == rb.final_loss
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    first = tiny_model()
    start = tr.answer_loss(first(torch.zeros(1, 24, dtype=torch.long)), torch.full((1, 24), 3)).item()
    assert ra.final_loss < start  # better than the untrained model's loss


def test_resumed_training_ends_where_an_uninterrupted_one_does(tmp_path):
    """Stop right after the checkpoint at step 3; a fresh model resumes from it and ends bitwise
    where a run that never stopped ends (weights, optimizer moments, loss)."""
    straight = tiny_model("swa", window=4)
    expected = tr.train(straight, CONFIG)

    class Killed(Exception):
        pass

    def stop(step):
        if step == 3:
            raise Killed

    identity = {"model": "swa-test"}
    first = tiny_model("swa", window=4)
    with pytest.raises(Killed):
        tr.train(first, CONFIG, tr.Checkpoint(tmp_path / "m.pt", identity), after_checkpoint=stop)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["step"] == 3
    resumed = tiny_model("swa", window=4)
    result = tr.train(resumed, CONFIG, tr.Checkpoint(tmp_path / "m.pt", identity))
    assert result.resumed_from == 3 and result.steps == 6
    assert result.final_loss == expected.final_loss
    assert all(torch.equal(x, y) for x, y in zip(resumed.state_dict().values(), straight.state_dict().values()))
    # A finished checkpoint: nothing left to train, the same weights come back, the time is kept.
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["finished"] and saved["optimizer"] is None
    again = tiny_model("swa", window=4)
    done = tr.train(again, CONFIG, tr.Checkpoint(tmp_path / "m.pt", identity))
    assert done.resumed_from == 6 and done.seconds == saved["seconds"] and done.final_loss == expected.final_loss
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), straight.state_dict().values()))


def test_checkpoint_of_another_model_is_refused(tmp_path):
    tr.Checkpoint(tmp_path / "m.pt", {"model": "a"}).save({"step": 1})
    with pytest.raises(ValueError, match="was written for {'model': 'a'}, not {'model': 'b'}"):
        tr.Checkpoint(tmp_path / "m.pt", {"model": "b"}).load()


def test_bitnet_trains_through_the_straight_through_estimator():
    from yoco.bitnet import BitLinear

    model = tiny_model(bitnet="1.58bit")
    layer = next(m for m in model.modules() if isinstance(m, BitLinear))
    before = layer.weight.detach().clone()
    tr.train(model, dataclasses.replace(CONFIG, steps=2))
    assert not torch.equal(before, layer.weight) and not layer.is_packed  # trained as float, fake-quantized


@pytest.mark.parametrize("field, value, message", [
    ("schedule", "linear", "unknown schedule 'linear': valid schedules are 'cosine', 'step'"),
    ("tasks", ("mqar", "recall"), "unknown task 'recall': valid tasks are 'mqar', 'needle', 'copy'"),
    ("tasks", (), "tasks must name at least one task"),
    ("lr", 0, "lr must be a number > 0, got 0"),
    ("steps", 0, "steps must be an integer >= 1, got 0"),
    ("min_lr_ratio", 2, r"min_lr_ratio must be in \[0, 1\], got 2"),
    ("seq_len", 10, "pairs=4 does not fit seq_len=10"),
])
def test_bad_training_settings_name_the_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIG, **{field: value})
