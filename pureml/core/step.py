"""The pure training step: ``step(state, sub_batches) -> (state, metrics)``.

One call, in order:

1. for each sub-batch ``i``: the loss with the dropout key ``fold_in(state.rng, state.step,
   indices[i])`` (``first_index + i`` by default) and its gradients (autograd through the compiled forward); gradients
   summed over sub-batches;
2. ``all_reduce`` hook (sum across ranks) on one flat bucket per dtype (grads and losses);
3. global L2 norm (logged; before clipping), clip to ``grad_max_norm``;
4. spike guard (:mod:`pureml.core.guard`); a non-finite norm always skips;
   with float16 loss scaling (:mod:`pureml.core.loss_scale`, on when the state carries a
   scale) the backward is seeded with the scale, the gradients are divided by it before the
   norm, and an overflow halves it;
5. optimizer update; a skipped step keeps params and optimizer state bitwise (branchless
   ``where``), so the schedule does not advance either; ``state.step += 1`` always.

Two compiled functions do the work, over plain dicts: the loss of one sub-batch (its backward
graph compiled alongside by AOTAutograd) and the update. Splitting them means the number of
sub-batches can change from step to step without recompiling. Frozen attrs objects are built
only outside them.

Shapes: with ``dynamic=True`` (the default) every dimension of every batch tensor is marked
dynamic on every call, so the first graph is already the shape-generic one and no history
decides which kernels run: a resumed or replayed process runs the same kernels whatever shapes
it saw first. (Dimensions of size 0 or 1 are still specialised by torch.compile, in the same way
in every process.) ``dynamic=False`` compiles each shape statically: pad to a few buckets.

``flat=True``: both compiled functions take one flat tensor per bucket of parameters
(:mod:`pureml.core.flat`) instead of one per parameter; the state keeps views by name.

``donate=True`` (JAX's buffer donation): the update writes the new params and optimizer state
into the buffers of the state it was given, when that state is the one this step returned last
(otherwise into copies made first). The old state is consumed: passing it to any step again
raises. Same kernels' arithmetic, same bits; no second copy of params and moments alive at the
update, and no new buffers to allocate (and page-fault in) at every step.

Example::

    opt = optim.adamw(1e-3)
    state = init_state(params, buffers, opt, seed=0)
    step = make_step(loss_fn, opt, grad_max_norm=1.0)
    state, metrics = step(state, [batch])
"""

from __future__ import annotations

import itertools
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from pureml.core.flat import CPU_BUCKET_BYTES, FlatLayout, ViewCache
from pureml.core.guard import POLICIES, guard_update, init_guard
from pureml.core.loss_scale import init_loss_scale, update_loss_scale
from pureml.core.rng import fold_in
from pureml.core.state import TrainState, tree_map
from pureml.optim.base import (
    GradientTransformation,
    apply_updates,
    clip_coefficient,
    global_norm,
    learning_rates,
    per_step_scalar,
    tree_select,
)

__all__ = ["LossFn", "Step", "make_step", "init_state", "module_loss_fn"]

LossFn = Callable[[dict[str, Tensor], dict[str, Tensor], Any, Tensor], tuple[Tensor, dict]]
AllReduce = Callable[[Tensor], Tensor]


def module_loss_fn(module: torch.nn.Module) -> LossFn:
    """``loss_fn(params, buffers, batch, key)`` calling ``module(batch, key) -> (loss, aux)``
    through ``torch.func.functional_call`` (the module's own tensors are not used)."""

    def loss_fn(params: dict, buffers: dict, batch: Any, key: Tensor) -> tuple[Tensor, dict]:
        return torch.func.functional_call(module, {**buffers, **params}, (batch, key))

    return loss_fn


