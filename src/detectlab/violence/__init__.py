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
    a.add_argument("--nodes", type=int, default=0, help="SuperNodes the ServerApp waits for [the experiment's clients]")
    a.add_argument("overrides", nargs="*", metavar="key=value")
    a.set_defaults(func=_cmd_app)
    d = subparsers.add_parser("deploy", help="run one experiment on the deployment engine: a SuperLink and one "
                                             "SuperNode per client on 127.0.0.1, each with its own data folder")
    d.add_argument("--preset", default="smoke")
    d.add_argument("--out", default="runs/violence-deploy", help="run folder [runs/violence-deploy]")
    d.add_argument("--data", default="builtin", help="labelled clips dealt to the sites, or 'builtin' [builtin]")
    d.add_argument("--nodes", type=int, default=0, help="SuperNodes (= clients of the experiment) [the experiment's]")
    d.add_argument("--insecure", action="store_true", help="plain HTTP and no SuperNode authentication "
                                                           "(default: TLS with a throw-away CA + authentication)")
    d.add_argument("--no-auth", action="store_true", help="TLS without SuperNode authentication")
    d.add_argument("--stock-executor", action="store_true", help="Flower's own subprocess executor on the "
                                                                 "SuperNodes (default: warm ClientApp processes)")
    d.add_argument("--tls", action="store_true", help=argparse_hidden())
    d.add_argument("--auth", action="store_true", help=argparse_hidden())
    d.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run [3600]")
    d.add_argument("overrides", nargs="*", metavar="key=value")
    d.set_defaults(func=_cmd_deploy)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def _deploy_config(preset: str, overrides: list[str], nodes: int):
    """The validated config of a deployment (InputError on any bad value) and its node count."""
    from detectlab.core.config import load_config
    from detectlab.core.errors import InputError
    from detectlab.violence.config import Config
    from detectlab.violence.partition import n_clients_of

    cfg = load_config(Config, "violence", preset, list(overrides))  # validated as it loads
    if len(cfg.experiments) != 1:
        raise InputError(f"config key 'experiments' ({cfg.experiments})",
                         "a deployment runs exactly one experiment", 'experiments=["balanced2"] (or another one)')
    k = n_clients_of(cfg.experiments[0], cfg.clients)
    if nodes and nodes != k:
        raise InputError(f"--nodes {nodes}", f"experiment {cfg.experiments[0]} has {k} clients",
                         f"--nodes {k} (one SuperNode per client)")
    return cfg, k


def _server_overrides(overrides: list[str]) -> list[str]:
    """The overrides the ServerApp gets: no data path (the server never opens a video)."""
    keep = [o for o in overrides if not o.split("=", 1)[0].strip() == "data"]
    return keep + ['data="nodes"']


def _cmd_app(args) -> int:
    from pathlib import Path

    from detectlab.violence.flower_app import write_app

    cfg, k = _deploy_config(args.preset, _server_overrides(list(args.overrides)), args.nodes)
    print(write_app(Path(args.folder), args.preset, _server_overrides(list(args.overrides)), args.out,
                    extra={"nodes": str(k)}))
    return 0


def _cmd_deploy(args) -> int:
    """Validate everything, make the sites' folders, start the federation, wait, report in one line."""
    import sys
    from pathlib import Path

    from detectlab.core import progress
    from detectlab.core.errors import InputError

    overrides = _server_overrides(list(args.overrides))
    cfg, k = _deploy_config(args.preset, overrides, args.nodes)  # bad settings stop here: nothing started yet
    if args.insecure and (args.auth or args.tls):
        raise InputError("--insecure", "cannot be combined with --tls/--auth", "one of them")
    if args.data not in ("builtin", "auto") and not Path(args.data).is_dir():
        raise InputError(args.data, "data folder does not exist", "a folder of labelled clips, or builtin")
    from detectlab.core.config import real_data_path
    from detectlab.core.runs import Run
    from detectlab.violence import experiment
    from detectlab.violence.flower_app import CLIENTAPP, FAULTY_CLIENTAPP, LocalDeployment, make_sites, write_app
    from detectlab.violence.server_app import _relay, read_status

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data not in ("builtin", "auto") else (
        real_data_path("video") if args.data == "auto" else None)
    if data is None:
        from detectlab.violence.synthetic import make_dataset

        d = cfg.data_opts
        data = make_dataset(out / "sites" / "source", n_sites=d.syn_sites, sources_per_site=d.syn_sources_per_site,
                            clips_per_source=d.syn_clips_per_source, size=d.syn_size, n_frames=d.syn_frames,
                            seed=cfg.seed)
    sites = make_sites(data, out / "sites", cfg.experiments[0], cfg.clients, cfg.dirichlet_alpha,
                       cfg.data_opts.test_fraction, cfg.seed)
    progress.log(f"violence deploy: {k} sites in {out / 'sites'} (each SuperNode reads only its own)")
    app = write_app(out / "flower_app", args.preset, overrides, out, extra={"nodes": str(k)},
                    clientapp=FAULTY_CLIENTAPP if cfg.fl.fault.strip() else CLIENTAPP)
    node_config = {i: f'data-dir="{s}" state-dir="{s}/flower"' for i, s in enumerate(sites)}
    tls = not args.insecure
    with LocalDeployment(out / "deployment", k, tls=tls, auth=tls and not args.no_auth,
                         node_config=node_config, warm=not args.stock_executor) as dep:
        progress.log(f"violence deploy: SuperLink on 127.0.0.1:{dep.port} ({'TLS' if tls else 'plain'}"
                     f"{', SuperNode authentication' if dep.auth else ''}), {k} SuperNodes; logs in {dep.dir}")
        h = dep.submit(app)
        import time

        seen, t0 = 0, time.monotonic()
        while h.proc.poll() is None:  # show the ServerApp's round lines as they come
            time.sleep(0.5)
            seen = _relay(h.output(), seen)
            if time.monotonic() - t0 > args.timeout:
                h.proc.kill()
                print(f"violence deploy: the run did not finish within {args.timeout:.0f} s (--timeout); logs in "
                      f"{dep.dir}", file=sys.stderr)
                return 1
        _relay(h.output() + "\n", seen)
    st = read_status(out)
    if st.get("status") != "finished" or not (out / "metrics.json").exists():
        line = st.get("line") or "the ServerApp went away before the run finished (SuperLink stopped?)"
        print(f"violence deploy: the federation stopped: {line}; finished rounds are kept in {out}, "
              "rerun the same command to resume", file=sys.stderr)
        return 1
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    with Run(out, cfg, "violence") as run:
        experiment.report_deployment(run, cfg, metrics)
    print(out)
    return 0
