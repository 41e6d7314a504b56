"""Shared benchmark data, numpy only, identical for every framework.

Each loader takes an optional path and falls back to generated data of the same
shape when the file is absent (the data lives beside the repo in development and
CI, ``<repo>/../shared/data``, and is not on a user's machine). The environment
variable ``LANTERN_BENCH_DATA`` moves the default data directory.

- `load_text`     char-level text for the RNN and LSTM (`CharData`, batches `CharBatch`)
- `MnistLike`     deterministic MNIST-shaped images with learnable structure (`ImageBatch`)
- `load_trees`    SST dev trees as int32 arrays (`Tree`); `minibatch` cuts them into runs
- `embedding_table`  the fixed [5267, 300] word-embedding table for the TreeLSTM
- `poisson_batch`  collocation points of the PINN's 2-D Poisson problem (`PoissonBatch`),
                   `poisson_exact` its solution, `poisson_grid` the evaluation grid
- `model_data`    which of these a benchmark model trains on, step by step (`ModelData`)
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, List, NamedTuple, Optional, Union

import numpy as np

from benchmarks.spec import TEXT_MODELS, TREE_MODELS, TREES_PER_UPDATE, Config

REPO = Path(__file__).resolve().parents[1]
PathLike = Union[str, os.PathLike]

TEXT_LEN = 1135          # characters in graham.txt
N_TREES = 1101           # SST dev trees
N_WORDS = 5267           # rows of the embedding table
EMBED_DIM = 300
SEED = 20180901          # one seed for all generated data; streams are split by purpose


def data_dir() -> Path:
    """The shared data directory: $LANTERN_BENCH_DATA or <repo>/../shared/data."""
    env = os.environ.get("LANTERN_BENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _data_file(path: Optional[PathLike], *relative: str) -> Path:
    """The data file `path`, or `relative` under it when it is a directory (the
    harness's --data), or under `data_dir()` when no path is given."""
    path = Path(path) if path is not None else data_dir()
    return path.joinpath(*relative) if path.is_dir() else path


def _rng(*purpose: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *purpose])


# ----------------------------------------------------------------------------- text

class CharBatch(NamedTuple):
    """One char-level iteration: one-hot inputs, target ids and input ids."""
    xs: np.ndarray    # float32 [seq, batch, vocab], one-hot of ids
    ys: np.ndarray    # int32 [seq, batch], the next character
    ids: np.ndarray   # int32 [seq, batch], the input characters


class CharData:
    """A character stream, its sorted vocabulary and the batch schedule of the paper."""

    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.vocab = sorted(set(text))
        index = {ch: i for i, ch in enumerate(self.vocab)}
        self.data = np.array([index[ch] for ch in text], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.data)

    def offsets(self, seq: int = 20, batch: int = 20) -> Iterator[int]:
        """The offsets p of successive iterations: p starts at 0, p += seq, and p
        wraps to 0 when p + seq*batch + 1 > len(data)."""
        if seq * batch + 1 > len(self.data):
            raise ValueError(f"text of {len(self.data)} chars is too short for seq={seq} x batch={batch}")
        p = 0
        while True:
            yield p
            p += seq
            if p + seq * batch + 1 > len(self.data):
                p = 0

    def batch_at(self, p: int, seq: int = 20, batch: int = 20) -> CharBatch:
        """inputs[t, j] = data[p + j*seq + t], targets[t, j] = data[p + j*seq + t + 1]."""
        idx = p + np.arange(batch)[None, :] * seq + np.arange(seq)[:, None]   # [seq, batch]
        ids = self.data[idx]
        ys = self.data[idx + 1]
        xs = np.zeros((seq, batch, len(self.vocab)), dtype=np.float32)
        np.put_along_axis(xs, ids[..., None].astype(np.intp), 1.0, axis=2)
        return CharBatch(xs, ys.astype(np.int32), ids.astype(np.int32))

    def batches(self, seq: int = 20, batch: int = 20) -> Iterator[CharBatch]:
        """The infinite stream of iterations, in the paper's order."""
        for p in self.offsets(seq, batch):
            yield self.batch_at(p, seq, batch)

    def period(self, seq: int = 20, batch: int = 20) -> int:
        """Number of distinct iterations before the offset schedule repeats."""
        return (len(self.data) - seq * batch - 1) // seq + 1


