"""The benchmark side: shared data and weights, twin parity across frameworks, and
a smoke run of the harness (`python -m benchmarks.run --smoke`) checked through
the results.json it writes. Frameworks that are not installed are skipped (the
harness itself skips them and says so)."""
from __future__ import annotations

import collections
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import data, spec, weights  # noqa: E402

torch = pytest.importorskip("torch")


# ----------------------------------------------------------------------------- data / weights

def test_char_batches_follow_the_paper_schedule():
    text = data.load_text()
    assert len(text.vocab) == 26 and text.vocab == sorted(text.vocab)
    it = text.batches()
    b0, b1 = next(it), next(it)
    assert b0.xs.shape == (20, 20, 26) and b0.xs.dtype == np.float32
    assert b0.ys.dtype == np.int32 and b0.ids.dtype == np.int32
    d = text.data
    assert b0.ids[3, 2] == d[0 + 2 * 20 + 3] and b0.ys[3, 2] == d[0 + 2 * 20 + 4]
    assert b1.ids[0, 0] == d[20]                            # p += seq
    assert (b0.xs.argmax(2) == b0.ids).all() and (b0.xs.sum(2) == 1).all()
    offsets = [p for p, _ in zip(text.offsets(), range(2 * text.period() + 1))]
    assert max(offsets) + 20 * 20 + 1 <= len(text) and offsets[text.period()] == 0


def test_fallback_data_has_the_same_shapes(tmp_path):
    text = data.load_text(tmp_path / "missing.txt")
    assert text.source == "generated" and len(text) == 1135 and len(text.vocab) == 26
    trees = data.load_trees(tmp_path / "missing.txt")
    assert trees.source == "generated" and len(trees) == 1101
    sizes = np.array([len(t.labels) for t in trees])
    assert (sizes % 2 == 1).all() and sizes.max() <= 97 and 30 < sizes.mean() < 45
    for t in trees[:50]:
        assert ((t.words >= 0) == (t.lch < 0)).all() and t.words.max() < 5267
        data.tree_levels(t)                                  # every node reachable from 0
    img = data.MnistLike().batch_at(3)
    assert img.x.shape == (100, 1, 28, 28) and img.x.dtype == np.float32 and img.y.max() <= 9
    assert np.array_equal(img.x, data.MnistLike().batch_at(603).x)   # epoch of 600, seeded


def test_a_data_directory_reads_its_files_as_the_harness_does(tmp_path):
    """`--data <dir>` (the harness's form) works for one model's command line
    too: the files under it, not generated data."""
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "graham.txt").write_text("abcab\n" * 300)
    text = data.load_text(tmp_path)
    assert text.source == f"file:{tmp_path / 'text' / 'graham.txt'}" and text.vocab == sorted("abc\n")
    assert data.load_trees(tmp_path).source == "generated"   # no sst/array_tree.txt there


def test_weights_are_deterministic_and_pytorch_shaped():
    for model in spec.MODELS:
        a, b = weights.init_weights(model), weights.init_weights(model)
        assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
        net = __import__("benchmarks.frameworks.torch_models", fromlist=["x"]).from_weights(
            model, a, spec.make_config(model))
        assert set(net.state_dict()) == set(a)
    tree, minibatched = weights.init_weights("treelstm"), weights.init_weights("treelstm_mb25")
    assert all(np.array_equal(tree[k], minibatched[k]) for k in tree)   # the same start


def test_minibatches_run_through_the_trees_in_order():
    trees = data.load_trees()
    first, last = data.minibatch(trees, 0, 25), data.minibatch(trees, len(trees) - 1, 25)
    assert first[3] is trees[3]
    assert last[0] is trees[(25 * (len(trees) - 1)) % len(trees)] and last[-1] is trees[-1]
    assert all(a is b for a, b in zip(data.minibatch(trees, len(trees), 25), first))   # the keys' period
    from benchmarks.frameworks.tree_schedule import level_schedule
    forest, one = level_schedule(first[:2]), [level_schedule(t) for t in first[:2]]
    assert len(forest.labels) == sum(len(s.labels) for s in one)
    assert len(forest.leaf_words) == sum(len(s.leaf_words) for s in one)
    assert len(forest.bounds) == max(len(s.bounds) for s in one)      # levels batch across trees


