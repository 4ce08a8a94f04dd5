"""TrainerState: every counter of the trainer checkpoints and restores through one state_dict."""

from __future__ import annotations

import json
from dataclasses import fields

from ups.training.state import PROCESS, RECORDED, TrainerState

# Fields that are deliberately not restored on resume. Adding a field to TrainerState needs nothing here
# (it is saved and restored by default); marking it recorded or process-only needs its name here too.
NOT_RESTORED = {
    RECORDED: {"stage", "total_steps"},
    PROCESS: {"consecutive_skips", "last_loss", "stop_reason", "interrupted", "t0"},
}


def _same(a: object, b: object) -> bool:
    return a == b or (a != a and b != b)  # NaN (last_loss's default) equals itself here


def _changed() -> TrainerState:
    """A state in which every field differs from its default."""
    st = TrainerState(
        step=7,
        offset=40,
        epoch=3,
        batches_done=5,
        skipped_steps=2,
        epoch_losses=[0.5, 0.25],
        epoch_sum=1.5,
        epoch_n=4,
        last_val={"step": 45, "nrmse/mean": 0.3},
        train_seconds=12.0,
        stopped="time budget",
        stage="finetune",
        total_steps=100,
        consecutive_skips=1,
        last_loss=0.2,
        stop_reason="asked",
        interrupted=15,
        t0=None,
    )
    defaults = TrainerState()
    same = [f.name for f in fields(st) if getattr(st, f.name) == getattr(defaults, f.name) and f.name != "t0"]
    assert not same, f"_changed() leaves {same} at their defaults: give them values here"
    return st


def test_every_field_is_restored_or_listed_as_not_restored() -> None:
    """Fails when a field is added without being saved and restored (or declared otherwise, with a reason)."""
    declared = {f.name: f.metadata.get("checkpoint") for f in fields(TrainerState)}
    assert {k for k, v in declared.items() if v} == set().union(*NOT_RESTORED.values())
    for kind, names in NOT_RESTORED.items():
        assert {k for k, v in declared.items() if v == kind} == names
    before = _changed()
    saved = json.loads(json.dumps(before.state_dict()))  # the checkpoint packs it as JSON
    after = TrainerState()
    after.load_state_dict(saved)
    for f in fields(TrainerState):
        if declared[f.name] is None:
            assert getattr(after, f.name) == getattr(before, f.name), f"{f.name} is not restored"
        else:
            assert _same(getattr(after, f.name), getattr(TrainerState(), f.name)), f"{f.name} is restored"
    assert set(saved) == {k for k, v in declared.items() if v != PROCESS}  # recorded ones are saved for reading


def test_restored_lists_are_copies() -> None:
    st = _changed()
    saved = st.state_dict()
    saved["epoch_losses"].append(9.0)
    assert st.epoch_losses == [0.5, 0.25]


def test_a_new_stage_starts_its_counters_and_keeps_the_runs() -> None:
    st = _changed()
    nxt = st.next_stage("steady", 30)
    assert (nxt.offset, nxt.stage, nxt.total_steps, nxt.step, nxt.epoch, nxt.batches_done) == (
        47,
        "steady",
        30,
        0,
        0,
        0,
    )
    assert (nxt.epoch_losses, nxt.last_val, nxt.stopped, nxt.stop_reason) == ([], {}, None, None)
    assert nxt.train_seconds == st.train_seconds and nxt.consecutive_skips == 1


def test_skips_and_steps_count_in_a_row() -> None:
    st = TrainerState()
    assert [st.count_skip(), st.count_skip()] == [1, 2]
    st.count_step(0.5)
    assert (st.step, st.skipped_steps, st.consecutive_skips, st.last_loss) == (1, 2, 0, 0.5)
    st.epoch_sum, st.epoch_n = 3.0, 2
    st.close_epoch_losses()
    assert (st.epoch_losses, st.epoch_sum, st.epoch_n) == ([1.5], 0.0, 0)
