"""Ray mode: K actors in a placement group form one torch.distributed (gloo) group and run the
same loop as torchrun. Tensors travel over gloo (~0.2 ms a send here, vs ~2 ms for a Ray call
per 64 KB tensor); Ray places, supervises and collects metrics. If an actor dies, the whole
group is restarted from the last checkpoint, up to ``max_restarts`` times.

The spec travels by import path (``--spec``/``--task``) or, from :func:`dni_dist.fit`, by value;
every actor resolves it before training starts, and one that cannot fails the run at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import time

from ..config import Config


class SpecUnavailable(RuntimeError):
    """The actors cannot build the spec (not importable there): never retried."""


class Stopped(RuntimeError):
    """The driver got SIGTERM: the actors were stopped and Ray shut down (exit 143)."""


_signalled: list = []  # SIGTERM numbers received while the driver waited on the actors


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("--backend ray needs Ray: pip install 'dni_dist[ray]' (or pip install ray)") from e
    return ray


def _actor_class(ray):
    @ray.remote(num_cpus=1, max_restarts=0)
    class RankActor:
        def prepare(self, cfg: Config, spec_bytes: bytes | None, driver_path: list, local: bool) -> str:
            """Resolve the spec here (so a spec this node cannot import fails before anything
            runs) and return a rendezvous address on this node: loopback for a private local
            Ray, the node's address on a cluster. The driver's import path is appended (where
            those folders exist here) so a spec module beside the driver imports as it did there."""
            import pickle
            import sys

            from .spec_source import resolve_spec
            for entry in driver_path:
                if entry not in sys.path and os.path.isdir(entry):
                    sys.path.append(entry)
            from ..spec import guard
            try:
                self.spec = guard(pickle.loads(spec_bytes) if spec_bytes is not None else resolve_spec(cfg))
            except Exception as e:  # noqa: BLE001 - reported to the driver as what it is
                raise SpecUnavailable(f"a Ray actor cannot load the spec ({type(e).__name__}: {e})") from None
            host = "127.0.0.1" if local else ray.util.get_node_ip_address()
            s = socket.socket()
            s.bind((host, 0))
            port = s.getsockname()[1]
            s.close()
            return f"{host}:{port}"

        def run(self, cfg: Config, rank: int, world: int, addr: str) -> dict:
            import datetime

            import torch.distributed as dist

            from .distributed import run_rank
            if addr.startswith("127.0.0.1:"):  # one machine: keep gloo's pairs on loopback too
                os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            dist.init_process_group("gloo", init_method=f"tcp://{addr}", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=cfg.timeout_s))
            try:
                model, m = run_rank(cfg, self.spec, rank, world)
            except Exception as e:
                from .common import EndOfRunError
                if isinstance(e, EndOfRunError) and rank == 0 and e.metrics is not None and e.model is not None:
                    e.metrics["model_state"] = {k: v.detach().cpu() for k, v in e.model.state_dict().items()}
                raise
            finally:
                dist.destroy_process_group()
            if rank == 0:
                m["model_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            return m

    return RankActor


def run(cfg: Config, spec=None, spec_value=None):
    """Train on Ray actors; returns ``(model or None, metrics)``. ``spec_value`` is a Spec object
    sent by value (from :func:`dni_dist.fit`); otherwise the actors load ``cfg``'s spec."""
    ray = _import_ray()
    if cfg.device == "cuda":
        raise ValueError("--backend ray --device cuda is not supported: the Ray actors reserve CPUs and talk "
                         "gloo. For GPUs launch with torchrun (NCCL, one GPU per process)")
    started = init_ray(ray, cfg)
    spec_bytes = None
    if spec_value is not None:
        import ray.cloudpickle as cloudpickle
        spec_bytes = cloudpickle.dumps(spec_value)
    driver_path = [os.path.abspath(p or os.getcwd()) for p in sys.path]
    try:
        with _sigterm_noted():
            return _attempts(ray, cfg, spec, _actor_class(ray), spec_bytes, driver_path)
    finally:
        if started:
            ray.shutdown()


