"""`python -m experiments run FILE [--quick] [--set KEY=VALUE ...] [--out DIR]`: run an experiment and print the
comparison."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .spec import SpecError, load_experiment

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments", description="Run rtlab experiments.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment file: every transport under the same profile")
    run.add_argument("file", help="experiments/<name>.toml, or just <name>")
    run.add_argument("--quick", action="store_true", help="short durations: a smoke run")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                     help="change one key of the file for this run, e.g. profile.duration_s=690 or server.history=200 "
                          "(a TOML value; repeatable); checked as the file is, recorded in the manifest")
    run.add_argument("--out", default=str(ROOT / "results"), help="where runs are written")
    run.add_argument("--quiet", action="store_true", help="no live progress")
    show = sub.add_parser("show", help="print the comparison table of a finished run")
    show.add_argument("run_dir", nargs="?", default=str(ROOT / "results" / "latest"))
    from .drain import add_drain_arguments

    add_drain_arguments(sub.add_parser("drain", help="drain one instance: out of HAProxy, WebSockets closed with 1012"))
    from .demo_cluster import add_arguments as add_demo_cluster_arguments

    add_demo_cluster_arguments(sub.add_parser(
        "demo-cluster", help="the scaling half of the seed notes in a browser: three instances, HAProxy, Redis"))
    from .demo_tls import add_arguments as add_demo_tls_arguments

    add_demo_tls_arguments(sub.add_parser(
        "demo-tls", help="the teaching page over HTTPS through HAProxy: HTTP/2 (or 1.1) to the browser (make demo TLS=1)"))
    from .demo_screenshot import add_arguments as add_demo_screenshot_arguments

    add_demo_screenshot_arguments(sub.add_parser(
        "demo-screenshot", help="docs/demo.png again: the demo page (every transport) after a short conversation"))
    report = sub.add_parser("report", help="run the notebooks headless on a run; write <run>/report/index.html")
    report.add_argument("run_dir", nargs="?", default=None, help="default: results/latest, else results/reference")
    return p.parse_args(argv)


def resolve(file: str) -> Path:
    path = Path(file)
    if not path.suffix and not path.exists():
        path = ROOT / "experiments" / f"{file}.toml"
    return path


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.command == "show":
        from .report import print_table

        print_table(Path(a.run_dir))
        return 0
    if a.command == "drain":
        from .drain import run_drain

        return run_drain(a)
    if a.command == "demo-cluster":
        from .demo_cluster import run

        return run(a)
    if a.command == "demo-tls":
        from .demo_tls import run as run_demo_tls

        return run_demo_tls(a)
    if a.command == "demo-screenshot":
        from .demo_screenshot import run as run_demo_screenshot

        return run_demo_screenshot(a)
    if a.command == "report":
        from .notebooks import main as report_main

        return report_main(a.run_dir)
    try:
        experiment = load_experiment(resolve(a.file), a.overrides)
    except SpecError as error:
        print(f"python -m experiments: {error}", file=sys.stderr)
        return 2
    from .report import print_table
    from .runner import run_experiment

    def interrupt(signum, frame):
        raise KeyboardInterrupt  # so SIGTERM, like Ctrl-C, runs every `finally` and stops every process

    signal.signal(signal.SIGTERM, interrupt)
    try:
        run_dir = run_experiment(experiment, Path(a.out), a.quick, a.quiet)
    except SpecError as error:  # what this machine cannot run (a [network] without root, nft or netem)
        print(f"python -m experiments: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every process was stopped; partial results are kept", file=sys.stderr)
        return 130
    print_table(run_dir)
    print(f"results: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