def _subtrees(s):
    """The multiset of a schedule's subtrees (hashes of word, label and children's)."""
    n_leaves = len(s.leaf_words)
    sig = [hash((int(w), int(y))) for w, y in zip(s.leaf_words, s.labels)]
    for i, (a, b) in enumerate(zip(s.left, s.right)):
        sig.append(hash((int(s.labels[n_leaves + i]), sig[a], sig[b])))
    return collections.Counter(sig)


@pytest.mark.parametrize("size", [25, 1])
def test_slack_schedule_moves_nodes_within_their_slack_only(size):
    """The schedule the level-batched lantern_stage step trains with: the same
    trees (every subtree with its words and labels), the same number of levels,
    every node after its children's levels, and fewer chunks than levels by
    height (a minibatch's 46 inner chunks -> 18, tests the cost is used)."""
    from benchmarks.frameworks.tree_schedule import (CHUNK_SIZES, TREE_CHUNK_SIZES, chunk_sizes,
                                                     level_schedule, slack_schedule)
    trees, sizes = data.load_trees(), (CHUNK_SIZES if size > 1 else TREE_CHUNK_SIZES)
    chunks = lambda s: sum(len(chunk_sizes(int(w), sizes)) for w in np.diff(s.bounds))   # noqa: E731
    before = after = 0
    for k in range(8):
        batch = data.minibatch(trees, k, size) if size > 1 else trees[k]
        by_height = level_schedule(batch)
        slack = slack_schedule(batch, sizes)
        assert len(slack.bounds) == len(by_height.bounds) and np.all(np.diff(slack.bounds) > 0)
        assert _subtrees(slack) == _subtrees(by_height)
        n_leaves = len(slack.leaf_words)
        for lo, hi in zip(slack.bounds[:-1], slack.bounds[1:]):
            assert slack.left[lo:hi].max() < n_leaves + lo and slack.right[lo:hi].max() < n_leaves + lo
        before, after = before + chunks(by_height), after + chunks(slack)
    assert after < (0.5 if size > 1 else 0.95) * before


# ----------------------------------------------------------------------------- twin parity

STEPS = {"rnn": 3, "lstm": 3, "cnn": 3, "treelstm": 2, "treelstm_mb25": 1, "transformer": 3, "pinn": 3}


@functools.cache
def _first_mb25_update():
    """(exact, allowed) per weight tensor of the minibatched TreeLSTM: the weights
    after its first update in float64, and how far a correct float32 implementation
    may be from them.

    That update is Adagrad's first, w - lr * g / (|g| + eps): +-lr wherever |g| is well
    above eps, whatever g's size, and in float32 off by the rounding of lr, of the
    update and of the new w (2 ulps of |w| + lr). g is the mean of 25 trees'
    gradients, sums over the minibatch's n nodes, so a float32 g is off by at most
    noise = n u sum_t |g_t| (u the float32 unit round-off: n u times the terms'
    magnitudes bounds a float32 sum of n terms in any order; the trees' gradients
    stand in for the nodes' terms, and float32 PyTorch is measured within
    17 u sum_t |g_t|). The update's slope lr eps / (|g| + eps)^2, at its largest
    within noise of g, turns that noise into `allowed`, at most 2 lr (a flipped
    sign). For 0.15% of the weights that is more than lr / 1000; the others are
    checked to about their rounding."""
    from benchmarks.frameworks.torch_models import from_weights, prepare
    cfg = spec.make_config("treelstm_mb25")
    w0 = weights.init_weights(cfg)
    trees = next(data.model_data(cfg).batches())
    net = from_weights("treelstm_mb25", w0, cfg).double()
    g = {k: np.zeros(w.shape) for k, w in w0.items()}
    magnitude = {k: np.zeros(w.shape) for k, w in w0.items()}
    for tree in prepare("treelstm_mb25", trees):
        net.zero_grad()
        (net(tree) / len(trees)).backward()
        for k, p in net.named_parameters():
            g[k] += p.grad.numpy()
            magnitude[k] += np.abs(p.grad.numpy())
    n, u, lr, eps = sum(len(t.labels) for t in trees), np.finfo(np.float32).eps / 2, cfg.lr, cfg.eps
    exact, allowed = {}, {}
    for k, w in w0.items():
        noise = n * u * magnitude[k]
        slope = lr * eps / (np.maximum(np.abs(g[k]) - noise, 0.0) + eps) ** 2
        exact[k] = w - lr * g[k] / (np.abs(g[k]) + eps)
        allowed[k] = np.minimum(2 * lr, slope * noise) + 4 * u * (np.abs(w) + lr)
    return exact, allowed