def _attempts(ray, cfg: Config, spec, actor_cls, spec_bytes, driver_path):
    """Place the actors and run them; after a failure, restart the group from its checkpoint."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from .common import EndOfRunError
    attempt, t0 = 0, time.perf_counter()
    while True:
        pg = placement_group([{"CPU": 1}] * cfg.workers, strategy="PACK")
        start_limit = max(cfg.timeout_s, 300.0)  # starting actors imports torch in each: slow on a busy node
        ray.get(pg.ready(), timeout=start_limit)
        actors = [actor_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=k)).remote() for k in range(cfg.workers)]
        try:
            addrs = ray.get([a.prepare.remote(cfg, spec_bytes, driver_path, not cfg.ray_address)
                             for a in actors], timeout=start_limit)
            run_cfg = dataclasses.replace(cfg, resume=cfg.resume or attempt > 0)
            futures = [a.run.remote(run_cfg, k, cfg.workers, addrs[0]) for k, a in enumerate(actors)]
            results = _supervise(ray, futures)
            out = results[0]
            out["restarts"] = attempt
            out["wall_s_total"] = time.perf_counter() - t0
            out["peak_rss_mb_per_rank"] = [r["peak_rss_mb"] for r in results]
            return _model(spec, out.pop("model_state")), out
        except Exception as e:
            if isinstance(e, Stopped):
                raise
            if _is_final(ray, e) or attempt >= cfg.max_restarts or not cfg.checkpoint_dir:
                err = _unwrap(ray, e)
                if isinstance(err, EndOfRunError) and err.metrics is not None:  # the run ended; its end failed
                    err.model = _model(spec, err.metrics.pop("model_state", None))
                raise err from None
            attempt += 1
            print(f"dni_dist[ray]: worker group failed ({type(e).__name__}: {str(e)[:200]}); "
                  f"restart {attempt}/{cfg.max_restarts} from the last checkpoint", flush=True)
        finally:
            for a in actors:
                ray.kill(a)
            remove_placement_group(pg)


def _model(spec, state):
    """The trained model rebuilt in the driver from rank 0's weights (None without a spec)."""
    if spec is None or state is None:
        return None
    model = spec.model()
    model.load_state_dict(state)
    return model


def init_ray(ray, cfg: Config) -> bool:
    """Connect to ``cfg.ray_address``, or start a private instance (``address="local"``: never
    attach to another job's cluster on this machine). Returns whether this call started Ray.
    On Linux the private instance advertises 127.0.0.2, a loopback address: Ray replaces
    127.0.0.1 and "localhost" by the machine's interface address, but not the rest of 127/8
    (which Linux routes to the loopback device). SECURITY.md has what still listens where."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # actors' lines without ANSI colour codes
    # Ray turns token authentication on by default for a local instance, and warns that it did on
    # every start: keep the default (SECURITY.md), drop the warning
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NoTokenNotice())
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    else:
        # metrics collection off: its Prometheus endpoint would listen on every interface without a token
        loopback = {"_node_ip_address": "127.0.0.2"} if sys.platform.startswith("linux") else {}
        with _no_metrics_servers():
            ray.init(address="local", num_cpus=max(cfg.workers, 2), include_dashboard=False, log_to_driver=True,
                     logging_level=logging.WARNING, _system_config={"enable_metrics_collection": False}, **loopback)
    return True


@contextlib.contextmanager
def _no_metrics_servers():
    """While a private Ray starts: no autoscaler monitor (a fixed-size local instance needs none) and
    a minimal dashboard head. Both would serve Prometheus metrics on every interface, without a
    token, on fixed ports (44217, 44227): Ray binds them to loopback only for a node address of
    127.0.0.1, which it never keeps. Ray's private functions: skipped if they are not there."""
    try:
        import ray._private.node as node
        import ray._private.services as services
        from ray._private import ray_constants
        start_process, start_monitor = services.start_ray_process, node.Node.start_monitor
    except (ImportError, AttributeError):
        yield
        return

    def start(command, process_type, *args, **kwargs):
        if process_type == ray_constants.PROCESS_TYPE_DASHBOARD and "--minimal" not in command:
            command = [*command, "--minimal"]
        return start_process(command, process_type, *args, **kwargs)

    services.start_ray_process, node.Node.start_monitor = start, lambda self: None
    try:
        yield
    finally:
        services.start_ray_process, node.Node.start_monitor = start_process, start_monitor


class _NoTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


@contextlib.contextmanager
def _sigterm_noted():
    """SIGTERM while the driver waits: noted here, acted on by :func:`_supervise` (stop the actors,
    shut Ray down, exit 143), never raised from inside Ray's own code (a stack dump, exit 134).
    The previous handler is restored after."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _signalled.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _signalled.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _is_final(ray, e: Exception) -> bool:
    """Errors a restart cannot help: the spec unavailable or raising, the run's end failing."""
    from ..spec import SpecError
    from .common import EndOfRunError
    return isinstance(_unwrap(ray, e), (SpecUnavailable, SpecError, EndOfRunError))


def _unwrap(ray, e: Exception) -> Exception:
    cause = getattr(e, "cause", None)
    return cause if isinstance(e, ray.exceptions.RayTaskError) and isinstance(cause, Exception) else e


def _supervise(ray, futures) -> list:
    """Wait for all ranks as long as they are healthy; the first failure (an exception, or a dead
    actor) fails the group at once. A stuck peer is caught by the workers' own timeouts on
    every receive and all-reduce (--timeout-s), so no bound on the run's length is needed here."""
    pending = list(futures)
    done_results = {}
    while pending:
        if _signalled:
            raise Stopped("stopped by SIGTERM: the Ray actors were stopped (the last checkpoint, if any, is kept)")
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for r in ready:
            done_results[futures.index(r)] = ray.get(r)  # raises RayActorError / the worker's error
    return [done_results[k] for k in range(len(futures))]
