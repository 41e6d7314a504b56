"""The `lantern` command.

    lantern compile model.py [-o OUT] [--name NAME]      an importable package OUT/NAME
    lantern compile model.py --emit-ir | --emit-cpp      print the IR or the C++ only
    lantern compile model.py --standalone                also OUT/NAME/standalone: C++ + Makefile
    lantern run model.py [--steps N] [--data PATH]       compile and train, with a progress bar
    lantern run model.py --procs N [--hostfile F]        the same, data-parallel on N MPI processes

A model file exports entry points with `lt.export` (see `lantern_stage.export`).
Training data for `run` (and the standalone program's data/ folder) comes
from the model file's `batches(data_path)`, if it defines one: an iterable of
input tuples of the training entry point, given --data (or None).  Without
it, batches are generated from the entry point's signature.  Under MPI
(`--procs`, which runs mpirun itself) every rank runs this file and trains
the step data-parallel on its shard of the batches (`rank_batches`).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import traceback

import numpy as np

from . import __version__, distributed
from .build import CompileError
from .export import Bundle, Entry, ModelError, describe_exception, run_model_file
from .package import OutputError, OutputFolder, loss_problem, standalone_problem, write_package, write_standalone
from .runtime import save_arrays
from .tree import tree_flatten

EXIT_ERROR = 1  # a run failed, or an internal error
EXIT_USAGE = 2  # the command line: bad options, a missing model file
EXIT_MODEL = 3  # the model file: it does not run, exports nothing, cannot be staged
EXIT_COMPILER = 4  # the C++ compiler is missing or rejected the code
EXIT_OUTPUT = 5  # the output folder cannot be written

EXIT_CODES = f"""exit status:
  0  success
  {EXIT_ERROR}  a training run failed (or an internal error)
  {EXIT_USAGE}  bad command line, model file not found
  {EXIT_MODEL}  the model file fails: syntax error, exception, no exported entry point,
     missing or wrong annotations, staging error
  {EXIT_COMPILER}  the C++ compiler is missing (CXX, g++) or the compilation failed
  {EXIT_OUTPUT}  the output folder cannot be written"""

GENERATED_BATCHES = 8  # generated data: this many random batches, cycled


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ the model
def load_bundle(path: str) -> tuple[Bundle, dict]:
    if not os.path.exists(path):
        raise CliError(f"model file {path} not found", EXIT_USAGE)
    if os.path.isdir(path):
        raise CliError(f"{path} is a folder, not a model file", EXIT_USAGE)
    with contextlib.redirect_stdout(sys.stderr):  # the model's prints stay out of --emit-cpp
        exports, namespace = run_model_file(path)
        if distributed.world_size() > 1:  # under mpirun: every training step averages over the ranks
            for e in exports:
                if e.is_train_step and not e.obj.data_parallel:
                    e.obj._configure(e.obj.accumulate, True)
        return Bundle(exports, namespace, os.path.abspath(path)), namespace


def training_entry(bundle: Bundle, name: str | None) -> Entry:
    """--entry, or the one `lt.train_step`, or the one entry returning a float32 loss."""
    if name is not None:
        try:
            entry = bundle.entry(name)
        except KeyError:
            known = ", ".join(e.name for e in bundle.entries)
            raise CliError(f"no entry point named {name!r}; the model exports {known}", EXIT_USAGE) from None
        problem = loss_problem(entry)
        if problem:
            raise CliError(f"cannot train: {problem}", EXIT_MODEL)
        return entry
    steps = [e for e in bundle.entries if e.kind == "train_step"]
    if not steps:
        steps = [e for e in bundle.entries if loss_problem(e) is None]
    if len(steps) == 1:
        return steps[0]
    if not steps:
        raise CliError("the model exports no training entry point (an lt.train_step, or a function returning "
                       "a float32 loss first)", EXIT_MODEL)
    raise CliError(f"the model exports several training entry points ({', '.join(e.name for e in steps)}); "
                   "choose one with --entry", EXIT_USAGE)


# ------------------------------------------------------------------ data
def generated_batches(entry: Entry, seed: int):
    """Random batches fitting `entry`'s signature: normal floats, ints inside
    the ranges the model indexes with (else 0..9), random bools."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(GENERATED_BATCHES):
        batch = []
        for (spec, _), ranges in zip(entry.program.inputs, entry.index_ranges):
            if spec.kind == "intarray":
                raise CliError(f"entry point {entry.name!r} takes an IntArray input {spec.name!r}, which cannot be "
                               "generated: define batches(data_path) in the model file", EXIT_MODEL)
            shape = tuple(spec.shape)
            if spec.dtype == "float32":
                batch.append(rng.standard_normal(shape).astype(np.float32))
            elif spec.dtype == "bool":
                batch.append(rng.random(shape) < 0.5)
            else:
                a = rng.integers(0, 10, shape).astype(np.int32)
                flat = a.reshape(-1)
                for r in ranges:
                    flat[r["offset"]:r["offset"] + r["size"]] = rng.integers(0, r["bound"], r["size"])
                batch.append(a)
        pool.append(entry.unflatten_batch(batch))
    return itertools.cycle(pool), f"generated ({GENERATED_BATCHES} random batches, cycled)"