def assert_first_mb25_update_within_round_off(got):
    exact, allowed = _first_mb25_update()
    for k in exact:
        err = np.abs(got[k] - exact[k])
        assert (err <= allowed[k]).all(), (k, float((err / allowed[k]).max()))


def _losses(framework, model, n):
    from benchmarks.frameworks import Framework
    fw = Framework(framework)
    ok, why = fw.available()
    if not ok:
        pytest.skip(why)
    cfg = spec.make_config(model)
    trainer = fw.build(model, weights.init_weights(cfg), cfg)
    batches = data.model_data(cfg).batches()
    prep = getattr(trainer, "prepare", lambda b: b)
    out = [trainer.step(prep(next(batches))) for _ in range(n)]
    return np.array(out), trainer


@pytest.mark.parametrize("peer", ["tf", "jax"])
@pytest.mark.parametrize("model", spec.MODELS)
def test_twins_agree_with_pytorch_on_the_first_losses(peer, model):
    """Same weights, same data: the first training losses agree to 1e-4 (relative),
    and the weights after those steps agree closely, so the twins are the same
    models. (Adagrad's first update is lr * g / |g| per weight, which turns the
    round-off of near-zero gradients into visible weight differences, hence the
    looser weight tolerance; Adam's first updates are lr * g / (|g| + eps) as well,
    and move every weight of the transformer by about lr: looser still. The
    minibatched TreeLSTM's one update is checked per weight against float64,
    see `_first_mb25_update`.)"""
    ref, ref_trainer = _losses("torch", model, STEPS[model])
    got, trainer = _losses(peer, model, STEPS[model])
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    if model == "treelstm_mb25":
        assert_first_mb25_update_within_round_off(trainer.weights())
        return
    tol = 5e-2 if spec.make_config(model).optimizer == "adam" else 1e-2
    assert weights.max_rel_diff(trainer.weights(), ref_trainer.weights()) < tol


def test_lantern_minibatched_treelstm_agrees_with_pytorch():
    """lantern_stage's two minibatched TreeLSTMs - the level-batched forest (the
    harness's) and the batch-1 recursion under `train_step(accumulate=25)` - do
    one update per minibatch of 25 trees with their mean gradient, as PyTorch's
    one backward through the mean loss: the first update as float64's up to
    float32 round-off, and the losses of three minibatches as PyTorch's (the
    third after the second update, whose Adagrad state starts from the first's:
    PyTorch's started afresh moves that loss by 2e-3)."""
    from benchmarks.models import treelstm_mb25
    ref, _ = _losses("torch", "treelstm_mb25", 3)
    cfg = spec.make_config("treelstm_mb25")
    levels = treelstm_mb25.build(weights.init_weights(cfg), cfg)
    accumulating = treelstm_mb25.build_accumulating(weights.init_weights(cfg), cfg)
    for trainer in (levels, accumulating):
        batches = data.model_data(cfg).batches()
        got = [trainer.step(trainer.prepare(next(batches)))]
        assert_first_mb25_update_within_round_off(trainer.weights())
        if trainer is levels:
            # each chunk's forward starts its state-gradient rows at zero: what
            # an earlier update left in them (here NaN) is never read
            levels.dh[:], levels.dc[:] = np.nan, np.nan
        got += [trainer.step(trainer.prepare(next(batches))) for _ in range(2)]
        np.testing.assert_allclose(got, ref, rtol=1e-4)
        with pytest.raises(ValueError, match="a minibatch has 25 trees"):
            trainer.step(data.load_trees()[:3])
    assert accumulating.train_step.pending == 0
    # the weight gradients the level-batched step accumulates in are emptied by
    # the update: the next minibatch starts from zero
    assert not any(g.any() for g in levels.grads)


