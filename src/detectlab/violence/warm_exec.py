"""``flower-superexec`` with warm ClientApp processes: every message's ClientApp is forked from a process that
has already imported torch, Flower and this package's ClientApp.

A SuperNode runs each message in a fresh ``flwr-clientapp`` process (Flower 1.42), which spends about 3 s of
CPU importing torch and Flower before it trains. Started with ``--isolation process``, a SuperNode leaves
launching those processes to a SuperExec of our choosing; this one is Flower's own
(``flwr.supercore.cli.flower_superexec``) with one change: its executor starts the ClientApp with
``multiprocessing``'s *forkserver*, whose server imports the heavy modules once. Each task still runs in its
own process (isolation, a clean state, the token and Runtime API of Flower's protocol are unchanged); only
the imports are done before. Server-side tasks and anything but ClientApps go through Flower's subprocess
executor as before. ``LocalDeployment(warm=True)`` starts one next to every SuperNode::

    flower-supernode --isolation process --port 9094 ...
    python -m detectlab.violence.warm_exec --runtime-api-address 127.0.0.1:9094 --insecure --parent-pid <supernode>
"""

from __future__ import annotations

import multiprocessing as mp
import sys

#: imported once by the fork server: torch (and torch._dynamo, which the first optimizer imports lazily),
#: Flower's ClientApp runtime, this package's ClientApp, scikit-learn (grouped holdouts) and safetensors
PRELOAD = ["torch", "torch._dynamo", "flwr.supernode.runtime.run_clientapp", "flwr.supercore.tls",
           "detectlab.violence.client_app", "detectlab.core.splits", "safetensors.torch"]


def _clientapp(address: str, token: str, insecure: bool, root_cert: str | None, parent_pid: int | None) -> None:
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(runtime_api_address=address, token=token, insecure=insecure,
                  certificates=validate_and_resolve_root_certificates(root_cert, insecure), parent_pid=parent_pid,
                  runtime_dependency_install=False)


def make_executor():
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import LaunchResult

    class WarmExecutor(SubprocessExecutor):
        """Flower's subprocess executor, except that ClientApps are forked from a warm server."""

        def __init__(self) -> None:
            self.ctx = mp.get_context("forkserver")
            self.ctx.set_forkserver_preload(PRELOAD)

        def launch(self, spec):
            mp.active_children()  # reap the finished ones
            if spec.task_type != TaskType.CLIENT_APP or spec.runtime_dependency_install:
                return super().launch(spec)
            p = self.ctx.Process(target=_clientapp, args=(spec.runtime_api_address, spec.token, spec.insecure,
                                                          spec.root_certificates_path, spec.parent_pid),
                                 daemon=False)
            p.start()
            return LaunchResult.accepted()

    return WarmExecutor()


def main(argv: list[str] | None = None) -> None:
    import flwr.supercore.superexec.run_superexec as rs
    from flwr.supercore.cli.flower_superexec import flower_superexec

    executor = make_executor()
    rs.get_executor = lambda *a, **k: executor  # the only change to Flower's SuperExec
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


if __name__ == "__main__":
    main()