def model_batches(namespace: dict, entry: Entry, data: str | None, path: str, seed: int):
    """(iterator of input tuples, description) by the data convention."""
    source = namespace.get("batches")
    if source is None:
        if data is not None:
            raise CliError(f"--data was given but {path} defines no batches(data_path) to read it", EXIT_USAGE)
        return generated_batches(entry, seed)
    if not callable(source):
        raise CliError(f"{path}: `batches` must be a function batches(data_path)", EXIT_MODEL)
    names = [n for n, _ in entry.program.arguments]

    def epochs():
        epoch = 0
        while True:
            try:
                produced = False
                for batch in source(data):
                    produced = True
                    if isinstance(batch, dict):
                        batch = tuple(batch[n] for n in names)
                    elif not isinstance(batch, (tuple, list)):
                        batch = (batch,)
                    yield tuple(batch)
            except CliError:
                raise
            except Exception as e:
                raise CliError(f"batches({data!r}) raised {describe_exception(e, path)}", EXIT_MODEL) from e
            if not produced:
                raise CliError(f"batches({data!r}) in {path} yielded no batch", EXIT_MODEL)
            epoch += 1

    return epochs(), f"batches({data!r}) from {os.path.basename(path)}"


def rank_batches(batches, entry: Entry, rank: int, world: int):
    """This rank's shard of every batch.  A batch whose tensor inputs are all
    `world` times the entry's leading dimension (batch B for a step staged at
    B/N) is split: rank r takes rows [r*B/N, (r+1)*B/N) of each.  Any other
    batch (one tree, or a batch already of the staged size) is dealt whole:
    batch i goes to rank i % world."""
    specs = [s for s, _ in entry.program.inputs]
    for i, batch in enumerate(batches):
        arrays = [np.asarray(a) for a in batch]
        tensors = [(s, a) for s, a in zip(specs, arrays) if s.kind == "tensor" and s.shape]
        if tensors and len(arrays) == len(specs) and all(
                a.ndim == len(s.shape) and a.shape[0] == world * s.shape[0] and a.shape[1:] == tuple(s.shape[1:])
                for s, a in tensors):
            yield tuple(distributed.split(a) if s.kind == "tensor" and s.shape else a for s, a in zip(specs, arrays))
        elif i % world == rank:
            yield batch


# ------------------------------------------------------------------ commands
def default_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    return name if name and not name[0].isdigit() else "_" + name