def _train_variants(variants, model, steps):
    """(losses, weights) of each formulation (label -> build) trained `steps`
    steps from the same weights on the same batches."""
    cfg = spec.make_config(model)
    runs = []
    for build in variants.values():
        trainer = build(model, weights.init_weights(cfg), cfg)
        batches = data.model_data(cfg).batches()
        runs.append(([trainer.step(trainer.prepare(next(batches))) for _ in range(steps)], trainer.weights()))
    return runs


def test_lantern_level_batched_single_trees_train_as_the_recursion():
    """The batch-1 TreeLSTM's two lantern_stage formulations, which the harness
    times side by side: the recursion over the nodes and the level-batched
    forest of one tree (chunks of 8, 4, 2 and 1 rows) give the same losses and
    weights over 30 updates, up to float32 summation order."""
    from benchmarks.frameworks import lantern
    from benchmarks.models import treelstm_mb25
    cfg = spec.make_config("treelstm")
    variants = lantern.variants("treelstm")
    assert list(variants) == ["recursive", "level-batched"] and lantern.variants("treelstm_mb25") == {}
    (rec_losses, rec_w), (lev_losses, lev_w) = _train_variants(variants, "treelstm", 30)
    # two float32 summation orders of one model, as two frameworks' twins are:
    # the tolerances of test_twins_agree_with_pytorch_on_the_first_losses
    np.testing.assert_allclose(lev_losses, rec_losses, rtol=1e-4)
    assert weights.max_rel_diff(lev_w, rec_w) < 1e-2
    with pytest.raises(ValueError, match="one tree per update"):
        treelstm_mb25.build_per_tree(weights.init_weights(cfg), spec.make_config("treelstm_mb25"))


def test_nn_lstm_variant_is_the_same_model_as_the_lstmcell_loop():
    """PyTorch's two LSTM formulations (the harness times both and keeps the
    faster): same weights, same data, the same losses and weights after training."""
    from benchmarks.frameworks import torch_eager
    cfg = spec.make_config("lstm")
    variants = torch_eager.variants("lstm")
    assert list(variants) == ["LSTMCell loop", "nn.LSTM"] and torch_eager.variants("rnn") == {}
    (cell_losses, cell_w), (fused_losses, fused_w) = _train_variants(variants, "lstm", 3)
    np.testing.assert_allclose(fused_losses, cell_losses, rtol=1e-5)
    assert set(fused_w) == set(cell_w) == set(weights.init_weights(cfg))
    assert weights.max_rel_diff(fused_w, cell_w) < 1e-3