def load_text(path: Optional[PathLike] = None) -> CharData:
    """graham.txt (default ``<data>/text/graham.txt``; `path` is the file or a
    data directory holding text/graham.txt), or 1135 seeded lowercase
    chars from a Markov chain in which each letter has a few likely successors:
    text with structure a char-RNN can learn, as it can learn English (uniform
    random letters could not be learnt below the loss of a random model)."""
    path = _data_file(path, "text", "graham.txt")
    if path.is_file():
        return CharData(path.read_text(), f"file:{path}")   # not stripped: the final newline is the 26th symbol
    rng = _rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    transitions = rng.dirichlet(np.full(len(letters), 0.1), size=len(letters))
    codes = [int(rng.integers(len(letters)))]
    for _ in range(TEXT_LEN - 1):
        codes.append(int(rng.choice(len(letters), p=transitions[codes[-1]])))
    return CharData("".join(letters[codes]), "generated")


# ----------------------------------------------------------------------------- images

class ImageBatch(NamedTuple):
    x: np.ndarray   # float32 [batch, 1, 28, 28], normalised like MNIST
    y: np.ndarray   # int32 [batch], 0..9


class MnistLike:
    """Deterministic MNIST-shaped data: 10 smooth class prototypes (a few Gaussian
    strokes each), each image a prototype shifted by up to 2 pixels, scaled and
    noised, then normalised with MNIST's mean/std. Batch i is generated on demand
    from its own seed, so an epoch (600 batches of 100) never sits in memory.
    There is no MNIST on this machine; a CNN learns these classes quickly, which
    is all the benchmark needs (its loss visibly decreases)."""

    source = "generated (MNIST-shaped, class prototypes + shift + noise)"

    def __init__(self, batch: int = 100, n_batches: int = 600, seed: int = 0):
        self.batch = batch
        self.n_batches = n_batches
        self.seed = seed
        rng = _rng(2, seed)
        yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
        protos = np.zeros((10, 28, 28), dtype=np.float32)
        for k in range(10):
            for _ in range(4):   # a stroke: a short line of blobs
                (y0, x0), (y1, x1) = rng.uniform(6, 22, size=(2, 2))
                for s in np.linspace(0, 1, 6):
                    cy, cx = y0 + s * (y1 - y0), x0 + s * (x1 - x0)
                    protos[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2))
            protos[k] /= protos[k].max()
        self.prototypes = protos

    def __len__(self) -> int:
        return self.n_batches

    def batch_at(self, i: int) -> ImageBatch:
        """Batch i of the epoch (i is taken modulo the epoch length)."""
        rng = _rng(3, self.seed, i % self.n_batches)
        n = self.batch
        y = rng.integers(0, 10, size=n).astype(np.int32)
        shifts = rng.integers(-2, 3, size=(n, 2))
        scale = rng.uniform(0.7, 1.3, size=(n, 1, 1)).astype(np.float32)
        img = np.stack([np.roll(self.prototypes[c], tuple(s), axis=(0, 1)) for c, s in zip(y, shifts)])
        img = np.clip(img * scale + 0.3 * rng.standard_normal((n, 28, 28), dtype=np.float32), 0.0, 1.0)
        x = ((img - 0.1307) / 0.3081).astype(np.float32)[:, None]
        return ImageBatch(np.ascontiguousarray(x), y)

    def batches(self) -> Iterator[ImageBatch]:
        i = 0
        while True:
            yield self.batch_at(i)
            i += 1


# ----------------------------------------------------------------------------- trees

class Tree(NamedTuple):
    """One SST tree as int32 arrays over its nodes; node 0 is the root.
    words[n] = -1 for inner nodes; lch[n] = rch[n] = -1 for leaves."""
    labels: np.ndarray
    words: np.ndarray
    lch: np.ndarray
    rch: np.ndarray


class TreeData(list):
    """A list of `Tree` with the `source` it was read from."""
    source: str = ""