def cmd_compile(args) -> int:
    if (args.data is not None or args.steps is not None or args.entry is not None) and not args.standalone:
        raise CliError("--data, --steps and --entry apply to --standalone (the program and its data)", EXIT_USAGE)
    if args.standalone and args.steps == 0:
        raise CliError("--steps: the standalone program needs at least one batch", EXIT_USAGE)
    name = args.name or default_name(args.model)
    if not name.isidentifier():
        raise CliError(f"--name {name!r} is not a Python identifier (it is imported as `import {name}`)", EXIT_USAGE)
    bundle, namespace = load_bundle(args.model)
    if args.emit_ir:
        sys.stdout.write(bundle.format_ir())
        return 0
    if args.emit_cpp:
        sys.stdout.write(bundle.cpp_source)
        return 0
    entry = training_entry(bundle, args.entry) if args.standalone else None
    if entry is not None and standalone_problem(entry):
        raise CliError(f"no standalone program: {standalone_problem(entry)}", EXIT_MODEL)
    folder = OutputFolder(args.out, name)
    try:
        start = time.perf_counter()
        library = bundle.build()
        built = time.perf_counter() - start
        write_package(bundle, folder.path, name, library)
        if entry is not None:
            steps = 10 if args.steps is None else args.steps
            it, _ = model_batches(namespace, entry, args.data, args.model, args.seed)
            write_standalone(bundle, folder.path, name, entry, list(itertools.islice(it, steps)))
        final = folder.commit()
    except BaseException:
        folder.discard()
        raise
    out = os.path.abspath(args.out)
    print(f"compiled {args.model} -> {final}/ in {built:.1f} s")
    for e in bundle.entries:
        print(f"  {e.signature()}")
    n_params = sum(1 for k in bundle.state if k.startswith("model."))
    print(f"  state: {len(bundle.state)} arrays ({n_params} model parameters), "
          f"{sum(a.nbytes for a in bundle.state.values()) / 1e3:.1f} kB in state.npz")
    print(f"use it: PYTHONPATH={out} python -c 'import {name}'")
    if entry is not None:
        print(f"standalone program training {entry.name}: make -C {final}/standalone run")
    return 0


def mpirun_command(args, argv: list[str]) -> list[str]:
    """The mpirun line running this same `lantern run` on --procs ranks."""
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    mpirun = here if os.access(here, os.X_OK) else shutil.which("mpirun")
    if mpirun is None:
        raise CliError("--procs needs MPI's mpirun: install the MPI extra (pip install 'lantern_stage[mpi]', "
                       "which brings Open MPI and mpi4py)", EXIT_USAGE)
    cmd = [mpirun]
    if args.procs is not None:
        cmd += ["-n", str(args.procs)]
    if args.hostfile is not None:
        if not os.path.isfile(args.hostfile):
            raise CliError(f"--hostfile {args.hostfile} not found", EXIT_USAGE)
        cmd += ["--hostfile", args.hostfile]
    elif args.procs is not None and args.procs > len(os.sched_getaffinity(0)):
        cmd.append("--oversubscribe")  # more ranks than cores: Open MPI refuses without it
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")  # containers and CI run as root
    rest, skip = [], False
    for a in argv:  # the same command line without the launcher's options
        if skip:
            skip = False
        elif a in ("--procs", "--hostfile"):
            skip = True
        elif not a.startswith(("--procs=", "--hostfile=")):
            rest.append(a)
    return cmd + [sys.executable, "-m", "lantern_stage.cli", *rest]


