"""A long-lived ClientApp worker for a SuperNode started with ``--isolation process`` (Flower 1.42).

By default a SuperNode runs Flower's SuperExec, which starts a fresh ``flwr-clientapp`` process for every
message: it imports torch, Flower and brmtrl and rebuilds the node's data and model each time (about 2 s
per message on a 2-core CPU, ``benchmarks/clientapp_start.py``). This worker takes SuperExec's place: it
asks the SuperNode's Runtime API for ClientApp tasks, as SuperExec does, and runs each one in its own
process, one after the other, with brmtrl's ClientApp imported once and its nodes (data, model) kept
between messages (:data:`brmtrl.flower.client_app._NODES`). What a task does is what ``flwr-clientapp``
does with it (pull the message and context, run the app, push the reply, the context and the task's
status), minus installing the FAB: the worker runs brmtrl's own ClientApp, whatever the FAB names.

    flower-supernode --isolation process --port 9094 ... &
    python -m brmtrl.flower.warm_worker --runtime-api-address 127.0.0.1:9094 --insecure

Trade-off: the messages of every run a SuperNode serves share one process (no isolation between runs, a
crash of the app ends the worker); keep Flower's default for that. Needs Flower 1.42 (1.41's Runtime API
is another protocol): a clear error otherwise. ``brmtrl deploy-local --warm-clientapp`` starts one per
SuperNode.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Callable

__all__ = ["WarmWorkerError", "check_available", "main", "serve"]

log = logging.getLogger("brmtrl")


class WarmWorkerError(RuntimeError):
    """The worker cannot run here (Flower version, address)."""


def _flower() -> dict[str, Any]:
    """The Flower 1.42 internals the worker speaks with (imported once, named in one place)."""
    try:
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output
    except ImportError as exc:
        import flwr

        raise WarmWorkerError(f"the warm ClientApp worker needs Flower 1.42 (installed: {flwr.__version__}): "
                              f"{exc}") from None
    return dict(locals())


def check_available() -> None:
    """Raise :class:`WarmWorkerError` (naming the installed Flower) where the worker cannot run."""
    _flower()


def _client(fl: dict[str, Any], address: str, insecure: bool, certificates: bytes | None,
            *interceptors: Any) -> Any:
    return fl["RuntimeHttpClient"].from_server_address(
        server_address=address, insecure=insecure, root_certificates=certificates,
        interceptors=[fl["RuntimeVersionHttpInterceptor"](component_name="flwr-clientapp"), *interceptors],
        retry_invoker=fl["make_simple_http_retry_invoker"]())


def run_task(fl: dict[str, Any], app: Callable[..., Any], address: str, token: str, insecure: bool,
             certificates: bytes | None) -> bool:
    """One ClientApp task in this process, as ``flwr-clientapp --token`` runs it: pull the message and its
    context, run ``app``, push the reply (an error reply if the app raised), the context and the status.
    Returns whether the app completed."""
    client = _client(fl, address, insecure, certificates, fl["RuntimeTokenHttpInterceptor"](token))
    heartbeat = fl["HeartbeatSender"](fl["make_task_heartbeat_fn_http"](client))
    message = reply = context = None
    status, details = fl["SubStatus"].FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, _run, _fab = fl["pull_task_input"](client)
        reply = app(message=message, context=context)
        status, details = fl["SubStatus"].COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - the app's failure is the reply, as in flwr-clientapp
        details = f"{type(exc)}:<'{exc}'>"
        log.error("ClientApp raised an exception", exc_info=exc)
        if message is not None:
            reply = fl["Message"](fl["Error"](code=fl["ErrorCode"].CLIENT_APP_RAISED_EXCEPTION, reason=details),
                                  reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                fl["push_message"](client, reply, context)
            fl["push_task_output"](client=client, context=context, sub_status=status, details=details)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()
    return status == fl["SubStatus"].COMPLETED


def serve(address: str, *, insecure: bool = True, root_certificates: str | None = None, poll_s: float = 0.1,
          max_poll_s: float = 0.5, max_tasks: int | None = None) -> int:
    """Serve the SuperNode whose Runtime API is at ``address`` until killed (or ``max_tasks`` tasks);
    returns the number of tasks run. Right after a task it asks for the next one; while none comes it waits
    ``poll_s``, then twice as long each time, up to ``max_poll_s`` (an idle worker asks twice a second
    rather than ten times: each request costs the worker and its SuperNode about 4 ms of CPU)."""
    if not 0 < poll_s <= max_poll_s:
        raise WarmWorkerError(f"poll intervals must satisfy 0 < --poll ({poll_s}) <= --max-poll ({max_poll_s})")
    fl = _flower()
    from .client_app import app  # noqa: PLC0415 - imported once, kept for every task

    certificates = None
    if not insecure:
        if root_certificates is None:
            raise WarmWorkerError("--root-certificates is needed without --insecure")
        with open(root_certificates, "rb") as fh:
            certificates = fh.read()
    import httpx  # noqa: PLC0415 - Flower's Runtime API client is httpx-based

    control = _client(fl, address, insecure, certificates)
    done, unreachable, wait = 0, False, poll_s
    try:
        while max_tasks is None or done < max_tasks:
            try:
                res = control.AcquireTask(fl["AcquireTaskRequest"](supported_task_types=[fl["TaskType"].CLIENT_APP]))
            except httpx.HTTPError as exc:     # the SuperNode is starting or restarting: wait for it
                if not unreachable:
                    log.warning("the SuperNode's Runtime API at %s is unreachable (%s); retrying every second",
                                address, exc)
                unreachable = True
                time.sleep(1.0)
                continue
            unreachable = False
            if res.HasField("task") and res.token:
                try:
                    run_task(fl, app, address, res.token, insecure, certificates)
                except Exception as exc:  # noqa: BLE001 - a task whose reply could not be pushed: the next one
                    log.error("task %s: its reply or status could not be pushed: %s", res.task.task_id, exc)
                done += 1
                wait = poll_s
            else:
                time.sleep(wait)
                wait = min(max_poll_s, 2 * wait)
    finally:
        control.close()
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m brmtrl.flower.warm_worker", description=__doc__.splitlines()[0])
    ap.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    ap.add_argument("--insecure", action="store_true", help="no TLS to the Runtime API (a SuperNode on this machine)")
    ap.add_argument("--root-certificates", help="the CA certificate of the Runtime API's TLS")
    ap.add_argument("--poll", type=float, default=0.1,
                    help="seconds to wait when no task came (default 0.1); doubled while none comes")
    ap.add_argument("--max-poll", type=float, default=0.5,
                    help="the longest wait between two requests of an idle worker, in seconds (default 0.5)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("BRMTRL_LOG", "INFO"))
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per poll otherwise
    try:
        serve(args.runtime_api_address, insecure=args.insecure, root_certificates=args.root_certificates,
              poll_s=args.poll, max_poll_s=args.max_poll)
    except (WarmWorkerError, OSError) as exc:
        raise SystemExit(f"brmtrl warm worker: {exc}") from None


if __name__ == "__main__":
    main()