def init_state(
    params: Mapping[str, Tensor] | torch.nn.Module,
    buffers: Mapping[str, Tensor] | None = None,
    optimizer: GradientTransformation | Any = None,
    *,
    seed: int = 0,
    grad_ewm_window: int | None = None,  # noqa: ARG001  (the guard state does not depend on it)
    loss_scale: float | None = None,
) -> TrainState:
    """The state at step 0: optimizer state, empty guard statistics, ``rng = make_key(seed)``.

    ``loss_scale`` (e.g. ``2.0**16``) turns on dynamic loss scaling for float16 autocast
    (:mod:`pureml.core.loss_scale`), starting at that scale.

    ``params`` may be a module (its parameters and buffers are copied). If the optimizer has
    parameter groups, parameters it freezes move to ``buffers`` (they are not differentiated).

    >>> from pureml import optim
    >>> s = init_state({"w": torch.zeros(2)}, optimizer=optim.sgd(0.1), seed=1)
    >>> int(s.step), list(s.hparams)
    (0, ['lr/default'])
    """
    if isinstance(params, torch.nn.Module):
        module = params
        params = {k: v.detach().clone() for k, v in module.named_parameters()}
        buffers = {
            **{k: v.detach().clone() for k, v in module.named_buffers()},
            **(buffers or {}),
        }
    if not isinstance(params, Mapping):
        raise TypeError(
            f"init_state: params must be a dict {{name: tensor}}, got {type(params).__name__}"
        )
    for k, v in params.items():
        # the state is a flat dict by name (what groups, checkpoints and replay address)
        if not isinstance(v, Tensor) or not v.is_floating_point():
            what = f"a {v.dtype} tensor" if isinstance(v, Tensor) else type(v).__name__
            raise TypeError(
                f"init_state: parameter {k!r} is {what}; params must map names to "
                "floating-point tensors (nest names as 'a.w'; pass other tensors as buffers)"
            )
    params = {k: v.detach() for k, v in params.items()}
    buffers = dict(buffers or {})
    if optimizer is None:
        raise ValueError("init_state needs the optimizer")
    if hasattr(optimizer, "partition"):
        params, frozen = optimizer.partition(params)
        buffers.update(frozen)
    if not params:
        raise ValueError("no trainable parameter (all frozen by the optimizer groups?)")
    opt = optimizer.init(params)
    device = next(iter(params.values())).device
    return TrainState.create(
        params,
        buffers,
        seed=seed,
        opt=opt,
        guard=init_guard(device),
        hparams={f"lr/{g}": lr for g, lr in learning_rates(opt).items()},
        loss_scale=init_loss_scale(loss_scale, device) if loss_scale is not None else None,
    )


def _mark_dynamic(batch: Any) -> None:
    def mark(t: Any) -> Any:
        if isinstance(t, Tensor):
            for d in range(t.ndim):
                torch._dynamo.maybe_mark_dynamic(t, d)
        return t

    tree_map(mark, batch)


def _all_reduce_tree(tensors: dict[str, Tensor], all_reduce: AllReduce) -> dict[str, Tensor]:
    # One flat bucket per dtype: one collective (one graph node) instead of one per tensor.
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k, t in tensors.items():
        by_dtype.setdefault(t.dtype, []).append(k)
    out: dict[str, Tensor] = {}
    for names in by_dtype.values():
        flat = torch.cat([tensors[k].reshape(-1) for k in names])
        flat = all_reduce(flat)
        sizes = [tensors[k].numel() for k in names]
        for k, piece in zip(names, torch.split(flat, sizes)):
            out[k] = piece.view(tensors[k].shape)
    return {k: out[k] for k in tensors}


# Model code may still specialise a dimension marked dynamic (a CRF scan whose depth depends on
# the length, rows packed from lengths): then each length bucket gets a graph of its own. torch's
# default of 8 graphs per function turned a training run with a few more buckets into a hard
# failure (FailOnRecompileLimitHit, fullgraph=True) after a dozen steps.
RECOMPILE_LIMIT = 64

_STEP_IDS = itertools.count()

# States whose buffers a donating step has overwritten (by identity; they die with their last
# reference). Every step refuses them, donating or not: their tensors hold a later state.
_DONATED: weakref.WeakSet[TrainState] = weakref.WeakSet()