def cmd_run(args) -> int:
    if (args.procs is not None or args.hostfile is not None) and not distributed.launched_by_mpi():
        if args.procs is not None and args.procs < 1:
            raise CliError("--procs must be >= 1", EXIT_USAGE)
        cmd = mpirun_command(args, args.argv)
        return subprocess.run(cmd).returncode
    rank, world = distributed.rank(), distributed.world_size()
    lead = rank == 0  # the one rank that prints and writes files
    bundle, namespace = load_bundle(args.model)
    entry = training_entry(bundle, args.entry)
    if args.load and lead:  # other ranks receive rank 0's state when the step is loaded
        load_state(bundle, args.load)
    start = time.perf_counter()
    step = bundle.load()[entry.name]
    compiled = time.perf_counter() - start
    batches, source = model_batches(namespace, entry, args.data, args.model, args.seed + rank)
    if world > 1:
        batches = rank_batches(batches, entry, rank, world)
        source += f"; rank {rank} of {world} takes its shard"
    if lead:
        print(f"{entry.signature()}: compiled in {compiled:.1f} s; data: {source}", flush=True)

    from tqdm import tqdm

    losses = []
    bar = tqdm(total=args.steps, desc=entry.name, unit="step", disable=args.quiet or not lead, file=sys.stderr)
    start = time.perf_counter()
    for i in range(args.steps):
        batch = next(batches)
        try:
            out = step(*batch)
        except (TypeError, ValueError, IndexError) as e:
            raise CliError(f"step {i}: the batch does not fit {entry.signature()}: {e}", EXIT_MODEL) from e
        except Exception as e:
            raise CliError(f"step {i}: {type(e).__name__}: {e}", EXIT_ERROR) from e
        loss = float(np.asarray(tree_flatten(out)[0][0]).reshape(-1)[0])
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    bar.close()
    elapsed = time.perf_counter() - start
    if lead:
        print(summary(entry.name, losses, elapsed) + (f" (rank 0's shard; {world} ranks)" if world > 1 else ""))
    if args.save and lead:
        scratch = {id(a) for e in bundle.entries if e.kind == "train_step" for a in e.export.obj.scratch_arrays}
        state = {k: a for k, a in bundle.state.items() if id(a) not in scratch}
        try:
            save_arrays(args.save, state)  # atomically (temp file, fsync, rename), at exactly that path
        except OSError as e:
            raise CliError(f"cannot write {args.save}: {e.strerror or e}", EXIT_OUTPUT) from None
        print(f"saved the trained state ({len(state)} arrays) to {args.save}")
    distributed.barrier()  # every rank ends once the checkpoint is complete
    return 0


def load_state(bundle: Bundle, path: str) -> None:
    """Copy a state saved by `lantern run --save` (or TrainStep.save) into the bundle's live arrays."""
    from .train import load

    try:
        state = load(path)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read --load {path}: {e}", EXIT_USAGE) from None
    for k, a in state.items():
        if k not in bundle.state:
            raise CliError(f"--load {path}: {k!r} is not part of this model's state "
                           f"({', '.join(bundle.state)})", EXIT_USAGE)
        if a.shape != bundle.state[k].shape:
            raise CliError(f"--load {path}: {k!r} has shape {a.shape}, the model's is {bundle.state[k].shape}",
                           EXIT_USAGE)
    for k, a in state.items():
        np.copyto(bundle.state[k], a, casting="same_kind")
    print(f"loaded {len(state)} arrays from {path}", flush=True)