def parse_trees(text: str) -> List[Tree]:
    """Parse array_tree.txt: line 1 the tree count, then 5 lines per tree
    (node count, labels, word ids, left children, right children)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    count = int(lines[0])
    trees = []
    for k in range(count):
        block = lines[1 + 5 * k: 6 + 5 * k]
        n = int(block[0])
        arrays = [np.array(ln.split(), dtype=np.int32) for ln in block[1:]]
        if any(a.shape != (n,) for a in arrays):
            raise ValueError(f"tree {k}: expected {n} entries on each line")
        trees.append(Tree(*arrays))
    return trees


def random_trees(count: int = N_TREES, seed: int = 0) -> List[Tree]:
    """Random binary trees shaped like the SST dev set: odd node counts with
    mean ~37 and at most 97, labels 0..4, word ids < 5267, node 0 the root and
    children numbered after their parent (pre-order)."""
    rng = _rng(4, seed)
    trees = []
    for _ in range(count):
        n_leaves = int(np.clip(np.round(rng.gamma(4.0, 19.3 / 4.0)), 2, 49))
        # Merge adjacent spans at random positions, as a parser would build it.
        spans: list = list(range(n_leaves))
        while len(spans) > 1:
            i = int(rng.integers(0, len(spans) - 1))
            spans[i: i + 2] = [(spans[i], spans[i + 1])]
        labels, words, lch, rch = [], [], [], []
        stack = [(spans[0], -1, 0)]          # (subtree, parent, 0 = left / 1 = right)
        while stack:
            sub, parent, side = stack.pop()
            me = len(labels)
            if parent >= 0:
                (lch if side == 0 else rch)[parent] = me
            labels.append(int(rng.integers(0, 5)))
            lch.append(-1)
            rch.append(-1)
            if isinstance(sub, tuple):
                words.append(-1)
                stack.append((sub[1], me, 1))
                stack.append((sub[0], me, 0))
            else:
                words.append(int(rng.integers(0, N_WORDS)))
        trees.append(Tree(*(np.array(a, dtype=np.int32) for a in (labels, words, lch, rch))))
    return trees


def load_trees(path: Optional[PathLike] = None) -> TreeData:
    """The SST dev trees (default ``<data>/sst/array_tree.txt``; `path` is the
    file or a data directory holding sst/array_tree.txt), or 1101 random trees
    of the same size distribution when the file is absent."""
    path = _data_file(path, "sst", "array_tree.txt")
    if path.is_file():
        out = TreeData(parse_trees(path.read_text()))
        out.source = f"file:{path}"
    else:
        out = TreeData(random_trees())
        out.source = "generated"
    return out


def minibatch(trees: List[Tree], k: int, size: int) -> List[Tree]:
    """Minibatch k of the endless sequence trees[0], trees[1], ..., trees[-1], trees[0], ...
    cut into runs of `size` (the minibatched TreeLSTM's step k)."""
    return [trees[(size * k + j) % len(trees)] for j in range(size)]


def embedding_table(rows: int = N_WORDS, dim: int = EMBED_DIM, seed: int = 0) -> np.ndarray:
    """The fixed word-embedding table (GloVe is not included): uniform(-0.05, 0.05)."""
    return _rng(5, seed).uniform(-0.05, 0.05, size=(rows, dim)).astype(np.float32)


def tree_levels(tree: Tree) -> np.ndarray:
    """Height of every node (0 for leaves), computed without recursion. Nodes of
    equal height are independent, which is what level-batched twins use."""
    n = len(tree.labels)
    order, stack = [], [0]
    while stack:
        i = stack.pop()
        order.append(i)
        if tree.lch[i] >= 0:
            stack += [int(tree.lch[i]), int(tree.rch[i])]
    if len(order) != n:
        raise ValueError(f"tree has {n} nodes but {len(order)} are reachable from node 0")
    height = np.zeros(n, dtype=np.int32)
    for i in reversed(order):
        if tree.lch[i] >= 0:
            height[i] = 1 + max(height[tree.lch[i]], height[tree.rch[i]])
    return height


# ----------------------------------------------------------------------------- PINN: 2-D Poisson

class PoissonBatch(NamedTuple):
    """One PINN training step's points on the unit square (float32):
    loss = mean((u_xx + u_yy - f)^2 over xi) + w * mean((u - g)^2 over xb),
    w = `Config.boundary_weight`."""
    xi: np.ndarray   # [n, 2] interior collocation points, uniform in (0, 1)^2
    f: np.ndarray    # [n, 1] the source term at xi
    xb: np.ndarray   # [m, 2] boundary points, m/4 uniform on each edge
    g: np.ndarray    # [m, 1] the boundary values at xb (the exact solution there)


def poisson_exact(x: np.ndarray) -> np.ndarray:
    """The known solution u = sin(pi x) sin(pi y) at points x [n, 2] (float64, [n, 1])."""
    x = np.asarray(x, dtype=np.float64)
    return (np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1]))[:, None]


