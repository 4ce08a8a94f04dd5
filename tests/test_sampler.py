"""Property tests for ups.data.sampler.MultiTaskDistributedSampler."""

import itertools
import json
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ups.data.sampler import MODES, STRATEGIES
from ups.data.sampler import MultiTaskDistributedSampler as Sampler

settings.register_profile("sampler", deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("sampler")

sizes_st = st.lists(st.integers(1, 40), min_size=1, max_size=4)
opts_st = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(STRATEGIES),
        "mode": st.sampled_from(MODES),
        "temperature": st.sampled_from([0.5, 1.0, 2.0, 5.0]),
        "seed": st.integers(0, 2**32),
        "steps_per_epoch": st.none() | st.integers(1, 25),
    }
)


def ranks(sizes, b, world, epoch=0, **opts):
    """One sampler per rank, all at ``epoch``."""
    out = [Sampler(sizes, b, num_replicas=world, rank=r, **opts) for r in range(world)]
    for s in out:
        s.set_epoch(epoch)
    return out


def global_batches(samplers, full_epoch=True):
    """Per step, the concatenation of every rank's micro-batch (checks equal lengths)."""
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1, "ranks yield different numbers of micro-batches"
    if full_epoch:
        assert all(len(p) == len(s) for p, s in zip(per_rank, samplers))
    return [sum(step, []) for step in zip(*per_rank)]


@given(sizes_st, st.integers(1, 4), st.integers(1, 4), st.integers(0, 3), opts_st)
def test_world_size_invariance(sizes, b, world, epoch, opts):
    """Ranks of (world, b) concatenated == one process with batch world*b."""
    multi = global_batches(ranks(sizes, b, world, epoch, **opts))
    single = list(ranks(sizes, b * world, 1, epoch, **opts)[0])
    assert multi == single
    assert all(len(batch) == b * world for batch in multi)


