"""The seed API: the bookkeeping behind ``backward_synthetic`` and ``step`` in a user's own loop.

A :class:`SeedAPI` is mixed into :class:`dni_dist.Synthesizer`, whose prediction, injection and
regression it calls (``synthetic_gradient``, ``injection_scale``, ``accumulate``,
``finish_update``). What lives here is which boundary waits for which gradient: the state
returned at one call learns its target once the next chunk's backward has run (one-step), or
once the next boundary's target is known too (``lookahead=2``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from . import targets as tg
from .targets import State


@dataclass
class _Pending:
    """A boundary whose target is not known yet: the state we returned at call ``call``."""
    call: int
    state: State                    # detached leaf that requires grad; its .grad becomes delta
    sg_part: State | None = None    # J^T g of the next chunk's injected gradient (discount != 1)
    rerun: tuple | None = None      # lookahead=2: (model, weights it ran with, inputs, injected g) of that chunk
    delta: State | None = None      # lookahead=2: kept while waiting for the next cut's target
    one_step: State | None = None   # lookahead=2: its one-step target (used if no next target comes)
    end: bool = False               # returned by the last call before step(): dropped if nothing follows it
    index: int = 0                  # the clock's count at the chunk that ended at this cut (Synthesizer.keep_cut)


class SeedAPI:
    """``backward_synthetic`` / ``step`` / ``reset`` of :class:`dni_dist.Synthesizer`."""

    def backward_synthetic(self, hn: State, loss: torch.Tensor | None = None, *, last: bool = False,
                           model: nn.Module | None = None, inputs=None) -> State:
        """Inject the synthetic gradient at ``hn`` and return ``hn`` detached, requiring grad.

        Call it before ``loss.backward()``. With ``loss`` given, the synthetic gradient is folded
        into ``loss`` in place (its value does not change), so the user's ``loss.backward()``
        carries both and an ``optimizer.zero_grad()`` in between cannot lose it. Without ``loss``,
        it is back-propagated at once (the graph is retained for the user's backward).

        Args:
            hn: the final state of the chunk, still attached to its graph.
            loss: the chunk's scalar loss (optional).
            last: True when nothing follows ``hn`` (end of the sequence): no synthetic gradient
                is injected and the boundary is not trained. Without it, a boundary that turns
                out unused is trained toward zero (``use_improvement``).
            model, inputs: needed with ``lookahead=2`` (ignored otherwise): the module that ran
                this chunk, called as ``model(inputs, state) -> (out, end_state)`` as ``nn.LSTM``
                is, and this chunk's inputs. A chunk later the chunk is run again from its start
                with a copy of the weights it ran with (taken now, before your optimizer step) to
                carry the next cut's target back through it. With dropout the re-run draws new masks.
        Returns:
            The state to feed the next chunk (a leaf that requires grad).
        """
        self.check_state(hn, "hn")
        self._follow(hn)  # built (sizes from hn) and on its device before anything else
        if self.lookahead == 2 and (model is None or inputs is None):
            raise ValueError("Synthesizer(lookahead=2) runs each chunk again a chunk later, so backward_synthetic "
                             "needs it: pass synth.backward_synthetic(hn, loss, model=model, inputs=x), with "
                             "model(x, state) -> (out, hn) the module that ran this chunk and x its inputs")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model must be the nn.Module that ran this chunk; got {type(model).__name__}")
        parts = tg.as_tuple(hn)
        if not any(t.requires_grad for t in parts):
            raise ValueError("hn carries no graph (requires_grad=False): pass the state returned by the RNN "
                             "for this chunk, before any detach(), and feed the previous chunk the state "
                             "backward_synthetic returned")
        if loss is not None:
            if not torch.is_tensor(loss) or loss.dim() != 0:
                shape = tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__
                raise ValueError(f"loss must be a scalar (0-dim) tensor; got {shape}: reduce it with .mean() or .sum()")
            if not loss.requires_grad:
                raise ValueError("loss does not require grad: it must come from this chunk's forward pass")
        if self._last_hn is not None and any(r() is t for r, t in zip(self._last_hn, parts)):
            raise ValueError("backward_synthetic was called twice on the same state: the synthetic gradient "
                             "would be injected twice. Call it once per chunk, on the state the RNN returned")
        prev = self._pending[-1] if self._pending else None
        if prev is not None and prev.call == self._calls:
            if any(t.grad is not None for t in tg.as_tuple(prev.state)):
                raise ValueError("backward_synthetic was called after this chunk's loss.backward(): the synthetic "
                                 "gradient must be folded into the loss before it is back-propagated. Call "
                                 "hn = synth.backward_synthetic(hn, loss) first, then loss.backward()")
        self._check_backpropagated()
        self._last_hn = [weakref.ref(t) for t in parts]  # weak: never keeps a graph alive
        self._calls += 1
        self._resolve(upto=self._calls - 2)  # boundaries whose next chunk has been backpropagated
        if loss is not None:
            loss.add_(self._probe_for(loss))  # + 0: tells the next call (or step) that loss.backward() ran after this
        index = self.ticks()  # this chunk's place on the gate's clock
        self.tick()
        if last:
            return tg.detach_requires_grad(hn)
        g = self.inject(hn)  # None while the gate reads shut: nothing to predict, inject or take J^T of
        start = self._pending[-1] if self._pending and self._pending[-1].call == self._calls - 1 else None
        if g is not None and start is not None and self.discount != 1.0:
            start.sg_part = tg.synthetic_vjp(hn, start.state, g)
        if start is not None and self.lookahead == 2:
            injected = g if g is not None else tg.like([torch.zeros_like(t) for t in parts], hn)
            start.rerun = (model, tg.snapshot(model), inputs.detach() if torch.is_tensor(inputs) else inputs, injected)
        if g is not None:
            if loss is not None:
                loss.add_(tg.surrogate(hn, g))
            else:
                torch.autograd.backward(list(parts), list(tg.as_tuple(g)), retain_graph=True)
        out = tg.detach_requires_grad(hn)
        self._cuts += 1
        if (self._cuts - 1) % self.train_every == 0:  # train_every > 1: the other cuts are not trained
            self._pending.append(_Pending(self._calls, out, index=index))
        return out

    def _probe_for(self, loss: torch.Tensor) -> torch.Tensor:
        """A zero leaf that requires grad, added to ``loss``: it gets a gradient exactly when that loss
        is back-propagated after this call (no value is read to find out)."""
        probe = self._probe
        if probe is None or probe.device != loss.device or probe.dtype != loss.dtype:
            probe = self._probe = torch.zeros((), device=loss.device, dtype=loss.dtype, requires_grad=True)
        probe.grad = None
        self._probe_armed = True
        return probe

    def _check_backpropagated(self) -> None:
        if self._probe_armed and self._probe.grad is None:
            self._probe_armed = False
            raise ValueError("the loss passed to the previous backward_synthetic was not back-propagated after that "
                             "call: call hn = synth.backward_synthetic(hn, loss) first, then loss.backward() "
                             "(backward_synthetic after loss.backward() injects nothing)")
        self._probe_armed = False

    def step(self) -> None:
        """Update the synthesizer on every boundary whose target is known. Call after the
        sequence (or a truncation window) once its ``loss.backward()`` has run.

        The boundary returned by the last ``backward_synthetic`` is the end of the sequence: if
        the next chunk does not run from it (a new sequence starts), it is dropped, as the engine
        drops a sequence's end; if it does (a stream carried across windows), it is trained as usual."""
        self._check_backpropagated()
        if self._pending and self._pending[-1].call == self._calls:
            self._pending[-1].end = True
        self._resolve(upto=self._calls - 1)

    def _resolve(self, upto: int) -> None:
        ready = [p for p in self._pending if p.call <= upto]
        if not ready:
            return
        self._pending = [p for p in self._pending if p.call > upto]
        bounds, tars = [], []
        for p in ready:
            target = self._one_step(p)
            if self.lookahead == 2:
                w, self._waiting = self._waiting, None
                if w is not None:  # its two-step target needed this cut's one-step target
                    bounds.append(w.state)
                    tars.append(self._two_step(w, target) if target is not None and w.call == p.call - 1
                                else w.one_step)
                # a chunk ran from it with g after: wait (a dropped state has no delta: its zero target is final)
                if target is not None and p.delta is not None:
                    p.one_step, self._waiting = target, p
                    continue
            if target is not None and self.keep_cut(p.index):
                bounds.append(p.state)
                tars.append(target)
        if not bounds:  # an update on nothing changes nothing
            return
        self._clear_grads()
        self.finish_update(self.accumulate(bounds, tars))

    def _one_step(self, p: _Pending) -> State | None:
        """The one-step target of a resolved boundary (zeros when nothing followed it; None when
        such a boundary is dropped). With lookahead=2 its delta is kept for the two-step target."""
        grads = [t.grad for t in tg.as_tuple(p.state)]
        if all(g is None for g in grads):  # nothing followed this boundary
            if p.end:  # the end of a sequence (step() came after it): no cut, as in the engine
                self._host["dropped_ends"] += 1
                return None
            if not self.use_improvement:
                return None
            self._host["zero_targets"] += 1
            return tg.like([torch.zeros_like(t) for t in tg.as_tuple(p.state)], p.state)
        delta = tg.like([torch.zeros_like(t) if g is None else g for g, t in zip(grads, tg.as_tuple(p.state))],
                        p.state)
        if p.rerun is not None:
            p.delta = delta
        return tg.bootstrap_target(delta, p.sg_part, self.discount)

    def _two_step(self, w: _Pending, next_target: State) -> State:
        model, weights, inputs, g = w.rerun
        w.rerun = None  # frees the copy of the weights
        return tg.two_step_target(w.delta, g, next_target,
                                  lambda cot: tg.chunk_vjp(model, weights, inputs, w.state, cot),
                                  self.discount, self.lookahead_weight)

    def reset(self) -> None:
        """Forget boundaries that are waiting for a target (e.g. between training and evaluation)."""
        self._pending: list[_Pending] = []
        self._waiting: _Pending | None = None  # lookahead=2: a resolved cut waiting for the next cut's target
        self._last_hn = None                   # weak references to the last state passed in
        self._probe: torch.Tensor | None = getattr(self, "_probe", None)  # see _probe_for
        self._probe_armed = False