def _refuse_donated(state: TrainState) -> None:
    if state in _DONATED:
        raise ValueError(
            f"this TrainState (step {int(state.step)}) was donated to a step made with "
            "donate=True, which wrote the next state into its tensors: use the state that step "
            "returned"
        )


def _raise_recompile_limits() -> None:
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(
        config.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT
    )


def _write_into(old: Tensor, new: Tensor) -> Tensor | None:
    """Donation, inside the compiled update: ``new`` written into ``old`` (inductor turns the
    computation and the copy into one in-place loop) and None returned; a 0-d ``new`` is
    returned instead: torch.compile (2.13) silently drops an in-place write into a 0-d float64
    CPU input (compiled, ``lr.add_(1)`` leaves ``lr`` as it was), and a scalar costs nothing to
    return."""
    if old.ndim == 0:
        return new
    if new is not old:
        old.copy_(new)
    return None


def _written_or_returned(written: Tensor, returned: Tensor | None) -> Tensor:
    return written if returned is None else returned


class Step:
    """The callable ``make_step`` returns. ``forward_fn`` and ``update_fn`` are the (compiled)
    inner functions; ``grad_fn`` and ``grad_acc_fn`` differentiate ``forward_fn``. All four are
    exposed for tests, replay and benchmarks.

    With ``flat=True``, ``forward_fn`` and ``update_fn`` take one flat tensor per bucket of
    ``self.layout`` (:mod:`pureml.core.flat`) instead of one tensor per parameter (and so does
    the optimizer state inside ``update_fn``); ``grad_fn`` and ``grad_acc_fn`` still take and
    return tensors by parameter name."""

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: GradientTransformation | Any,
        *,
        grad_max_norm: float | None,
        grad_ewm_window: int,
        grad_dev_policy: str | None,
        grad_max_dev: float,
        compile: bool,
        backend: str | Callable,
        all_reduce: AllReduce | None,
        dynamic: bool | None,
        param_grad_norms: bool = False,
        flat: bool = False,
        flat_max_bytes: int | None | str = "auto",
        donate: bool = False,
        loss_scale_growth_interval: int = 2000,
    ) -> None:
        if grad_dev_policy not in POLICIES:
            raise ValueError(f"unknown grad_dev_policy {grad_dev_policy!r} (known: {POLICIES})")
        if grad_max_norm is not None and not grad_max_norm > 0:
            raise ValueError(f"grad_max_norm must be > 0 or None, got {grad_max_norm}")
        if grad_ewm_window < 1:
            raise ValueError(f"grad_ewm_window must be >= 1, got {grad_ewm_window}")
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.grad_max_norm = grad_max_norm
        self.grad_ewm_window = grad_ewm_window
        self.grad_dev_policy = grad_dev_policy
        self.grad_max_dev = grad_max_dev
        self.all_reduce = all_reduce
        self.compiled = compile
        self.dynamic = dynamic
        self.param_grad_norms = param_grad_norms
        self.flat = flat
        self.flat_max_bytes = flat_max_bytes
        self.donate = donate
        if loss_scale_growth_interval < 1:
            raise ValueError(
                f"loss_scale_growth_interval must be >= 1, got {loss_scale_growth_interval}"
            )
        self.loss_scale_growth_interval = loss_scale_growth_interval
        # donate=True: the state this step returned last (its buffers are the step's to reuse)
        self._last_out: weakref.ref[TrainState] | None = None
        # flat=True: the layout (built at the first call), the optimizer routing buckets to its
        # groups, and the flat tensors behind the views in the last state handed out
        self.layout: FlatLayout | None = None
        self._bucket_optimizer = optimizer
        self._views = ViewCache()
        self._index_cache: dict[tuple[torch.device, int], Tensor] = {}

        if compile:
            _raise_recompile_limits()

        def wrap(method: Callable) -> Callable:
            if not compile:
                return method
            # torch.compile caches graphs on the code object, with a limit of 8 per code object:
            # a private copy of the code per Step keeps many Steps in one process (phases, tests)
            # from sharing, and exhausting, one cache. Its own name too: dynamo's automatic
            # dynamic shapes remember, per (file, line, name), which sizes and ints changed
            # between calls; shared, another Step's parameter sizes or grad_max_norm made these
            # symbolic here, so the kernels depended on what the process had run before.
            fn = method.__func__
            name = f"{fn.__name__}_step{next(_STEP_IDS)}"
            fresh = types.FunctionType(
                fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__,
                fn.__closure__,
            )  # fmt: skip
            return torch.compile(
                types.MethodType(fresh, self),
                fullgraph=True,
                backend=backend,
                dynamic=False if dynamic is False else None,
            )

        self.forward_fn = wrap(self._forward)
        self.update_fn = wrap(self._update)

    # -- the pure inner functions (compiled) ---------------------------------------------------

    def _forward(
        self, params: dict, buffers: dict, batch: Any, rng: Tensor, step: Tensor, index: Tensor
    ) -> tuple[Tensor, dict]:
        key = fold_in(rng, step, index)
        if self.flat:  # split inside the graph: the backward makes one flat gradient per bucket
            params = self.layout.split(params)
        loss, aux = self.loss_fn(params, buffers, batch, key)
        return loss, {k: v.detach() for k, v in aux.items()}

    def _grads(
        self,
        params: dict,
        buffers: dict,
        batch: Any,
        rng: Tensor,
        step: Tensor,
        index: Tensor,
        scale: Tensor | None = None,
    ) -> tuple[dict, Tensor, dict]:
        # The compiled forward is differentiated by AOTAutograd (one forward and one backward
        # graph). torch.func.grad traced inside torch.compile specialised every batch dimension
        # (each F.linear guarded its input's sizes), so each batch shape compiled a new graph.
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        with torch.enable_grad():
            loss, aux = self.forward_fn(leaves, buffers, batch, rng, step, index)
            # loss scaling seeds the backward with the scale instead of 1: d(scale * loss)
            seed = None if scale is None else scale.to(loss.dtype).expand_as(loss)
            grads = torch.autograd.grad(
                loss, list(leaves.values()), grad_outputs=seed, materialize_grads=True
            )
        return dict(zip(leaves, grads)), loss.detach(), aux

    def _grads_acc(
        self, acc: dict, *args: Any, scale: Tensor | None = None
    ) -> tuple[dict, Tensor, dict]:
        grads, loss, aux = self._grads(*args, scale=scale)
        names = list(acc)
        summed = torch._foreach_add([acc[k] for k in names], [grads[k] for k in names])
        return dict(zip(names, summed)), loss, aux

    def grad_fn(
        self,
        params: dict,
        buffers: dict,
        batch: Any,
        rng: Tensor,
        step: Tensor,
        index: Tensor,
        scale: Tensor | None = None,
    ) -> tuple[dict, Tensor, dict]:
        """Gradients of one sub-batch's loss w.r.t. ``params``, the loss, and the aux losses
        (tensors by parameter name, also with ``flat=True``). With ``scale`` (a state's
        ``loss_scale["scale"]``), the gradients of ``scale * loss``: what ``apply_gradients``
        takes for such a state."""
        if not self.flat:
            return self._grads(params, buffers, batch, rng, step, index, scale)
        flat = self._layout(params).flatten(params)
        grads, loss, aux = self._grads(flat, buffers, batch, rng, step, index, scale)
        return self.layout.views(grads), loss, aux

    def grad_acc_fn(
        self,
        acc: dict,
        params: dict,
        buffers: dict,
        batch: Any,
        rng: Tensor,
        step: Tensor,
        index: Tensor,
        scale: Tensor | None = None,
    ) -> tuple[dict, Tensor, dict]:
        """``grad_fn`` added to the running sum ``acc``."""
        if not self.flat:
            return self._grads_acc(acc, params, buffers, batch, rng, step, index, scale=scale)
        layout = self._layout(params)
        rest = (buffers, batch, rng, step, index)
        flat_acc, flat_params = layout.flatten(acc), layout.flatten(params)
        summed, loss, aux = self._grads_acc(flat_acc, flat_params, *rest, scale=scale)
        return layout.views(summed), loss, aux

    def _update(
        self,
        params: dict,
        opt_state: Any,
        guard: dict,
        grads: dict,
        losses: dict,
        step: Tensor,
        loss_scale: dict | None = None,
    ) -> tuple[dict, Any, dict, Tensor, dict, dict]:
        if self.all_reduce is not None:
            reduced = _all_reduce_tree(
                {
                    **{f"g.{k}": v for k, v in grads.items()},
                    **{f"l.{k}": v for k, v in losses.items()},
                },
                self.all_reduce,
            )
            grads = {k: reduced[f"g.{k}"] for k in grads}
            losses = {k: reduced[f"l.{k}"] for k in losses}
        norm = global_norm(grads)
        # loss scaling: the gradients are scale times the true ones (a power of two: exact)
        unscale = 1.0 / loss_scale["scale"].to(norm.dtype) if loss_scale else None
        if unscale is not None:
            norm = norm * unscale
        names = list(grads)
        per_param: dict[str, Tensor] = {}
        if self.param_grad_norms:
            by_name = self.layout.split(grads) if self.flat else grads
            per_param = dict(zip(by_name, torch._foreach_norm(list(by_name.values()))))
            if unscale is not None:
                per_param = {k: v * unscale for k, v in per_param.items()}
        if self.grad_max_norm is not None:
            clip = clip_coefficient(norm, self.grad_max_norm)
        else:
            clip = torch.ones((), dtype=norm.dtype, device=norm.device)
        new_guard, outcome = guard_update(
            guard,
            norm,
            window=self.grad_ewm_window,
            max_dev=self.grad_max_dev,
            policy=self.grad_dev_policy,
            clipped_norm=norm * clip,
        )
        # The guard's statistics (float64 EWM arithmetic) feed every parameter's update: each
        # is computed once per step, not inlined into the parameter loops (per_step_scalar).
        factor = clip.to(torch.float64) * outcome.scale
        if unscale is not None:
            factor = factor * unscale.to(torch.float64)
        coef = per_step_scalar(factor.to(norm.dtype))
        grads = dict(zip(names, torch._foreach_mul([grads[k] for k in names], coef)))
        updates, new_opt = self._bucket_optimizer.update(grads, opt_state, params)
        new_params = apply_updates(params, updates)
        skip = per_step_scalar(outcome.skip.to(torch.uint8)).bool()
        new_params = tree_select(skip, params, new_params)
        new_opt = tree_select(skip, opt_state, new_opt)
        metrics = {"loss": losses["loss"]}
        metrics.update({f"loss/{k[4:]}": v for k, v in losses.items() if k.startswith("aux/")})
        metrics["grad_norm"] = norm
        metrics.update({f"grad_norm/{k}": n for k, n in per_param.items()})
        metrics.update({f"lr/{g}": lr for g, lr in learning_rates(new_opt).items()})
        metrics["spike"] = outcome.spike
        metrics["skipped"] = skip
        new_scale = {}  # no scaling: the state keeps no statistics
        if loss_scale:
            metrics["loss_scale"] = loss_scale["scale"]  # the scale this step's backward used
            new_scale = update_loss_scale(
                loss_scale, torch.isfinite(norm), growth_interval=self.loss_scale_growth_interval
            )
        if self.donate:
            new_params, new_opt = tree_map(_write_into, (params, opt_state), (new_params, new_opt))
        return new_params, new_opt, new_guard, step + 1, metrics, new_scale

    # -- the eager driver ------------------------------------------------------------------------

    def layout_of(self, state: TrainState) -> FlatLayout:
        """The flat layout of ``state``'s params (``flat=True``; built at the first call)."""
        return self._layout(state.params)

    def _layout(self, params: Mapping[str, Tensor]) -> FlatLayout:
        if self.layout is None:
            group_of = getattr(self.optimizer, "group_of", None)
            max_bytes = self.flat_max_bytes
            if max_bytes == "auto":
                on_cpu = next(iter(params.values())).device.type == "cpu"
                max_bytes = CPU_BUCKET_BYTES if on_cpu else None
            self.layout = FlatLayout.build(
                params,
                (lambda n: group_of(n).name) if group_of is not None else None,
                max_bytes=max_bytes,
            )
            if hasattr(self.optimizer, "with_keys"):
                self._bucket_optimizer = self.optimizer.with_keys(
                    {b.key: b.names[0] for b in self.layout.buckets}
                )
        if len(params) != len(self.layout.names):
            raise ValueError(
                f"flat step: {len(params)} parameters, but the layout built at the first call "
                f"has {len(self.layout.names)}"
            )
        return self.layout

    def _index(self, i: int, device: torch.device) -> Tensor:
        key = (device, i)
        if key not in self._index_cache:
            self._index_cache[key] = torch.tensor(i, dtype=torch.int64, device=device)
        return self._index_cache[key]

    def __call__(
        self,
        state: TrainState,
        sub_batches: Sequence[Any],
        *,
        first_index: int = 0,
        indices: Sequence[int] | None = None,
    ) -> tuple[TrainState, dict[str, Tensor]]:
        """Run one optimizer step over ``sub_batches`` (their gradients are summed); sub-batch
        ``i``'s dropout key follows ``indices[i]`` (default ``first_index + i``)."""
        if indices is not None and len(indices) != len(sub_batches):
            raise ValueError(f"{len(indices)} indices for {len(sub_batches)} sub-batches")
        if isinstance(sub_batches, Mapping):  # one batch: its keys would be the sub-batches
            raise TypeError(
                "step(state, sub_batches) takes a list of batches: step(state, [batch])"
            )
        if len(sub_batches) == 0:
            raise ValueError("step needs at least one sub-batch")
        _refuse_donated(state)
        device = state.rng.device
        params, opt = self._inputs(state)
        scale = state.loss_scale["scale"] if state.loss_scale else None
        grads: dict[str, Tensor] | None = None
        losses: dict[str, Tensor] = {}
        for i, batch in enumerate(sub_batches):
            if self.compiled and self.dynamic is True:
                _mark_dynamic(batch)
            index = self._index(indices[i] if indices is not None else first_index + i, device)
            args = (params, state.buffers, batch, state.rng, state.step, index)
            if grads is None:
                grads, loss, aux = self._grads(*args, scale=scale)
            else:
                grads, loss, aux = self._grads_acc(grads, *args, scale=scale)
            # Per-sub-batch losses are 0-d: summing them eagerly costs little and lets the
            # components differ between sub-batches.
            for k, v in (("loss", loss), *((f"aux/{k}", v) for k, v in aux.items())):
                if k in losses:
                    losses[k] = losses[k] + v
                else:
                    # A loss_fn may return one tensor under two names; aliased inputs would make
                    # the compiled update recompile when the aliasing changes.
                    losses[k] = v.clone() if any(v is w for w in losses.values()) else v
        return self._apply(state, params, opt, grads, losses)

    def _inputs(self, state: TrainState) -> tuple[dict[str, Tensor], Any]:
        """The params and optimizer state as the compiled functions take them."""
        if not self.flat:
            return state.params, state.opt
        # the flat tensors behind the state's views (copied only if they are not such views)
        layout = self._layout(state.params)
        return layout.flatten(state.params, self._views), layout.pack(state.opt, self._views)

    def apply_gradients(
        self, state: TrainState, grads: dict[str, Tensor], losses: dict[str, Tensor]
    ) -> tuple[TrainState, dict[str, Tensor]]:
        """The second half of a step: clip, guard and apply ``grads`` (summed over the
        sub-batches; with ``flat=True`` one tensor per bucket, as the flat backward makes them:
        ``self.layout.flatten(grads_by_name)``); ``losses`` holds ``"loss"`` and ``"aux/<name>"``.
        For a state with a loss scale, ``grads`` are those of the scaled loss (``grad_fn(...,
        scale=state.loss_scale["scale"])``): they are divided by the scale here.

        >>> from pureml import optim
        >>> opt = optim.sgd(0.5)
        >>> step = make_step(lambda *a: None, opt, compile=False, flat=True)
        >>> state = init_state({"w": torch.ones(2)}, optimizer=opt)
        >>> grads = step.layout_of(state).flatten({"w": torch.ones(2)})
        >>> new, metrics = step.apply_gradients(state, grads, {"loss": torch.tensor(0.0)})
        >>> new.params["w"].tolist(), float(metrics["grad_norm"])
        ([0.5, 0.5], 1.4142135381698608)
        """
        _refuse_donated(state)
        return self._apply(state, *self._inputs(state), grads, losses)

    def adopt(self, state: TrainState) -> TrainState:
        """With ``donate=True``: let the next call write into ``state``'s tensors without
        copying them first, as if this step had returned it; for a state whose tensors nothing
        else holds (fresh from ``init_state`` over copies, or loaded from a checkpoint), so that
        not even the first step holds two copies of the params and moments. Returns ``state``.

        >>> from pureml import optim
        >>> step = make_step(lambda *a: None, optim.sgd(0.5), compile=False, donate=True)
        >>> state = step.adopt(init_state({"w": torch.ones(2)}, optimizer=optim.sgd(0.5)))
        >>> w = state.params["w"]
        >>> new, _ = step.apply_gradients(state, {"w": torch.ones(2)}, {"loss": torch.tensor(0.0)})
        >>> new.params["w"] is w, w.tolist()
        (True, [0.5, 0.5])
        """
        _refuse_donated(state)
        if self.donate:
            self._last_out = weakref.ref(state)
        return state

    def _apply(
        self, state: TrainState, params: dict, opt: Any, grads: dict, losses: dict
    ) -> tuple[TrainState, dict[str, Tensor]]:
        owned = False
        if self.donate:
            owned = self._last_out is not None and self._last_out() is state
            if not owned:  # the caller's tensors (or views of them) are not ours to overwrite
                params, opt = tree_map(torch.clone, (params, opt))
        new_params, new_opt, new_guard, new_step, metrics, new_scale = self.update_fn(
            params, opt, state.guard, grads, losses, state.step, state.loss_scale
        )
        if self.donate:
            new_params, new_opt = tree_map(
                _written_or_returned, (params, opt), (new_params, new_opt)
            )
            if owned:
                _DONATED.add(state)
        if self.flat:  # the state keeps tensors by name: views of the new flat tensors
            self._views.reset()
            new_params = self.layout.views(new_params, self._views)
            new_opt = self.layout.unpack(new_opt, self._views)
        hparams = {k: v for k, v in metrics.items() if k.startswith("lr/")}
        new_state = state.replace(
            step=new_step,
            params=new_params,
            opt=new_opt,
            guard=new_guard,
            hparams=hparams,
            loss_scale=new_scale,
        )
        if self.donate:
            self._last_out = weakref.ref(new_state)
        return new_state, metrics