def test_tf_slack_levels_variant_is_the_same_model():
    """TF's minibatched TreeLSTM over lantern_stage's schedule (the harness times
    it beside the levels by height and keeps the faster) is the same model: its
    first update as float64's up to round-off, its losses as PyTorch's."""
    from benchmarks.frameworks import Framework, tf_function
    ok, why = Framework("tf").available()
    if not ok:
        pytest.skip(why)
    assert list(tf_function.variants("treelstm_mb25")) == ["height levels", "slack levels"]
    assert tf_function.variants("treelstm_mb25", jit_compile=True) == {} == tf_function.variants("treelstm")
    ref, _ = _losses("torch", "treelstm_mb25", 2)
    cfg = spec.make_config("treelstm_mb25")
    trainer = tf_function.build_on_slack_levels("treelstm_mb25", weights.init_weights(cfg), cfg)
    batches = data.model_data(cfg).batches()
    got = [trainer.step(trainer.prepare(next(batches)))]
    assert_first_mb25_update_within_round_off(trainer.weights())
    got.append(trainer.step(trainer.prepare(next(batches))))
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_step_flops_follow_the_layer_shapes():
    """The floor's FLOP counts: 2 per multiply-add of each product, forward and
    backward; the CNN's ~260 MFLOP and a tree's count scale with its nodes."""
    from benchmarks import flops
    cnn = flops.step_flops("cnn", spec.make_config("cnn"))
    assert cnn == 2 * (2 * 57600 * 25 * 10 + 3 * 6400 * 250 * 20 + 3 * 100 * 320 * 50 + 3 * 100 * 50 * 10)
    trees = data.load_trees()
    cfg = spec.make_config("treelstm")
    one, two = flops.step_flops("treelstm", cfg, trees[:1]), flops.step_flops("treelstm", cfg, trees[:2])
    t0, t1 = trees[0], trees[1]
    nodes = lambda t: (int((t.lch < 0).sum()), int((t.lch >= 0).sum()))   # noqa: E731
    per = lambda leaves, inner: leaves * 4 * 450 * 300 + inner * 6 * 750 * 300 + (leaves + inner) * 6 * 5 * 150  # noqa: E731
    assert one == per(*nodes(t0)) and two == (per(*nodes(t0)) + per(*nodes(t1))) / 2
    assert flops.step_flops("no such model", cfg) is None
    mb = data.minibatch(trees, 0, 25)
    assert flops.step_flops("treelstm_mb25", spec.make_config("treelstm_mb25"), [mb]) == sum(
        per(*nodes(t)) for t in mb)


# ----------------------------------------------------------------------------- harness smoke

def test_ab_steps_worker_runs_the_harness_loop_of_its_tree():
    """`benchmarks.ab_steps` trains in a subprocess with the tree's own
    `benchmarks.worker.train_timed`: one time per timed step, warm-up left out."""
    from benchmarks import ab_steps
    times = ab_steps.run_worker(str(REPO), [("rnn", 3, 2)], None)
    assert list(times) == ["rnn"] and len(times["rnn"]) == 3 and all(t > 0 for t in times["rnn"])


@pytest.mark.slow
def test_smoke_run_writes_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "single thread" in proc.stderr
    res = json.loads((out / "results.json").read_text())
    meta = res["meta"]
    for key in ("date", "cpu", "versions", "thread_env", "iters", "tolerances"):
        assert key in meta
    assert meta["thread_env"]["OMP_NUM_THREADS"] == "1" and meta["versions"]["torch"].startswith("2.13")
    assert set(res["summary"]) == set(spec.MODELS)
    ran = {r["framework"] for r in res["runs"]}
    assert "torch" in ran and ran.isdisjoint(res["unavailable"])
    for model, s in res["summary"].items():
        rows = s["frameworks"]
        assert rows["torch"]["status"] == "ok", rows["torch"]
        assert rows["torch"]["per_unit_median"] > 0 and np.isfinite(rows["torch"]["final_loss"])
        for fw, row in rows.items():
            if fw == "lantern":          # lantern_stage's own models are tested by their authors
                assert row["status"] in ("ok", "unsupported", "error")
                continue
            assert row["status"] in ("ok", "unsupported"), (model, fw, row)
            if row["status"] == "ok" and "first_loss_rel_diff" in row:
                assert row["first_loss_rel_diff"] < 1e-4, (model, fw, row)
    for png in ["figure6.png"] + [f"loss_{m}.png" for m in spec.MODELS]:
        assert (out / png).stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert "| framework |" in md and "| of floor |" in md and "OpenBLAS kernel" in md
    assert meta["machine"]["sgemm_peak_gflops"] > 0 and meta["machine"]["cpu"]["model"]
    for model, s in res["summary"].items():
        assert s["step_mflop"] > 0 and s["floor_ms"] > 0, model
    assert set(res["summary"]["lstm"]["frameworks"]["torch"]["variants"]) == {"LSTMCell loop", "nn.LSTM"}
    assert "## treelstm_mb25" in md