def summary(name: str, losses: list[float], seconds: float) -> str:
    n = len(losses)
    if not n:
        return f"{name}: 0 steps"
    rate = n / seconds if seconds > 0 else math.inf
    tail = losses[-max(1, n // 10):]
    lines = [f"{name}: {n} steps in {seconds:.2f} s ({rate:.1f} steps/s, {seconds / n * 1e3:.2f} ms/step)",
             f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}, mean of the last {len(tail)} "
             f"{sum(tail) / len(tail):.4f}, lowest {min(losses):.4f}"]
    if any(not math.isfinite(x) for x in losses):
        first = next(i for i, x in enumerate(losses) if not math.isfinite(x))
        lines.append(f"warning: the loss is not finite from step {first} on (a learning rate too high?)")
    return "\n".join(lines)


# ------------------------------------------------------------------ the command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lantern",
        description=_wrap("Compile lantern_stage models (Python files exporting entry points with lt.export) "
                          "into importable packages or standalone C++ programs, or train them."),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lantern (lantern_stage) {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the Python traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", metavar="MODEL.py", help="the model file: a Python script calling lt.export")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, print the Python traceback too")

    def data_options(p, when: str) -> None:
        p.add_argument("--entry", metavar="NAME", default=None,
                       help=f"{when}the entry point to train (default: the model's one lt.train_step)")
        p.add_argument("--seed", type=int, default=0,
                       help=f"{when}seed of the generated data when the model defines no batches() (default 0)")

    c = sub.add_parser(
        "compile", parents=[common], help="compile a model into an importable package (or print its IR / C++)",
        description=_wrap(
            "Run MODEL.py, collect its exported entry points and write OUT/NAME/: the generated C++ "
            "(module.cpp), the built library (module.so), state.npz (initial parameters and optimizer state), "
            "manifest.json (entry points and signatures) and __init__.py.  With OUT on sys.path, `import NAME` "
            "gives the entry points as functions on numpy arrays and the state as `NAME.params`, "
            "`NAME.state_dict()`; it needs only numpy and cffi.  An existing OUT/NAME written by lantern compile "
            "is replaced."),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("-o", "--out", metavar="OUT", default="lantern_out",
                   help="folder to write the package folder into (default: lantern_out)")
    c.add_argument("--name", metavar="NAME", default=None,
                   help="package name, a Python identifier (default: the model file's name)")
    emit = c.add_mutually_exclusive_group()
    emit.add_argument("--emit-ir", action="store_true", help="print the staged CPS IR of every entry point; build nothing")
    emit.add_argument("--emit-cpp", action="store_true", help="print the generated C++ module; build nothing")
    emit.add_argument("--standalone", action="store_true",
                      help="also write OUT/NAME/standalone/: a C++ program and a Makefile that train the training "
                           "entry point without Python (reads .npy batches, writes losses and trained weights)")
    c.add_argument("--data", metavar="PATH", default=None,
                   help="with --standalone: passed to the model's batches(data_path) to fill standalone/data/")
    c.add_argument("--steps", type=int, metavar="N", default=None,
                   help="with --standalone: how many batches to write to standalone/data/ (default 10)")
    data_options(c, "with --standalone: ")
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser(
        "run", parents=[common], help="compile a model and train its training entry point, with a progress bar",
        description=_wrap(
            "Run MODEL.py, compile its exported entry points and call the training entry point (an "
            "lt.train_step, or --entry) --steps times, showing steps/s and the loss, then a summary.  Batches "
            "come from the model file's batches(data_path) -- called with --data, or None, and iterated again "
            "for each epoch -- each an input tuple (or a dict by input name) of the entry point.  When the model "
            "defines no batches(), random batches are generated from the entry point's signature, with index "
            "inputs inside the ranges the model indexes with."),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_options(r, "")
    r.add_argument("--steps", type=int, metavar="N", default=100, help="training steps (default 100)")
    r.add_argument("--data", metavar="PATH", default=None, help="passed to the model's batches(data_path)")
    r.add_argument("--save", metavar="FILE.npz", default=None,
                   help="write the trained state to an .npz file (rank 0 only, atomically)")
    r.add_argument("--load", metavar="FILE.npz", default=None,
                   help="start from a state written by --save (at any number of processes)")
    r.add_argument("--procs", type=int, metavar="N", default=None,
                   help="train data-parallel on N MPI processes (runs mpirun -n N; --oversubscribe when N exceeds "
                        "the cores): every process trains on its shard of each batch and the gradients are averaged")
    r.add_argument("--hostfile", metavar="FILE", default=None,
                   help="with --procs: the MPI hostfile listing the hosts (and slots) to run on")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    return parser


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=min(shutil.get_terminal_size().columns, 100) - 2)


def fail(message: str, code: int) -> int:
    print(f"lantern: error: {message}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "steps", None) is not None and args.steps < 0:
        return fail("--steps must be >= 0", EXIT_USAGE)
    code = _run(args)
    if code and distributed.launched_by_mpi() and distributed.world_size() > 1:
        distributed.abort(f"exit status {code}", code)  # never leave the other ranks waiting
    return code


def _run(args) -> int:
    try:
        return args.func(args)
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        if args.debug:
            traceback.print_exc()
        if isinstance(e, CliError):
            return fail(str(e), e.code)
        if isinstance(e, ModelError):
            return fail(str(e), EXIT_MODEL)
        if isinstance(e, CompileError):
            return fail(str(e), EXIT_COMPILER)
        if isinstance(e, OutputError):
            return fail(str(e), EXIT_OUTPUT)
        if isinstance(e, KeyboardInterrupt):
            return fail("interrupted", 130)
        return fail(f"internal error: {type(e).__name__}: {e} (this is a bug in lantern_stage; "
                    "rerun with --debug for the traceback)", EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
