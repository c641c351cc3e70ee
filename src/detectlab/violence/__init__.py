"""Violence detection in surveillance video with personalised federated learning on Flower.

Kassir, Haidar, Yaacoub, "Exploring Personalized Federated Learning Architectures for Violence Detection
in Surveillance Videos": the Diff-Gated network trained with FedAvg, FedPer, Per-FedAvg and FedMeta-Per.
Keep this module light: the CLI imports it at every start (no torch / flwr here).
"""

from __future__ import annotations


def register_cli(subparsers) -> None:
    """Extra commands: `detectlab violence app` (write the Flower app for the deployment engine) and
    `detectlab violence deploy` (run it on a SuperLink + SuperNodes on this machine's loopback)."""
    a = subparsers.add_parser("app", help="write the Flower app folder (pyproject.toml) for flwr run")
    a.add_argument("folder", help="where to write the app")
    a.add_argument("--preset", default="smoke", help="detectlab preset the ServerApp runs [smoke]")
    a.add_argument("--out", default="runs/violence-deploy", help="run folder the ServerApp writes")
    a.add_argument("overrides", nargs="*", metavar="key=value")
    a.set_defaults(func=_cmd_app)
    d = subparsers.add_parser("deploy", help="run an experiment on the deployment engine: a SuperLink and one "
                                             "SuperNode per client on 127.0.0.1")
    d.add_argument("--preset", default="smoke")
    d.add_argument("--out", default="runs/violence-deploy", help="run folder [runs/violence-deploy]")
    d.add_argument("--data", default=None, help="data path or 'builtin'")
    d.add_argument("--nodes", type=int, default=2, help="SuperNodes (= clients of the experiment) [2]")
    d.add_argument("--tls", action="store_true", help="TLS between SuperNodes/CLI and the SuperLink (openssl CA)")
    d.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls)")
    d.add_argument("--timeout", type=float, default=1800)
    d.add_argument("overrides", nargs="*", metavar="key=value")
    d.set_defaults(func=_cmd_deploy)


def _cmd_app(args) -> int:
    from pathlib import Path

    from detectlab.violence.flower_app import write_app

    print(write_app(Path(args.folder), args.preset, list(args.overrides), args.out))
    return 0


def _cmd_deploy(args) -> int:
    from pathlib import Path

    from detectlab.violence.flower_app import LocalDeployment, write_app

    data = args.data
    if data and data not in ("builtin", "auto"):
        data = str(Path(data).resolve())  # the ServerApp process runs in another working directory
    ov = list(args.overrides) + ([f"data={data!r}"] if data else [])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    app = write_app(out / "flower_app", args.preset, ov, out)
    with LocalDeployment(out / "deployment", args.nodes, tls=args.tls, auth=args.auth) as dep:
        r = dep.run_app(app, timeout=args.timeout)
        print(r.stdout[-3000:])
    if not (out / "metrics.json").exists():
        print(f"deployment run did not finish; logs in {out / 'deployment'}")
        return 1
    print(out)
    return 0