@given(sizes_st, st.integers(1, 4), st.integers(1, 4), opts_st)
def test_equal_lengths_and_task_mode_single_task(sizes, b, world, opts):
    samplers = ranks(sizes, b, world, **opts)
    expected = opts["steps_per_epoch"] or max(1, sum(sizes) // (b * world))
    assert {len(s) for s in samplers} == {expected}
    per_rank = [list(s) for s in samplers]
    assert all(len(p) == expected and all(len(mb) == b for mb in p) for p in per_rank)
    for step in zip(*per_rank):
        for mb in step:
            assert all(0 <= i < sizes[t] for t, i in mb)
        if opts["mode"] == "task":  # one task per global batch, identical on all ranks
            assert len({t for mb in step for t, _ in mb}) == 1


@given(sizes_st, st.integers(1, 4), st.integers(1, 4), opts_st)
def test_disjoint_within_global_batch(sizes, b, world, opts):
    """Ranks never share a sample in a step unless the step needs more of a task than it has."""
    for batch in global_batches(ranks(sizes, b, world, **opts)):
        need = Counter(t for t, _ in batch)
        for t, c in need.items():
            pairs = [p for p in batch if p[0] == t]
            if c <= sizes[t]:
                assert len(set(pairs)) == c
            else:  # oversubscribed: indices spread as evenly as possible
                counts = Counter(pairs).values()
                assert len(counts) == sizes[t] and max(counts) - min(counts) <= 1


@given(sizes_st, st.integers(1, 3), st.integers(1, 3), opts_st)
def test_no_repeat_before_task_exhausted(sizes, b, world, opts):
    """Each task's indices, in stream order, come in whole passes: every n_t in a row are distinct,
    and every complete pass is a permutation of the task (so an epoch repeats nothing a task still has unseen)."""
    stream = [p for batch in global_batches(ranks(sizes, b, world, **opts)) for p in batch]
    for t, n in enumerate(sizes):
        seq = [i for task, i in stream if task == t]
        for k in range(0, len(seq), n):
            chunk = seq[k : k + n]
            assert len(set(chunk)) == len(chunk)
            if len(chunk) == n:
                assert set(chunk) == set(range(n))


@given(
    st.lists(st.integers(1, 30), min_size=1, max_size=3),
    st.integers(1, 3),
    st.sampled_from(MODES),
    st.sampled_from(STRATEGIES),
    st.integers(0, 1000),
)
def test_coverage_with_enough_steps(sizes, b, mode, strategy, seed):
    """Run long enough and every sample of every task appears."""
    samplers = ranks(sizes, b, 2, strategy=strategy, mode=mode, seed=seed, steps_per_epoch=400)
    seen = {p for batch in global_batches(samplers) for p in batch}
    assert seen == {(t, i) for t, n in enumerate(sizes) for i in range(n)}


def test_task_probabilities():
    sizes = [100, 400, 1600]
    p = lambda s, **kw: Sampler(sizes, 4, strategy=s, **kw).task_probabilities()  # noqa: E731
    assert p("proportional") == pytest.approx([100 / 2100, 400 / 2100, 1600 / 2100])
    assert p("balanced") == pytest.approx([1 / 3] * 3)
    assert p("temperature", temperature=2.0) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert p("temperature", temperature=1.0) == pytest.approx(p("proportional"))
    assert p("temperature", temperature=1e9) == pytest.approx(p("balanced"))
    # weights multiply a strategy's probabilities before normalising
    assert p("balanced", weights=[1, 2, 1]) == pytest.approx([0.25, 0.5, 0.25])
    assert p("proportional", weights=[4, 1, 1]) == pytest.approx([400 / 2400, 400 / 2400, 1600 / 2400])
    huge = Sampler([10**300, 1], 1, strategy="temperature", temperature=0.5).task_probabilities()
    assert all(math.isfinite(x) for x in huge) and sum(huge) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_task_proportions_per_rank(strategy, mode):
    """Long epochs: on every rank, the share of each task is within 6 sigma of task_probabilities()."""
    sizes, b, world, steps = [10, 40, 250], 3, 2, 3000
    samplers = ranks(sizes, b, world, strategy=strategy, mode=mode, seed=7, steps_per_epoch=steps)
    probs = samplers[0].task_probabilities()
    for s in samplers:
        counts = Counter(t for mb in s for t, _ in mb)
        # mode task: one draw per step; mode mixed: b independent draws per micro-batch
        draws = steps if mode == "task" else steps * b
        for t, p in enumerate(probs):
            share = counts[t] / (steps * b)
            assert abs(share - p) <= 6 * math.sqrt(p * (1 - p) / draws), (t, share, p)


def test_determinism_and_epoch_change():
    kw = dict(strategy="temperature", mode="mixed", seed=3)
    a = [list(s) for s in ranks([13, 50, 7], 4, 2, epoch=5, **kw)]
    b = [list(s) for s in ranks([13, 50, 7], 4, 2, epoch=5, **kw)]
    assert a == b
    s = ranks([13, 50, 7], 4, 2, epoch=5, **kw)[0]
    assert list(s) == list(s) == a[0]  # re-iterating the same epoch repeats it
    epochs = [tuple(map(tuple, list(ranks([13, 50, 7], 4, 2, epoch=e, **kw)[0]))) for e in range(6)]
    assert len(set(epochs)) == 6
    seeds = [tuple(map(tuple, list(ranks([13, 50, 7], 4, 2, **{**kw, "seed": sd})[0]))) for sd in range(6)]
    assert len(set(seeds)) == 6
    for mode in MODES:
        t = [list(ranks([30, 30], 2, 1, epoch=e, mode=mode)[0]) for e in (0, 1)]
        assert t[0] != t[1]


def consume(sampler, k):
    it = iter(sampler)
    return list(itertools.islice(it, k)), it


@given(sizes_st, st.integers(1, 4), st.integers(1, 3), st.integers(0, 3), opts_st, st.data())
def test_resume_same_world(sizes, b, world, epoch, opts, data):
    full = [list(s) for s in ranks(sizes, b, world, epoch, **opts)]
    k = data.draw(st.integers(0, len(full[0])), label="k")
    states = []
    for r, s in enumerate(ranks(sizes, b, world, epoch, **opts)):
        head, _ = consume(s, k)
        assert head == full[r][:k]
        states.append(json.loads(json.dumps(s.state_dict())))  # state is JSON-safe
        assert states[-1]["batches_done"] == k and states[-1]["samples_consumed"] == k * b * world
    for r in range(world):
        fresh = Sampler(sizes, b, num_replicas=world, rank=r, **{**opts, "seed": 0})  # seed from state
        fresh.set_epoch(epoch + 1)  # stale epoch is overwritten by the state
        fresh.load_state_dict(states[r])
        fresh.set_epoch(epoch)  # same epoch as restored: keeps the resume position
        assert len(fresh) == len(full[r])  # __len__ is the full epoch length
        assert fresh.state_dict()["batches_done"] == k
        assert list(fresh) == full[r][k:]
        assert list(fresh) == full[r]  # the resume offset applies to one pass only
        fresh.set_epoch(epoch + 1)
        assert list(fresh) == list(ranks(sizes, b, world, epoch + 1, **opts)[r])


@given(
    sizes_st,
    st.sampled_from([(1, 8), (2, 4), (4, 2), (8, 1), (3, 4), (6, 2), (12, 1)]),
    st.integers(0, 2),
    opts_st,
    st.data(),
)
def test_resume_with_new_world_same_global_batch(sizes, old, epoch, opts, data):
    """Checkpoint on (world, b), resume on (world', b') with world'*b' == world*b."""
    g = old[0] * old[1]
    new = data.draw(st.sampled_from([(w, g // w) for w in range(1, g + 1) if g % w == 0]), label="new")
    full = global_batches(ranks(sizes, old[1], old[0], epoch, **opts))
    k = data.draw(st.integers(0, len(full)), label="k")
    s = ranks(sizes, old[1], old[0], epoch, **opts)[0]
    consume(s, k)
    state = s.state_dict()
    resumed = ranks(sizes, new[1], new[0], 0, **opts)
    for r in resumed:
        r.load_state_dict(state)
    assert global_batches(resumed, full_epoch=False) == full[k:]


def test_resume_with_different_global_batch():
    sizes, opts = [40, 90], dict(mode="mixed", strategy="balanced", seed=2)
    s = ranks(sizes, 8, 2, 3, **opts)[0]  # G = 16, 8 steps per epoch
    state = s.state_dict()  # nothing consumed yet: any G may take over
    r = ranks(sizes, 8, 3, 0, **opts)[1]
    r.load_state_dict(state)
    assert list(r) == list(ranks(sizes, 8, 3, 3, **opts)[1])

    consume(s, 3)
    mid = s.state_dict()
    with pytest.raises(ValueError, match=r"used 16 .*uses 24 .*at 16 \(a num_replicas that divides 16\)"):
        ranks(sizes, 8, 3, **opts)[0].load_state_dict(mid)
    with pytest.raises(ValueError, match=r"mid-way \(3/8 .*uses 8 .*at 16 \(batch_size=4 with num_replicas=4\)"):
        ranks(sizes, 2, 4, **opts)[0].load_state_dict(mid)  # G = 8 != 16, hint keeps 16

    list(itertools.islice(iter(s), 10**6))
    end = s.state_dict()  # epoch finished: a new G is fine, next epoch starts fresh
    assert end["batches_done"] == len(s)
    r = ranks(sizes, 4, 1, 0, **opts)[0]
    r.load_state_dict(end)
    assert list(r) == []
    r.set_epoch(4)
    assert list(r) == list(ranks(sizes, 4, 1, 4, **opts)[0])


def test_state_dict_override_and_mismatch():
    s = Sampler([5, 9], 2, mode="mixed", seed=4)
    consume(s, 3)  # e.g. a DataLoader prefetched 3 but the loop trained on 1
    state = s.state_dict(batches_done=1)
    assert state["batches_done"] == 1 and state["samples_consumed"] == 2
    t = Sampler([5, 9], 2, mode="mixed")
    t.load_state_dict(state)
    assert list(t) == list(Sampler([5, 9], 2, mode="mixed", seed=4))[1:]
    old = {k: v for k, v in state.items() if k != "weights"}  # a checkpoint from before weights: all 1
    Sampler([5, 9], 2, mode="mixed").load_state_dict(old)
    with pytest.raises(ValueError, match="weights"):
        Sampler([5, 9], 2, mode="mixed", weights=[1, 3]).load_state_dict(old)
    for kw in ({"task_sizes": [5, 10]}, {"strategy": "proportional"}, {"mode": "task"}, {"weights": [1, 2]}):
        args = {"task_sizes": [5, 9], "mode": "mixed", **kw}
        other = Sampler(args.pop("task_sizes"), 2, **args)
        with pytest.raises(ValueError, match=list(kw)[0]):
            other.load_state_dict(state)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([], 4), {}, "task_sizes is empty"),
        (([3, 0, 2], 4), {}, r"task_sizes\[1\]"),
        (([3, -1], 4), {}, r"task_sizes\[1\]"),
        (([3, 2.5], 4), {}, "integer"),
        (([3], 0), {}, "batch_size"),
        (([3], 2.0), {}, "batch_size"),
        (([3], 2), {"num_replicas": 0}, "num_replicas"),
        (([3], 2), {"num_replicas": 2, "rank": 2}, "rank"),
        (([3], 2), {"rank": -1}, "rank"),
        (([3], 2), {"strategy": "uniform"}, "unknown strategy"),
        (([3], 2), {"mode": "both"}, "unknown mode"),
        (([3], 2), {"temperature": 0}, "temperature"),
        (([3], 2), {"temperature": -1.5}, "temperature"),
        (([3], 2), {"temperature": float("nan")}, "temperature"),
        (([3], 2), {"seed": -1}, "seed"),
        (([3, 4], 2), {"weights": [1.0]}, "weights must be 2"),
        (([3, 4], 2), {"weights": [1.0, 0.0]}, "weights"),
        (([3, 4], 2), {"weights": [1.0, float("inf")]}, "weights"),
        (([3], 2), {"steps_per_epoch": 0}, "steps_per_epoch"),
    ],
)
def test_argument_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampler(*args, **kwargs)
    with pytest.raises(ValueError, match="epoch"):
        Sampler([3], 1).set_epoch(-1)


def test_stage_sampler_reads_weights_by_task_name():
    """data.sampler.weights names tasks; the stage's sampler gets them in its own task order, and a task
    the stage does not train on (here "c") is simply absent."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ups.config import DataConfig
    from ups.training.train_sets import stage_sampler

    data = OmegaConf.structured(DataConfig)
    data.sampler.weights = {"b": 3.0, "c": 5.0}
    tasks = [SimpleNamespace(task=SimpleNamespace(name=n)) for n in ("b", "a")]
    train_set = SimpleNamespace(datasets=tasks, sizes=lambda: [10, 10])
    sampler = stage_sampler(train_set, data, batch_size=2, seed=0)
    assert sampler.weights == [3.0, 1.0]
    assert sampler.task_probabilities() == pytest.approx([0.75, 0.25])