def poisson_source(x: np.ndarray) -> np.ndarray:
    """f = u_xx + u_yy = -2 pi^2 sin(pi x) sin(pi y) (float64, [n, 1])."""
    return -2.0 * np.pi ** 2 * poisson_exact(x)


def poisson_batch(step: int, interior: int = 1024, boundary: int = 256) -> PoissonBatch:
    """The points of training step `step`: fresh uniform samples every step
    (seeded by the step, so every framework sees the same points)."""
    if boundary % 4:
        raise ValueError(f"boundary points must be a multiple of 4 (one quarter per edge), got {boundary}")
    rng = _rng(6, step)
    xi = rng.uniform(0.0, 1.0, size=(interior, 2))
    t = rng.uniform(0.0, 1.0, size=(4, boundary // 4))
    zeros, ones = np.zeros_like(t[0]), np.ones_like(t[0])
    xb = np.concatenate([np.stack(e, axis=1) for e in
                         [(t[0], zeros), (t[1], ones), (zeros, t[2]), (ones, t[3])]])
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    return PoissonBatch(f32(xi), f32(poisson_source(xi)), f32(xb), f32(poisson_exact(xb)))


def poisson_grid(n: int = 101) -> np.ndarray:
    """The n x n evaluation grid over [0, 1]^2 as float32 points [n*n, 2] (x varies fastest)."""
    g = np.linspace(0.0, 1.0, n)
    xx, yy = np.meshgrid(g, g)
    return np.ascontiguousarray(np.stack([xx.ravel(), yy.ravel()], axis=1), dtype=np.float32)


def relative_l2(u_pred: np.ndarray, x: np.ndarray) -> float:
    """||u_pred - u|| / ||u|| on points x against the exact solution."""
    u = poisson_exact(x)
    return float(np.linalg.norm(np.asarray(u_pred, np.float64).reshape(u.shape) - u) / np.linalg.norm(u))


# ----------------------------------------------------------------------------- one model's data

class ModelData(NamedTuple):
    """The training data of one benchmark model: step k trains on batch_at(k-th key)."""
    keys: Callable[[], Iterator[Hashable]]   # a fresh iterator over the steps' keys, in the benchmark's order
    batch_at: Callable[[Hashable], Any]      # key -> its batch
    cacheable: bool     # few distinct keys (text offsets, trees): their prepared batches are worth keeping
    source: str

    def batches(self) -> Iterator[Any]:
        """The step batches in order (an endless iterator)."""
        return (self.batch_at(k) for k in self.keys())


def model_data(cfg: Config, path: Optional[PathLike] = None) -> ModelData:
    """The data `cfg.model` trains on. `path` is its data file (the text of the text
    models, the trees of the tree models; default under `data_dir`); the images and
    the PINN's points are generated."""
    if cfg.model in TEXT_MODELS:
        text = load_text(path)
        return ModelData(lambda: text.offsets(cfg.seq, cfg.batch), lambda p: text.batch_at(p, cfg.seq, cfg.batch),
                         True, text.source)
    if cfg.model == "cnn":
        images = MnistLike(batch=cfg.batch)
        return ModelData(itertools.count, images.batch_at, False, images.source)
    if cfg.model == "pinn":
        return ModelData(itertools.count, lambda k: poisson_batch(k, cfg.batch, cfg.boundary), False,
                         "generated (uniform collocation points, seeded by the step)")
    if cfg.model not in TREE_MODELS:
        raise ValueError(f"no data for model {cfg.model!r}")
    trees = load_trees(path)
    per = TREES_PER_UPDATE.get(cfg.model)
    # step k: tree k, or minibatch k (its first tree, per * k mod len(trees), makes it repeat
    # after len(trees) steps as well)
    return ModelData(lambda: (k % len(trees) for k in itertools.count()),
                     (lambda k: trees[k]) if per is None else (lambda k: minibatch(trees, k, per)),
                     True, trees.source)
