"""Generic training loop: Optax, training steps fused in ``lax.scan``, validation, best-parameter
tracking, NaN detection, a progress bar and resumable checkpoints.

An estimator (today NPE) supplies

- ``loss_fn(params, batch, key) -> scalar``      (pure, jit-able)
- ``batch_fn(data, key) -> batch``                (draws one minibatch: from a simulation bank
                                                   passed as ``data``, or simulated online)

and :func:`train` does the rest. Data enter compiled code as arguments, never as constants.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization


from amortflow._files import read_json, write_bytes, write_json
from amortflow.errors import CheckpointError, ConfigError, TrainingDivergedError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The defaults are those of :func:`~amortflow.fit_posterior` with
    online simulation: 3000 steps of 256 fresh simulations, peak learning rate 2e-3 (the
    measurements behind them are in benchmarks/notes_training.md).

    Attributes:
      num_steps: total optimizer steps (the learning-rate schedule decays over them).
      batch_size: simulations per step.
      learning_rate: peak learning rate of the warm-up + cosine schedule.
      warmup_steps: linear warm-up length (``None``: 5% of ``num_steps``).
      weight_decay: AdamW decoupled weight decay.
      clip_norm: global gradient-norm clipping.
      steps_per_call: training steps fused in one compiled ``lax.scan`` (validation, NaN check
        and progress update happen between calls).
      patience: stop after this many validation rounds without improvement (``None``: never;
        the best parameters by validation loss are returned either way).
    """

    num_steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 2e-3
    warmup_steps: int | None = None
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    steps_per_call: int = 200
    patience: int | None = None

    def __post_init__(self):
        for name, lo in (("num_steps", 1), ("batch_size", 1), ("steps_per_call", 1)):
            _check_int(name, getattr(self, name), lo)
        for name in ("warmup_steps", "patience"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 0 if name == "warmup_steps" else 1)
        for name, positive in (("learning_rate", True), ("clip_norm", True), ("weight_decay", False)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                    or v < 0 or (positive and v == 0):
                raise ConfigError(f"TrainConfig.{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")

    def optimizer(self) -> optax.GradientTransformation:
        warmup = self.warmup_steps if self.warmup_steps is not None else max(1, self.num_steps // 20)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=self.learning_rate,
            warmup_steps=min(warmup, max(self.num_steps - 1, 1)),
            decay_steps=max(self.num_steps, 2),
            end_value=self.learning_rate * 1e-2,
        )
        return optax.chain(
            optax.clip_by_global_norm(self.clip_norm),
            optax.adamw(schedule, weight_decay=self.weight_decay),
        )


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ConfigError(f"TrainConfig.{name} must be a whole number >= {lo}, got {v!r}")


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array


class TrainResult(NamedTuple):
    """``params``: best parameters by validation loss; ``history``: dict of lists."""

    params: Any
    history: dict


def _make_chunk(loss_fn, batch_fn, optimizer, num_steps):
    """Compiled function running ``num_steps`` fused training steps."""

    def step(carry, key):
        state, data = carry
        kb, kl = jax.random.split(key)
        batch = batch_fn(data, kb)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, kl)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return (TrainState(params, opt_state, state.step + 1), data), loss

    @jax.jit
    def chunk(state, data, key):
        (state, _), losses = jax.lax.scan(step, (state, data), jax.random.split(key, num_steps))
        return state, losses

    return chunk


