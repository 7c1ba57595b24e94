"""The trainer: a model, an optimizer and a task, run for a number of updates into a run folder.

Synthetic tasks (adding, copy, sine) draw a fresh mini-batch per update and backpropagate
through the whole sequence (or checkpointed, with ``checkpointing``). Text runs B
parallel streams of the training split with truncated BPTT(k1, k2) and carries their
state across updates. Every random number comes from one generator, saved with each
checkpoint along with the data position and the carried state, so a resumed run repeats,
bit for bit, the run that never stopped: after a SIGKILL from its last checkpoint, after
SIGINT, SIGTERM or SIGHUP from the update they interrupted (signals.py). Each evaluation that
lowers the validation loss saves best.json apart; ``patience`` ends a run that stopped
improving. The run folder is the trainer's alone while it writes (folder.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController
from tqdm import tqdm

from .. import _checks
from ..backends import loop_threads, settings
from ..distributed import CollectiveError
from ..distributed import world as mpi_world
from ..cells import CompiledLayer
from ..generate import generate
from ..model import Model
from ..through_time import checkpointed, online
from ..through_time.rtrl import window
from ..through_time.schedules import stream_updates
from . import folder, runs
from .clip import (NonFiniteGradient, check_finite, check_finite_parameters, clip_grad_norm, clip_grad_value,
                   global_norm)
from .config import CHANGEABLE_ON_RESUME, Config, coerce, from_dict
from .optim import make_optimizer
from .schedules import learning_rate
from .signals import Interrupted, StopRequests
from .tasks import TextFileError, TextTask, make_task, text_model_kwargs

READ_ONLY = "RUN: Trainer.load gives a read-only trainer; Trainer.resume continues a run"
LOG_EVERY = 50                  # updates a metrics row averages (fewer in a short run)
TINY_PROBABILITY = 1e-30        # below it, validation takes a window's cross-entropy from its logits


class Trainer:
    """Trains ``config`` into a run folder it owns: ``run_dir`` (else config.out, else a new
    runs/DATE-TIME) must be new or empty; ``fresh=True`` deletes an earlier run there first
    (train/folder.py); ``fresh`` is True or False, nothing else, checked before the folder is
    looked at. ``Trainer.resume`` continues a run, ``Trainer.load`` only reads one."""

    def __init__(self, config: Config, run_dir=None, world=None, fresh: bool = False, _claim="new"):
        fresh = _checks.flag("fresh", fresh)           # "False" would delete the run: a string is true
        if run_dir is not None and not (isinstance(run_dir, (str, os.PathLike)) and str(run_dir).strip()):
            raise ValueError(f"run_dir: expected the path of a folder (str or os.PathLike), or None for "
                             f"config.out, got {type(run_dir).__name__} {run_dir!r}")
        if not isinstance(config, Config):
            raise ValueError(f"config: expected a bptt.Config, got {type(config).__name__}"
                             + ("; build one: bptt.Config(**options)" if isinstance(config, dict) else ""))
        self.config = config.check() if _claim != "new" else config.check().refuse_unused()
        c = config
        self.world = world if world is not None else mpi_world()     # one rank unless under mpiexec
        self.world.share(c.batch, "batch")
        self.task = make_task(c.task, c.seq_len, c.text)
        if _claim == "new" and c.text:             # read as given; kept absolute, for eval and resume anywhere
            self.config = c = dataclasses.replace(c, text=os.path.abspath(c.text))
        self.model = model_for(c, self.task.model_kwargs,
                               list(self.task.chars) if isinstance(self.task, TextTask) else None)
        # On 2 cores an update uses the second core one of two ways. Where a layer is large
        # enough for the compiled loops to share each step's rows between two threads
        # (backends/loop_threads.py), the batch runs whole and BLAS runs the bulk products on
        # its own threads. For a smaller layer, two halves of the batch run at once
        # (bptt/batch_split.py), BLAS held to one thread. benchmarks/batch_split.py --trainer
        # measures both. The two round differently, so the choice follows the shape and the
        # cores only, never whether OpenBLAS's idle workers sleep soon (import order).
        # --threads 2 asks for halves, --threads 1 for the whole batch. MPI ranks (they
        # already share the cores) and a cell without kernels (its steps would take turns
        # at the GIL) run whole.
        loops = settings.loops_enabled() and isinstance(self.model.layer, CompiledLayer)
        if c.threads is None:
            H, T = c.hidden, c.k2 or c.k1 or self.task.steps        # the steps of one pass
            large = loop_threads.large_enough(c.batch, self.model.layer.GATES * H, H, T)
            wanted = 2 if settings.loop_threads() == 2 and not large else 1
        else:
            wanted = c.threads
        self.model.threads = 2 if wanted == 2 and loops and self.world.size == 1 and c.batch >= 2 else 1
        if c.threads is None:   # recorded: a resume on other cores (taskset, BPTT_LOOP_THREADS) keeps this way
            self.config = c = dataclasses.replace(c, threads=self.model.threads)
        self._blas = ThreadpoolController().select(user_api="blas")
        self.optimizer = make_optimizer(c.optimizer, self.model.params, c.lr)
        self.rng = np.random.default_rng(c.seed)
        self.step = 0
        self.skipped = 0
        self.text = isinstance(self.task, TextTask)
        if self.text:
            # This rank's columns of the B streams (all of them on one rank).
            self.streams = self.task.streams(self.task.train, c.batch)[:, self.world.share(c.batch, "batch")]
            self.k1 = c.k1 or c.seq_len
            self.context = (c.k2 or self.k1) - self.k1
            self.position = dict(epoch=0, start=0)
            self.window_state = None
            self._updates = None
            self.influence = None          # --through-time other than bptt: what goes on between updates
            if c.through_time != "bptt":
                self._check_online_text()
        elif hasattr(self.task, "split"):                     # a fixed validation split
            self.valid_batch = self.task.split("valid", self.model.dtype)
        else:
            self.valid_batch = self.task.batch(np.random.default_rng(c.seed + 1_000_003), 512, self.model.dtype)
            # The baseline printed and plotted beside the validation loss is the trivial
            # predictor's loss on these same 512 sequences, not its expectation (on the adding
            # problem, always 1 scores 1/6 ± 0.009 on a batch of 512).
            self.task.baseline = self.task.trivial_loss(*self.valid_batch)
        self._check_text_length()
        self.best = None                 # {"step", "val_loss"} of best.json
        self.stale = 0                   # evaluations since the best one
        self.row_losses = []             # the losses of the metrics row in progress (checkpointed)
        self.stopped_early = False
        self.notes = []                  # what resume wants the user told (cli prints them)
        self._written = set()            # checkpoint files this process wrote
        self._lock = None
        self._claim = _claim
        # rank 0 claims the run folder and names it (a time-stamped default could differ by a
        # second between ranks); a refusal there stops every rank with the same error
        claimed, error = None, None
        try:
            if self.world.root:
                try:
                    if _claim == "new":
                        path, self._lock = folder.claim_new(run_dir or c.out, fresh)
                        claimed = str(path)
                    else:
                        claimed = str(run_dir)
                except folder.FolderError as exc:
                    error = str(exc)
            claimed, error = self.world.broadcast((claimed, error))
            if error is not None:
                raise (CollectiveError(error) if self.world.size > 1 else folder.FolderError(error))
            self.run = Path(claimed)
            self.metrics = runs.Metrics(self.run)
            self.world.agree("configuration", c.to_dict())
            self.world.agree("data", self._data_fingerprint())
        except BaseException:                  # stopped or refused before the run wrote anything
            if self._lock is not None:
                self._lock.discard()
                self._lock = None
            raise

    def _data_fingerprint(self):
        if self.text:
            return [len(self.task.train), hashlib.sha256(np.ascontiguousarray(self.task.train)).hexdigest()]
        return [self.task.name, self.config.seq_len, self.config.seed]

    def _check_text_length(self):
        """Each stream must hold at least one whole window of k2 steps (+1 for its target)."""
        if not self.text:
            return
        c = self.config
        per_stream = len(self.task.train) // c.batch
        need = (c.k2 or self.k1) + 1
        if per_stream < need:
            window = f"--seq-len {c.seq_len}" if c.k1 is None and c.k2 is None else f"a window of {need - 1} steps (k2)"
            lower = "--k2" if c.k2 is not None else "--k1" if c.k1 is not None else "--seq-len"
            reason = (f"{c.text if c.text else 'the built-in corpus'} gives {len(self.task.train)} training "
                      f"characters, {per_stream} per stream with --batch {c.batch}; {window} needs at least {need} "
                      f"per stream (lower --batch or {lower}, or give a longer text)")
            raise TextFileError(reason) if c.text else ValueError(f"text: {reason}")   # the CLI names where the file came from

    # ---- checkpoints ------------------------------------------------------------------------

    def save(self, best: bool = False):
        """A checkpoint, written by rank 0; every rank takes part (drift check, stream states).
        ``best``: best.json + best.safetensors instead, kept apart from the pruned ones.
        Parameters that are not finite are never written (NonFiniteParameters): the last
        checkpoint stays the last good one. A trainer of ``Trainer.load`` writes nothing."""
        best = _checks.flag("best", best)              # "no" would write best.json: a string is true
        if self._claim == "read":
            raise ValueError(READ_ONLY)
        check_finite_parameters(self.model.params, self.step)
        self.world.check_parameters(self.model.params, self.step)
        window_state = None
        if self.text and self.window_state is not None:
            ws = self.window_state if isinstance(self.window_state, tuple) else (self.window_state,)
            window_state = tuple(self.world.gather_columns(s) for s in ws)      # all B streams
        if not self.world.root:
            return None
        arrays = {f"param.{k}": v for k, v in self.model.params.items()}
        arrays |= {f"optim.{k}": np.asarray(v) for k, v in self.optimizer.state_dict().items()}
        meta = {"config": self.config.to_dict(), "rng": self.rng.bit_generator.state, "skipped": self.skipped,
                "best": self.best, "stale": self.stale,
                "row_losses": [float(v) if math.isfinite(v) else None for v in self.row_losses]}
        if self.text:
            meta["text"] = {"vocabulary": "".join(self.task.chars), "first": self.task.first,
                            "sha256": self.task.sha256}
            meta["position"] = self.position
            if window_state is not None:
                arrays |= {f"window_state.{i}": s for i, s in enumerate(window_state)}
            if self.influence is not None:
                arrays |= {f"influence.{k}": v for k, v in self.influence.carried().items()}
        return runs.save_checkpoint(self.run, self.step, arrays, meta, name=runs.BEST if best else None,
                                    written=self._written)

    @classmethod
    def resume(cls, run, best: bool = False, world=None, text=None, **overrides) -> "Trainer":
        """The trainer of ``run`` at its latest checkpoint (``best``: at best.json), holding
        the run's lock. ``overrides``: keys of CHANGEABLE_ON_RESUME (steps=…, patience=…).
        ``text``: where the run's text file is now, if it moved (its SHA-256 must be the
        checkpoint's; config.json then records the new path). ``trainer.notes`` says where
        it starts and what it set aside. A run with nothing left to train
        (check_can_continue) is refused before anything in the folder moves."""
        best = _checks.flag("best", best)              # True sets aside the checkpoints after the best one
        overrides = {k: v.item() if isinstance(v, np.generic) else v      # a NumPy number: as Config takes it
                     for k, v in overrides.items() if v is not None}      # None: the run's own
        bad = sorted(set(overrides) - set(CHANGEABLE_ON_RESUME))
        if bad:
            raise ValueError(f"resume: {bad[0]} cannot change on resume; expected only {', '.join(CHANGEABLE_ON_RESUME)}")
        for k, v in overrides.items():
            coerce(k, v, label=k.replace("_", "-") + ":")
        run = runs.run_path(run)
        world = world if world is not None else mpi_world()
        lock, notes, error = None, [], None
        if world.root:
            try:
                lock = folder.claim_existing(run)
            except folder.FolderError as exc:
                error = str(exc)
        error = world.broadcast(error)
        if error is not None:
            raise (CollectiveError(error) if world.size > 1 else folder.FolderError(error))
        try:
            meta, arrays, path = runs.load_checkpoint(run, best)
            config, option = _run_config(run, meta, text)
            with _text_of(run, config, text, option):
                trainer = cls(config, run_dir=run, world=world, _claim="existing")
            trainer._lock = lock
            trainer._restore(meta, arrays, path, option)
            # the checkpoint holds together; now what config.json and the options change
            saved = folder.saved_config(run, meta["config"])
            edits = {k: saved[k] for k in CHANGEABLE_ON_RESUME if k in saved and saved[k] != meta["config"].get(k)}
            try:
                config = from_dict(config.to_dict() | edits)
            except ValueError as exc:
                raise ValueError(f"RUN: {run / 'config.json'}: {exc}") from None
            config = from_dict(config.to_dict() | overrides)
            trainer.config = config
            moved = config.text != meta["config"].get("text")
            trainer.check_can_continue(overrides)        # a refusal changes nothing in the folder
            if world.root:
                notes = folder.set_aside_halves(run)
            if best:
                trainer._set_aside_after(meta["step"])
            if world.root:
                trainer.metrics.truncate_after(trainer.step)
        except BaseException:
            if lock is not None:
                lock.discard()                 # a lock file made by this claim goes with it
            raise
        trainer.notes = notes + trainer.notes + [f"config.json: {k} {v!r} (the checkpoint has {meta['config'].get(k)!r})"
                                 for k, v in edits.items() if k not in overrides]
        trainer.notes.append(f"resuming {run} from {path.name} (update {trainer.step}"
                             f"{', the best model' if best else ''})")
        if moved:
            trainer.notes.append(f"text: {config.text} (the checkpoint has {meta['config'].get('text')}); the same "
                                 f"SHA-256")
        if world.root and (edits or overrides or moved):     # config.json says what the run now does
            # config.json's text as the user wrote it there: a relative one stays relative
            as_given = {"text": saved["text"]} if option == CONFIG_TEXT else {}
            written = json.dumps(config.to_dict() | as_given, indent=1)
            runs.atomic_write(run / "config.json", lambda p: p.write_text(written))
        return trainer

    @classmethod
    def load(cls, run, best: bool = False, world=None, text=None) -> "Trainer":
        """The trainer of ``run`` at its latest checkpoint (or best.json), to evaluate or
        sample: no lock, and nothing in the folder is written. ``text``: where the run's
        text file is now, if it moved (its SHA-256 must be the checkpoint's)."""
        best = _checks.flag("best", best)
        meta, arrays, path = runs.load_checkpoint(run, best)
        config, option = _run_config(run, meta, text)
        with _text_of(run, config, text, option):
            trainer = cls(config, run_dir=run, world=world, _claim="read")
        trainer._restore(meta, arrays, path, option)
        return trainer

    def check_can_continue(self, overrides=()):
        """Refuse a resume that would train nothing: the run is complete, or stopped early
        and patience says it would stop again; and a total of steps that its warm-up would
        outlast, which `bptt train` refuses too."""
        c = self.config
        # every rank reads the same checkpoint and options: under mpiexec all refuse together
        refusal = CollectiveError if self.world.size > 1 else ValueError
        if c.steps <= self.step:
            if "steps" in overrides:
                raise refusal(f"--steps: the run is at update {self.step}; expected more than {self.step}")
            raise refusal(f"RUN: the run is complete at update {self.step} of {c.steps}; "
                          f"pass --steps N (N > {self.step}) to continue it")
        if c.patience is not None and self.stale >= c.patience:
            raise refusal(f"RUN: the run stopped early at update {self.step}: no better validation in "
                          f"{self.stale} evaluations (--patience {c.patience}); pass a larger --patience "
                          f"to continue it")
        if c.warmup >= c.steps:           # as `bptt train` refuses it: the rate would never reach --lr
            where = "--steps" if "steps" in overrides else f"RUN: {self.run / 'config.json'}: steps"
            raise refusal(f"{where}: expected more updates than the run's --warmup {c.warmup} (the warm-up "
                          f"multiplies the schedule's rate of update s by s/{c.warmup}), got {c.steps}")

    def _set_aside_after(self, step):
        """resume --best: the checkpoints and metrics after the best model belong to the
        abandoned continuation; they move into set-aside/ rather than being pruned or
        overwritten."""
        if not self.world.root:
            return
        for later in [p for p in runs.checkpoints(self.run) if runs.step_of(p) > step]:
            for path in (later.with_suffix(".safetensors"), later):
                moved = runs.set_aside(self.run, path)
            self.notes.append(f"{later.name} (after the best model) moved to {moved.parent.name}/")
        records = self.metrics.read()
        if any(r["step"] > step for r in records):
            kept = "".join(json.dumps(r) + "\n" for r in records)
            target = runs.aside_name(self.run, f"metrics-to-{records[-1]['step']}.jsonl")
            runs.atomic_write(target, lambda p: p.write_text(kept))
            self.notes.append(f"metrics.jsonl as it was: {runs.SET_ASIDE}/{target.name}")

    def _restore(self, meta, arrays, path, option="RUN: the run's text file"):
        """The state of checkpoint ``path`` into this trainer; ``option`` names where the
        text's path came from (--text, config.json or the checkpoint) if it is another text."""
        stored = meta.get("text")
        if self.text and stored is not None and stored.get("sha256") != self.task.sha256:
            c = self.config
            source = f"{option}: {c.text}" if c.text else "text: the built-in corpus (Python's standard library)"
            raise ValueError(f"{source} is not the text this run trained on: its SHA-256 differs from the "
                             f"checkpoint's ({len(self.task.chars)} distinct characters now, "
                             f"{len(stored['vocabulary'])} then); eval and resume need the same text")
        if self.text and stored is not None and stored["vocabulary"] != "".join(self.task.chars):
            raise runs.damaged(path, '"vocabulary" of "text"', "the characters of the text it records the SHA-256 "
                               "of, in their order", stored["vocabulary"])
        runs.restore_params(self.model.params, arrays)
        try:
            self.optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
        except ValueError as exc:                  # a damaged or foreign tensor file: named
            raise ValueError(f"RUN: {path.with_suffix('.safetensors').name}: {exc}") from None
        self.step = int(meta["step"])
        self.skipped = int(meta.get("skipped", 0))
        self.rng.bit_generator.state = meta["rng"]          # a PCG64 state: runs.check_meta checked it
        self.best, self.stale = meta.get("best"), int(meta.get("stale", 0))
        self.row_losses = [math.nan if v is None else float(v) for v in meta.get("row_losses", [])]
        if self.text:
            end = self.streams.shape[0] - 1          # runs.check_meta checked the rest of the position
            if meta["position"]["start"] > end:
                raise runs.damaged(path, '"start" of "position"', f"an integer from 0 to {end}, the steps of "
                                   f"each stream", meta["position"]["start"])
            self.position = dict(meta["position"])
            cols = self.world.share(self.config.batch, "batch")      # any number of ranks that divides B
            ws = [arrays[k][:, cols] for k in _window_state_keys(self.model, self.config.batch, arrays, path)]
            self.window_state = None if not ws else (tuple(ws) if self.model.tuple_state else ws[0])
            carried = {k[len("influence."):]: v for k, v in arrays.items() if k.startswith("influence.")}
            if carried:
                method = self.config.through_time
                fresh = online.ESTIMATORS[method](self.model, self.streams.shape[1], self.rng) \
                    if method in online.ESTIMATORS else None
                carried = carried if fresh is None else fresh.completed(carried)    # an older format's gaps
                _check_carried(fresh.carried() if fresh is not None else {}, carried, method, path)
                self.influence = fresh
                self.influence.restore(carried)

    # ---- one update ---------------------------------------------------------------------------

    def _text_update(self):
        if self.config.through_time != "bptt":
            return self._online_text_update()
        L = self.streams.shape[0] - 1
        if self._updates is None:
            start = self.position["start"]
            self._updates = stream_updates(
                self.model, L, lambda lo, hi: self.task.one_hot(self.streams[lo:hi], self.model.dtype),
                lambda lo, hi: self.streams[lo + 1:hi + 1], self.k1, self.context, None,
                start=start, window_state=self.window_state, draw_masks=self._draw_masks)
        try:
            loss, grads, _, a, e, _, window_state = next(self._updates)
        except StopIteration:                     # an epoch is over: streams restart from zero
            self._updates = None
            self.position = dict(epoch=self.position["epoch"] + 1, start=0)
            self.window_state = None
            return self._text_update()
        self.position = dict(epoch=self.position["epoch"], start=e)
        self.window_state = window_state
        return loss, grads, (e - a) * self.streams.shape[1]

    def _check_online_text(self):
        """Forward mode over streams: on one process (each rank's influence would be its
        own, and a checkpoint holds one), and with an influence that fits in memory."""
        c, m = self.config, self.model
        if self.world.size > 1:
            raise CollectiveError(f"through-time: {c.through_time} over streams runs on one process; got "
                                  f"{self.world.size} MPI ranks")
        n = sum(v.size for k, v in m.params.items() if not k.startswith("head."))
        K = len(m.layer.STATE) * m.hidden_size
        values = c.batch * (K + n if c.through_time == "uoro" else K * n)
        if values * m.dtype.itemsize > 2 ** 31:
            raise ValueError(f"through-time: {c.through_time} keeps {values:,} values for {c.batch} streams of this "
                             f"model ({values * m.dtype.itemsize / 2 ** 30:.1f} GiB, over 2 GiB); use a smaller "
                             f"--hidden or --batch, or --through-time uoro")

    def _online_text_update(self):
        """Forward mode over the streams: the next k1 steps from the state and influence the
        last update left (through_time/online.py), an update with no backward pass. At the
        end of the streams an epoch begins from zero state and influence."""
        L = self.streams.shape[0] - 1
        a = self.position["start"]
        if a >= L:
            self.position = dict(epoch=self.position["epoch"] + 1, start=0)
            self.influence, a = None, 0
        if self.influence is None:
            self.influence = online.ESTIMATORS[self.config.through_time](self.model, self.streams.shape[1], self.rng)
        e = min(a + self.k1, L)
        x = self.task.one_hot(self.streams[a:e], self.model.dtype)
        loss, grads = window(self.influence, self.model, x, self.streams[a + 1:e + 1])
        self.position = dict(epoch=self.position["epoch"], start=e)
        return loss, grads, (e - a) * self.streams.shape[1]

    def _batch_update(self):
        x, y = self.task.batch(self.rng, self.config.batch, self.model.dtype)     # the global batch
        # For locating a non-finite gradient: the global batch, whose summed gradient
        # check_finite judged, so that rank 0 names the step one process would name.
        self.last_batch = (x, y)
        if self.world.size > 1:                                     # this rank's rows of it
            rows = self.world.share(self.config.batch, "batch")
            x = np.ascontiguousarray(x[:, rows])
            y = np.ascontiguousarray(y[rows] if self.model.outputs == "last" else y[:, rows])
        if self.config.through_time != "bptt":
            # Forward mode, no backward pass through time; with zoneout, its evaluation mix
            # (a leaky state) rather than masks (through_time/online.py).
            # Random signs (UORO, KF-RTRL) drawn for the global batch, this rank's rows kept.
            rows = (self.config.batch, self.world.share(self.config.batch, "batch")) if self.world.size > 1 else None
            loss, grads, _ = online.estimate(self.config.through_time, self.model, x, y, self.rng, draw_rows=rows)
            return loss, grads, x.shape[0] * x.shape[1]
        masks = self._draw_masks(x.shape[0], x.shape[1])
        if self.config.checkpointing:
            loss, grads, _ = checkpointed(self.model, x, y, budget=self.config.checkpointing, masks=masks)
        else:
            loss, grads, _ = self.model.loss_and_grads(x, y, masks=masks)
        return loss, grads, x.shape[0] * x.shape[1]

    def _restart_streams_that_overflowed(self):
        """After a skipped update on text: a stream whose carried state is no longer finite
        starts again from zero state, as at an epoch's start (forward mode: every stream, with
        a zero influence, where any of what it carries is not finite). Kept, that state would
        make every later update of the epoch non-finite and skipped too."""
        if self.config.through_time != "bptt":
            if self.influence is not None and not all(np.isfinite(a).all() for a in self.influence.carried().values()):
                self.influence = None
            return
        if self.window_state is None:
            return
        arrays = self.window_state if self.model.tuple_state else (self.window_state,)     # each (K, B, width)
        broken = np.zeros(arrays[0].shape[1], dtype=bool)
        for a in arrays:
            broken |= ~np.isfinite(a).all(axis=(0, 2))
        if broken.any():
            arrays = tuple(np.where(broken[None, :, None], 0, a).astype(a.dtype) for a in arrays)
            self.window_state = arrays if self.model.tuple_state else arrays[0]
            self._updates = None                  # the windows go on from the same step, from this state

    def _draw_masks(self, T, B):
        """The dropout masks of one update, from the run's generator (saved with every
        checkpoint): drawn for the whole batch, so that every rank takes its own
        sequences' rows of the same draw."""
        masks = self.model.draw_masks(T, self.config.batch, self.rng)
        if masks is None or self.world.size == 1:
            return masks
        return masks.rows(self.world.share(self.config.batch, "batch"))

    def _loop_threads(self):
        """MPI ranks already share the cores: each rank's loops stay on one thread
        (backends/loop_threads.py), where two would spin against the other ranks."""
        return loop_threads.use(1) if self.world.size > 1 else contextlib.nullcontext()

    def update(self):
        """One optimizer step. Returns (loss, gradient norm before clipping, lr, tokens)."""
        if self.model.threads == 1:
            with self._loop_threads():
                return self._update()
        # BLAS on one thread: otherwise its idle worker busy-waits on the second core after
        # every call, against our second thread (benchmarks/batch_split.py measures both).
        with self._blas.limit(limits=1):
            return self._update()

    def _update(self):
        c = self.config
        # An overflow becomes inf or NaN here and is judged by check_finite and the
        # on_nonfinite policy below, not printed as a NumPy warning or raised midway.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, grads, tokens = self._text_update() if self.text else self._batch_update()
        if self.world.size > 1:
            # Each rank's mean over its equal share of positions, scaled by 1/N and summed:
            # the mean over the global batch, in one all-reduce of one flat buffer.
            for g in grads.values():
                g *= 1.0 / self.world.size
            loss = self.world.sum_gradients(grads, loss / self.world.size)
            tokens *= self.world.size
        self.step += 1
        try:
            check_finite(loss, grads)
        except NonFiniteGradient:
            check_finite_parameters(self.model.params, self.step - 1)   # the cause an update earlier: no policy skips it
            if c.on_nonfinite == "stop":
                raise
            self.skipped += 1
            if self.text:
                self._restart_streams_that_overflowed()
            return loss, float("nan"), 0.0, tokens
        if c.clip_value:                    # None or 0: none; the norm reported is the one before any clipping
            norm = global_norm(grads)
            clip_grad_value(grads, c.clip_value)
            clip_grad_norm(grads, c.clip_norm or math.inf)
        else:
            norm = clip_grad_norm(grads, c.clip_norm or math.inf)
        lr = learning_rate(self.step, c.lr, c.schedule, c.steps, c.warmup)
        self.optimizer.step(grads, lr)
        return loss, norm, lr, tokens

    # ---- evaluation ------------------------------------------------------------------------------

    def evaluate(self) -> dict:
        """Validation figures: loss (nats per char for text), and bits and accuracy where apt.
        Rank 0 alone evaluates (the parameters are the same on every rank)."""
        if not self.world.root:
            return {}
        with self._loop_threads():
            return self._evaluate()

    def _evaluate(self) -> dict:
        # The validation pass runs whole, BLAS on its threads: its 16 streams are too few for
        # two halves to gain anything over one pass.
        m = self.model
        if self.text:
            codes = self.task.streams(self.task.valid, min(16, max(1, len(self.task.valid) // 200)))
            state, nll, hits, n = None, 0.0, 0, 0
            for lo in range(0, codes.shape[0] - 1, self.config.seq_len):
                hi = min(lo + self.config.seq_len, codes.shape[0] - 1)
                x = self.task.one_hot(codes[lo:hi], m.dtype)
                y, after = m.forward(x, state, carried_state=True)     # an overflow: a NaN figure, not a refusal
                target = codes[lo + 1:hi + 1]
                p = np.take_along_axis(y, target[..., None], axis=-1)[..., 0]
                if (p < TINY_PROBABILITY).any() and np.isfinite(p).all():
                    # log of such a p is its rounding's (or -inf): the loss's logsumexp form, (C3)
                    nll += m.loss_value(x, target, state, carried_state=True) * target.size
                else:
                    nll -= float(np.log(np.maximum(p, TINY_PROBABILITY)).sum())
                state = after
                hits += int((y.argmax(-1) == target).sum())
                n += target.size
            return {"val_loss": nll / n, "val_bits": nll / n / math.log(2), "val_acc": hits / n}
        x, y = self.valid_batch
        out = {"val_loss": m.loss_value(x, y)}
        if self.task.name == "copy":
            pred, _ = m.forward(x)
            out["val_acc"] = float((pred[-10:].argmax(-1) == y[-10:]).mean())
        if self.task.name == "digits":
            out["val_acc"] = float((m.forward(x)[0].argmax(-1) == y).mean())
            x, y = self.task.split("test", m.dtype)
            out |= {"test_loss": m.loss_value(x, y), "test_acc": float((m.forward(x)[0].argmax(-1) == y).mean())}
        return out

    # ---- the loop --------------------------------------------------------------------------------

    def train(self, progress=True, stop_at=None) -> dict:
        """Run updates until config.steps (or until ``stop_at``, as a stopped run would,
        with a checkpoint there, or until ``patience`` evaluations bring no better
        validation); returns the validation figures of the model where it stops.
        ``progress``: True or False (a progress bar). ``stop_at``: an integer update number
        above the trainer's own (``trainer.step``), which a resumed trainer starts from; one
        past config.steps stops at config.steps. Its figures are not written to
        metrics.jsonl nor weighed for best.json and ``patience``: the resumed run's rows and
        best model are those of the run that never stopped.

        SIGINT, SIGTERM or SIGHUP (in the main thread; one the process was started ignoring
        stays ignored) finish the update in flight, write a checkpoint and raise
        ``Interrupted`` (``code``: 128 + the signal's number); one during the last update or
        after it (its evaluation, the plot) raises it with that update's checkpoint, the plot
        drawn; a second signal raises it at once (the checkpoints already written stay
        whole). The run folder's lock is held until this returns."""
        if self._claim == "read":
            raise ValueError(READ_ONLY)
        progress = _checks.flag("progress", progress)
        if stop_at is not None and (isinstance(stop_at, (bool, np.bool_)) or not isinstance(stop_at, (int, np.integer))
                                    or stop_at <= self.step):
            raise ValueError(f"stop_at: expected an integer update number above the trainer's own ({self.step}), "
                             f"got {stop_at!r}")
        c = self.config
        end = c.steps if stop_at is None else min(int(stop_at), c.steps)
        root = self.world.root
        if root and self._lock is None:
            self._lock = folder.Lock(self.run, "--out")
        try:
            with StopRequests(lambda: self.step) as stop:
                final = self._loop(end, progress, stop)
        except BaseException:
            if self._lock is not None and folder.holds_only_lock(self.run):     # stopped before it wrote
                self._lock.discard()
            raise
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return final

    def _loop(self, end, progress, stop) -> dict:
        c, root = self.config, self.world.root
        if self.step == 0 and root:
            runs.atomic_write(self.run / "config.json", lambda p: p.write_text(json.dumps(c.to_dict(), indent=1)))
            runs.atomic_write(self.metrics.path, lambda p: p.write_text(""))
        log_every = max(1, min(LOG_EVERY, c.steps // 40))      # a short run still draws a curve
        bar = tqdm(total=c.steps, initial=self.step, disable=not (progress and root), unit="upd", dynamic_ncols=True,
                   desc=f"{c.task}/{c.cell}")
        if self.step == 0:           # Numba compiles the loops once per machine (cached on disk)
            bar.set_description_str(f"{c.task}/{c.cell}: first update (compiles the kernels once, cached after)")
        # A row averages the losses of its updates, those before a resume included (they
        # come back from the checkpoint); its rates count this process's updates only, over
        # the time they took (``busy``): not the evaluations, checkpoints and rows between them.
        timed, busy, tokens = 0, 0.0, 0
        final, final_step = {}, None
        try:
            while self.step < end:
                first = self.step == 0
                started = time.perf_counter()
                loss, norm, lr, n = self.update()
                busy += time.perf_counter() - started
                if first:
                    bar.set_description_str(f"{c.task}/{c.cell}")
                self.row_losses.append(loss)
                timed, tokens = timed + 1, tokens + n
                bar.update(1)
                record = None
                if self.step % log_every == 0 or self.step == c.steps:
                    dt = max(busy, 1e-9)
                    finite = [v for v in self.row_losses if math.isfinite(v)]   # skipped updates (--on-nonfinite) apart
                    record = {"step": self.step, "loss": float(np.mean(finite)) if finite else None,
                              "grad_norm": norm, "lr": lr, "steps_per_s": timed / dt, "tokens_per_s": tokens / dt}
                    self.row_losses, timed, busy, tokens = [], 0, 0.0, 0
                    if finite:
                        bar.set_postfix(loss=f"{record['loss']:.4f}")
                # at config.steps, not at stop_at: a run stopped there evaluates and judges
                # (best.json, patience) only where the run that never stopped does
                evaluated = self.step % c.eval_every == 0 or self.step == c.steps
                if evaluated:
                    final, final_step = self.evaluate(), self.step
                    record = (record or {"step": self.step}) | final
                if record is not None and root:
                    self.metrics.write(record | ({"skipped": self.skipped} if self.skipped else {}))
                if evaluated:
                    self._judge(final)
                signalled = self.world.any(stop.signum is not None)     # every rank stops at one update
                patience_out = c.patience is not None and self.stale >= c.patience
                if self.step % c.checkpoint_every == 0 or self.step == end or signalled or patience_out:
                    checkpoint = self.save()
                self.stopped_early = patience_out and self.step < c.steps     # at the last update: complete
                if signalled and self.step < end and not patience_out:     # at the end: the plot first, below
                    raise Interrupted(stop.signum or signal.SIGTERM, self.step, checkpoint)
                if patience_out:
                    break
        finally:
            bar.close()
        if not final or final_step != self.step:      # stop_at between evaluations: its figures, unrecorded
            final = self.evaluate()
        if root:
            self.plot()
        if self.world.any(stop.signum is not None):    # a signal after the last update: its checkpoint is written
            found = runs.checkpoints(self.run) if root else []
            raise Interrupted(stop.signum or signal.SIGTERM, self.step, found[-1] if found else None)
        return final

    def _judge(self, figures):
        """After an evaluation: a lower validation loss than any before is saved apart as the
        best model (best.json); otherwise one more evaluation without improvement."""
        val = self.world.broadcast(figures.get("val_loss"))
        if val is None or not math.isfinite(val):
            self.stale += 1
            return
        if self.best is None or val < self.best["val_loss"]:
            self.best, self.stale = {"step": self.step, "val_loss": float(val)}, 0
            self.save(best=True)
        else:
            self.stale += 1

    def plot(self):
        baseline = getattr(self.task, "baseline", None)
        name = getattr(self.task, "baseline_name", "")
        ylabel = {"adding": "mean squared error", "sine": "mean squared error"}.get(self.task.name,
                                                                                   "cross-entropy (nats)")
        if self.text:
            baseline, name = self.task.baselines["bigram"], "bigram (validation)"
            ylabel = "cross-entropy (nats per character)"
        return runs.plot_losses(self.run, self.metrics.read(), baseline, name, ylabel)


def sample(model: Model, first: str, length=300, temperature=1.0, top_k=None, prime=None, rng=None) -> str:
    """Text from a character model (bptt/generate.py, ``model.vocabulary``): feed ``prime``
    (default: a newline, or ``first``, the training text's first character, if it has no
    newline), then draw ``length`` characters."""
    if not prime:
        prime = "\n" if isinstance(model.vocabulary, (str, list, tuple)) and "\n" in model.vocabulary else first
    return generate(model, length, prime, temperature, top_k, seed=rng)


def model_for(c: Config, model_kwargs: dict, vocabulary=None) -> Model:
    """The model of config ``c`` for a task's sizes (``model_kwargs``), freshly initialised
    from c.seed; a character model carries its ``vocabulary``."""
    chrono = {"chrono_t_max": c.chrono_t_max or c.seq_len} if c.init == "chrono" else {}
    model = Model(c.cell, hidden_size=c.hidden, num_layers=c.layers, nonlinearity=c.nonlinearity,
                  dtype=c.dtype, seed=c.seed, init=c.init, forget_bias=c.forget_bias,
                  dropout=c.dropout, input_dropout=c.input_dropout,
                  recurrent_dropout=c.recurrent_dropout, zoneout=c.zoneout, layer_norm=c.layer_norm,
                  bidirectional=c.bidirectional, proj_size=c.proj_size, **chrono, **model_kwargs)
    if vocabulary is not None:
        model.vocabulary = list(vocabulary)
    return model


def _window_state_keys(model, batch: int, arrays: dict, path: Path) -> list:
    """The names of the streams' carried state in a checkpoint's tensors (none at an epoch's
    start): one array (layers·directions, batch, width) of the model's dtype per state of
    its cell, else a ValueError naming the tensor file (a carried state of another shape
    failed later, or was an IndexError)."""
    found = sorted(k for k in arrays if k.startswith("window_state."))
    shapes = [(model.num_layers * model.directions, batch, w) for w in model.state_widths]
    if found and (found != [f"window_state.{i}" for i in range(len(shapes))]
                  or any(arrays[k].shape != s or arrays[k].dtype != model.dtype for k, s in zip(found, shapes))):
        got = ", ".join(f"{k} {arrays[k].shape} {arrays[k].dtype}" for k in found)
        raise ValueError(f"RUN: {path.with_suffix('.safetensors').name}: expected the streams' carried state as "
                         f"{len(shapes)} array(s) {', '.join(map(str, shapes))} {model.dtype}, got {got}")
    return found


def _check_carried(fresh: dict, stored: dict, method: str, path: Path) -> None:
    """A checkpoint's influence.* arrays have the names, shapes and dtypes of those a new
    estimator of ``method`` carries, else a ValueError naming the tensor file and the first
    that differs (restore raised KeyError for one missing, and took one of another shape)."""
    want, got = ({k: (v.shape, v.dtype.name) for k, v in arrays.items()} for arrays in (fresh, stored))
    if want != got:
        k = min(set(want) ^ set(got) or {k for k in want if want[k] != got[k]})
        shown = lambda d: "none" if k not in d else f"{d[k][0]} {d[k][1]}"
        raise ValueError(f"RUN: {path.with_suffix('.safetensors').name}: influence.{k} is {shown(got)}; "
                         f"--through-time {method} carries {shown(want)} there")


def load_model(run, best: bool = False) -> tuple:
    """(model, meta) of ``run`` at its latest checkpoint (or best.json): the trained model
    alone, for sampling and export. A text run's checkpoint keeps its vocabulary, so the
    text file is not read; a checkpoint written without it goes through Trainer.load."""
    best = _checks.flag("best", best)
    meta, arrays, _ = runs.load_checkpoint(run, best)
    config = from_dict({"threads": 1} | meta["config"] | {"out": str(run)}).check()
    if config.task == "text":
        stored = meta.get("text")
        if stored is None:
            trainer = Trainer.load(run, best)
            return trainer.model, meta | {"text": {"first": trainer.task.first}}
        model = model_for(config, text_model_kwargs(len(stored["vocabulary"])), stored["vocabulary"])
    else:
        model = model_for(config, make_task(config.task, config.seq_len).model_kwargs)
    runs.restore_params(model.params, arrays)
    return model, meta


CONFIG_TEXT = "RUN: config.json's text"          # _run_config's answer where config.json named the text


def _run_config(run, meta, text=None) -> tuple:
    """(config, where its text's path came from) of a run's checkpoint for eval and resume.
    A config without the threads key ran one pass a batch, and goes on that way. The text
    file is at ``text`` (--text) where given, else where config.json names another place
    than the checkpoint (a resume --text wrote it, or the user; a relative path there is
    read from the run's folder, as --text's is from the working directory), else at the
    checkpoint's path; Trainer._restore then checks its SHA-256 against the checkpoint's."""
    config = from_dict({"threads": 1} | meta["config"] | {"out": str(run)})
    if text is not None:
        option = "--text"
    else:
        try:                           # config.json's other edits are judged by resume, later
            text = folder.saved_config(run, meta["config"]).get("text")
        except ValueError:
            text = None
        option = CONFIG_TEXT if text is not None else "RUN: the run's text file"
    if text is None:
        return config, option
    if not isinstance(text, (str, os.PathLike)) or not str(text):
        raise ValueError(f"{option}: expected the path of the run's text file, got {text!r}")
    if config.task != "text" or config.text is None:
        what = f"the {config.task} task" if config.task != "text" else "the built-in corpus"
        raise ValueError(f"{option}: this run trained on {what}, not on a text file; --text points eval and "
                         f"resume at a run's text file where it moved")
    base = "" if option == "--text" else str(run)        # a relative path in config.json: from the run's folder
    return dataclasses.replace(config, text=os.path.abspath(os.path.join(base, text))), option


@contextlib.contextmanager
def _text_of(run, config, given=None, option=""):
    """A run's text file that cannot be read now is named as the run's, or as config.json's
    where that named it, not as an option (unless ``given``: then --text named it)."""
    try:
        yield
    except TextFileError as exc:
        if given is not None:
            raise
        whose = (f"{Path(run) / 'config.json'} names the run's text as" if option == CONFIG_TEXT
                 else f"{run} trained on the text")
        raise ValueError(f"RUN: {whose} {config.text}, which cannot be read now "
                         f"({exc.reason}); eval, resume and flow --run read it again (sample and "
                         f"export do not): --text PATH (eval, resume) or the \"text\" of "
                         f"{Path(run) / 'config.json'} gives them its new place") from None