def make_step(
    loss_fn: LossFn,
    optimizer: GradientTransformation | Any,
    *,
    grad_max_norm: float | None = 5.0,
    grad_ewm_window: int = 100,
    grad_dev_policy: str | None = None,
    grad_max_dev: float = 7.0,
    compile: bool = True,
    backend: str | Callable = "inductor",
    all_reduce: AllReduce | None = None,
    dynamic: bool | None = True,
    param_grad_norms: bool = False,
    flat: bool = False,
    flat_max_bytes: int | None | str = "auto",
    donate: bool = False,
    loss_scale_growth_interval: int = 2000,
) -> Step:
    """Build ``step(state, sub_batches, *, first_index=0, indices=None) -> (state, metrics)``.

    ``loss_fn(params, buffers, batch, key) -> (loss, aux)``: ``loss`` is differentiated, ``aux``
    is a dict of 0-d tensors logged as ``"loss/<name>"``. Metrics (0-d tensors): ``loss``,
    ``loss/<name>``, ``grad_norm`` (before clipping), ``lr/<group>``, ``spike``, ``skipped``.
    ``all_reduce(flat) -> flat`` sums a 1-D tensor across ranks (one call per dtype, gradients
    and losses together); the sub-batch dropout key is ``fold_in(rng, step, first_index + i)``,
    so rank ``r`` passes ``first_index = r * n_local`` (or each sub-batch's global index in
    ``indices``: ``pureml.distributed.sub_batch_indices``).
    ``compile=False`` runs the very same functions eagerly. ``dynamic``: ``True`` marks every
    batch dimension dynamic from the first call (one graph for all lengths, the same kernels
    whatever shapes came first); ``False`` compiles each shape statically (pad to a few buckets;
    torch recompiles at most 8 times per function by default); ``None`` leaves torch's
    automatic dynamic shapes (history-dependent kernels: not bitwise-replayable).
    ``param_grad_norms=True`` adds ``grad_norm/<param>``: each parameter's gradient norm before
    clipping (``log_weight_grads``).
    ``flat=True`` stores the parameters and optimizer moments in one flat tensor per (optimizer
    group, dtype, device) (:mod:`pureml.core.flat`): the compiled functions take a few tensors
    instead of a few per parameter (much less host overhead on a GPU) and the backward produces
    flat gradients directly. The state still holds tensors by name, as views of those flat
    tensors (found again without copying at the next call). The global gradient norm is then
    reduced over the flat tensors (a different rounding than over each tensor: with clipping,
    results differ from ``flat=False`` by rounding; without, they are bitwise equal).
    ``flat_max_bytes`` caps a bucket's size (``None``: no cap; ``"auto"``: 16 MiB on a CPU,
    where glibc maps each larger block afresh, page faults included, at every step, and no cap
    elsewhere).
    ``donate=True`` updates the params and optimizer state in place (JAX's buffer donation): the
    state passed in is consumed (any step refuses it afterwards) unless it is not the one this
    step returned last, in which case its tensors are copied first and left untouched.
    A state made with ``init_state(..., loss_scale=2.0**16)`` trains with dynamic loss scaling
    (float16 autocast; :mod:`pureml.core.loss_scale`): the metric ``loss_scale`` is the scale
    the step used; it doubles after ``loss_scale_growth_interval`` finite steps in a row.

    >>> from pureml import optim
    >>> def loss_fn(params, buffers, batch, key):
    ...     loss = ((params["w"] * batch["x"]).sum() - 1.0) ** 2
    ...     return loss, {"main": loss}
    >>> opt = optim.sgd(0.1)
    >>> state = init_state({"w": torch.zeros(3)}, optimizer=opt)
    >>> step = make_step(loss_fn, opt, compile=False)
    >>> state, metrics = step(state, [{"x": torch.ones(3)}])
    >>> float(metrics["loss"]), state.params["w"].tolist()
    (1.0, [0.20000000298023224, 0.20000000298023224, 0.20000000298023224])
    """
    return Step(
        loss_fn,
        optimizer,
        grad_max_norm=grad_max_norm,
        grad_ewm_window=grad_ewm_window,
        grad_dev_policy=grad_dev_policy,
        grad_max_dev=grad_max_dev,
        compile=compile,
        backend=backend,
        all_reduce=all_reduce,
        dynamic=dynamic,
        param_grad_norms=param_grad_norms,
        flat=flat,
        flat_max_bytes=flat_max_bytes,
        donate=donate,
        loss_scale_growth_interval=loss_scale_growth_interval,
    )