def _make_eval(loss_fn, batch_size):
    """Compiled mean validation loss over a fixed validation batch (evaluated in chunks)."""

    @jax.jit
    def evaluate(params, val_batch, key):
        n = jax.tree_util.tree_leaves(val_batch)[0].shape[0]
        nb = max(n // batch_size, 1)
        usable = nb * (n // nb)
        chunks = jax.tree_util.tree_map(lambda a: a[:usable].reshape((nb, -1) + a.shape[1:]), val_batch)
        losses = jax.lax.map(lambda b: loss_fn(params, b, key), chunks)
        return losses.mean()

    return evaluate


_TODO = "delete the checkpoint folder to train from scratch"


def _save_checkpoint(path, state, best_params, best_loss, history, rng_key, identity):
    os.makedirs(path, exist_ok=True)
    payload = {"state": state, "best_params": best_params, "key": jax.random.key_data(rng_key)
               if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key) else rng_key}
    write_bytes(os.path.join(path, "train_state.msgpack"), serialization.to_bytes(payload))
    write_json(os.path.join(path, "train_history.json"),
               {"best_loss": best_loss, "history": history, "identity": identity})


def _load_checkpoint(path, state, rng_key, identity):
    """The saved training state of THIS run, ``None`` if there is none; a checkpoint of another
    run (other settings, key, model, simulations or architecture) or a damaged one raises
    :class:`CheckpointError` naming the file."""
    file, hist = os.path.join(path, "train_state.msgpack"), os.path.join(path, "train_history.json")
    if not os.path.exists(file):
        return None
    meta = read_json(hist, CheckpointError, _TODO)
    saved = meta.get("identity", {"config": meta.get("config")})
    if saved != identity:
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise CheckpointError(
            f"{path} holds a training checkpoint of another run (differs in: {', '.join(diff)}); "
            "use another checkpoint_dir or delete it")
    target = {"state": state, "best_params": state.params, "key": rng_key}
    try:
        with open(file, "rb") as f:
            payload = serialization.from_bytes(target, f.read())
    except Exception as e:  # msgpack / flax raise several types for a damaged file
        raise CheckpointError(f"{file} is damaged ({type(e).__name__}: {e}); {_TODO}") from None
    for a, b in zip(jax.tree_util.tree_leaves(payload["state"]), jax.tree_util.tree_leaves(state)):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(f"{file} does not match this estimator's architecture; {_TODO}")
    if not all(k in meta for k in ("best_loss", "history")):
        raise CheckpointError(f"{hist} is incomplete; {_TODO}")
    restored = TrainState(*payload["state"]) if not isinstance(payload["state"], TrainState) else payload["state"]
    return restored, payload["best_params"], meta["best_loss"], meta["history"], jnp.asarray(payload["key"])


def train(
    key: jax.Array,
    loss_fn: Callable,
    params: Any,
    batch_fn: Callable,
    data: Any,
    val_batch: Any,
    config: TrainConfig,
    *,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    checkpoint_identity: dict | None = None,
    description: str = "training",
) -> TrainResult:
    """Minimise ``loss_fn`` and return the parameters with the lowest validation loss.

    Args:
      key: PRNG key (raw ``uint32[2]`` keys, as from ``jax.random.PRNGKey``).
      loss_fn: ``(params, batch, key) -> scalar``.
      params: initial parameters (pytree).
      batch_fn: ``(data, key) -> batch`` with ``config.batch_size`` examples.
      data: pytree of arrays handed to ``batch_fn`` (a simulation bank, or ``None`` for online).
      val_batch: fixed validation batch (pytree of arrays, leading axis = examples).
      checkpoint_dir: if given, state is written after every fused chunk and an interrupted run
        resumes from it.
      checkpoint_identity: JSON-able description of what is trained (model fingerprint, key,
        simulations' hash, architecture); a checkpoint with another identity (or other
        settings) is refused rather than resumed.
    Raises:
      TrainingDivergedError: if a training or validation loss is NaN/inf (names the step).
    """
    optimizer = config.optimizer()
    steps_per_call = max(1, min(config.steps_per_call, config.num_steps))
    chunk = _make_chunk(loss_fn, batch_fn, optimizer, steps_per_call)
    evaluate = _make_eval(loss_fn, config.batch_size)
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    best_params, best_loss = params, math.inf
    history = {"step": [], "train_loss": [], "val_loss": [], "wall_time": []}
    identity = json.loads(json.dumps({"config": dataclasses.asdict(config), **(checkpoint_identity or {})}))
    if checkpoint_dir is not None:
        restored = _load_checkpoint(checkpoint_dir, state, key, identity)
        if restored is not None:
            state, best_params, best_loss, history, key = restored
    num_calls = math.ceil(config.num_steps / steps_per_call)
    done_calls = int(state.step) // steps_per_call
    eval_key = jax.random.fold_in(key, 7919)
    bar = _progress(num_calls * steps_per_call, progress, description, initial=done_calls * steps_per_call)
    stale = 0
    t0 = time.perf_counter() - (history["wall_time"][-1] if history["wall_time"] else 0.0)
    try:
        for call in range(done_calls, num_calls):
            state, losses = chunk(state, data, jax.random.fold_in(key, call))
            train_loss = float(jnp.mean(losses))
            if not np.isfinite(np.asarray(losses)).all():
                first = int(np.argmin(np.isfinite(np.asarray(losses))))
                raise TrainingDivergedError(
                    f"{description}: loss became {float(losses[first])} at step "
                    f"{call * steps_per_call + first + 1}; lower the learning rate, tighten "
                    "clip_norm, or check the simulator for NaN/inf outputs"
                )
            val_loss = float(evaluate(state.params, val_batch, eval_key))
            if not np.isfinite(val_loss):
                raise TrainingDivergedError(
                    f"{description}: validation loss is {val_loss} after step {int(state.step)}; "
                    "check the validation simulations for NaN/inf values"
                )
            history["step"].append(int(state.step))
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss)
            history["wall_time"].append(time.perf_counter() - t0)
            if val_loss < best_loss:
                best_loss, best_params, stale = val_loss, state.params, 0
            else:
                stale += 1
            bar.update(steps_per_call)
            bar.set_postfix(train=f"{train_loss:.3f}", val=f"{val_loss:.3f}", best=f"{best_loss:.3f}")
            if checkpoint_dir is not None:
                _save_checkpoint(checkpoint_dir, state, best_params, best_loss, history, key, identity)
            if config.patience is not None and stale >= config.patience:
                break
    finally:
        bar.close()
    history["best_val_loss"] = best_loss
    return TrainResult(best_params, history)


def _progress(total, enabled, desc, initial=0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                dynamic_ncols=True, leave=False)
