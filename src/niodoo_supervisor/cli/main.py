"""`niodoo-supervisor` command line: run, render, check, status, reload, restart, adapters,
demo-model.

Every failure ends in one line on stderr and a documented exit code (`exitcodes.py`), never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from niodoo_supervisor import __version__, exitcodes
from niodoo_supervisor.cli.state_location import locate
from niodoo_supervisor.config.loader import Config, check_config, load_config
from niodoo_supervisor.config.problems import Problem
from niodoo_supervisor.launch.plan import PlanError, plan_launch
from niodoo_supervisor.launch.preflight import PreflightOptions, PreflightResult, preflight
from niodoo_supervisor.launch.render import format_command, format_env, format_role, plan_json

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `niodoo-supervisor render | head`: the reader left; nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
    except Exception as exc:
        print(
            f"niodoo-supervisor: internal error: {type(exc).__name__}: {exc} (please report this)",
            file=sys.stderr,
        )
        return exitcodes.INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="niodoo-supervisor", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", required=True, type=Path, help="the YAML config file")
        return sub

    run = with_config("run", "run vLLM under supervision (what systemd starts)")
    run.add_argument(
        "--skip-flag-check",
        action="store_true",
        help="do not compare server.extra_args with the installed vLLM's flags (vLLM will judge them)",
    )
    run.set_defaults(handler=_cmd_run)

    render_cmd = with_config(
        "render", "print the vLLM command line and environment the config gives"
    )
    shape = render_cmd.add_mutually_exclusive_group()
    shape.add_argument("--one-line", action="store_true", help="the command on one line")
    shape.add_argument("--json", action="store_true", help='print {"argv": [...], "env": {...}}')
    render_cmd.set_defaults(handler=_cmd_render)

    check = with_config("check", "validate the config and what it names, starting nothing")
    check.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    check.add_argument("--no-port", action="store_true", help="skip the port-in-use check")
    check.add_argument(
        "--all-hosts",
        action="store_true",
        help="topology: render every rank's plan and check that they agree",
    )
    check.set_defaults(handler=_cmd_check)

    def with_location(name: str, help_text: str) -> argparse.ArgumentParser:
        # Only the state folder (and the control socket) is needed: read from the config when
        # it loads, leniently when not (cli/state_location.py), or given.
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, help="the YAML config file")
        sub.add_argument("--state-dir", type=Path, help="the supervisor's state folder")
        return sub

    status = with_location("status", "show the running supervisor's state")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_cmd_status)

    reload_cmd = with_location(
        "reload", "make the running supervisor read its config again; waits for the outcome"
    )
    reload_cmd.set_defaults(handler=_cmd_reload)

    restart = with_location("restart", "a planned restart of vLLM")
    when = restart.add_mutually_exclusive_group()
    when.add_argument("--now", action="store_true", help="restart now")
    when.add_argument(
        "--at-next-window",
        action="store_true",
        help="restart at the next maintenance window (the default)",
    )
    restart.set_defaults(handler=_cmd_restart)

    adapters = with_location("adapters", "list, load or unload LoRA adapters in the running vLLM")
    action = adapters.add_subparsers(dest="action", required=True)
    action.add_parser("list", help="the adapters expected and served")
    load = action.add_parser("load", help="load an adapter (not written to the YAML)")
    load.add_argument("name")
    load.add_argument("path")
    unload = action.add_parser("unload", help="unload an adapter (not written to the YAML)")
    unload.add_argument("name")
    adapters.set_defaults(handler=_cmd_adapters)

    demo = commands.add_parser("demo-model", help="write the tiny demo model and its LoRA adapters")
    demo.add_argument("directory", type=Path)
    demo.add_argument("--force", action="store_true", help="write them again even if present")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_cmd_demo_model)
    return parser


def _print_problems(problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(problem.format(), file=sys.stderr)


def _load(path: Path) -> Config | None:
    config, problems = load_config(path)
    _print_problems(problems)
    return config


def _cmd_render(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return exitcodes.CONFIG
    # The same two steps as `run` and `check`. Preflight's problems are `check`'s to show:
    # render prints what would be launched; only the installed vLLM is taken from it. The key
    # is read by neither step: it is shown redacted anyway, and whoever renders may not be
    # allowed to read it.
    options = PreflightOptions(check_port=False, check_flags=False, check_api_key=False)
    checked = preflight(config, os.environ, options)
    if checked.install is None:
        print(
            f"note: {_install_problem(checked)}; the logging config assumes a recent vLLM",
            file=sys.stderr,
        )
    try:
        plan = plan_launch(config, checked.install, os.environ, read_secret=False)
    except PlanError as exc:
        print(exc.as_problem(config).format(), file=sys.stderr)
        return exitcodes.CONFIG
    if args.json:
        print(plan_json(plan))
    else:
        if format_role(plan):
            print(format_role(plan))  # topology: this host's part, and its Ray node
        print(format_command(plan, one_line=args.one_line))
        print("# environment added for vLLM:")
        print(format_env(plan))
    return exitcodes.OK


def _install_problem(result: PreflightResult) -> str:
    """Why the installed vLLM could not be asked, as preflight worded it."""
    reasons = [p.message for p in result.problems if p.path == "server.python" and p.is_error]
    return reasons[0] if reasons else "the installed vLLM could not be asked"


def _cmd_check(args: argparse.Namespace) -> int:
    from niodoo_supervisor.cli.own_vllm import own_listener

    if args.all_hosts:
        from niodoo_supervisor.cli.all_hosts import check_all_hosts

        return check_all_hosts(args.config)

    loaded = check_config(args.config)
    config, problems, notes = loaded.config, loaded.problems, []
    install = None
    # Preflight runs on the keys that are valid even when others are not: every problem that
    # does not depend on an earlier one is shown in one run.
    checked = config or loaded.partial
    if checked is not None:
        options = PreflightOptions(
            check_port=not args.no_port,
            unchecked=loaded.unchecked,
            own_listener=own_listener(checked),
        )
        result = preflight(checked, os.environ, options)
        problems, notes, install = problems + result.problems, result.notes, result.install
        if config is not None and result.ok:
            try:
                plan_launch(config, install, os.environ)  # what `run` would launch can be made
            except PlanError as exc:
                problems.append(exc.as_problem(config))
    for problem in problems:
        print(problem.format())
    for note in notes:
        print(f"{args.config}: note: {note}")
    errors = sum(problem.is_error for problem in problems)
    warnings = len(problems) - errors
    if errors:
        print(
            f"{args.config}: {errors} error(s), {warnings} warning(s): vLLM would not start with this config"
        )
        return exitcodes.CONFIG
    found = (
        f"vLLM {install.version_text} ({install.distribution or 'unknown distribution'})"
        if install
        else "vLLM"
    )
    print(f"{args.config}: ok ({warnings} warning(s)); {found}")
    if warnings and args.strict:
        return exitcodes.WARNINGS
    return exitcodes.OK


def _cmd_run(args: argparse.Namespace) -> int:
    from niodoo_supervisor.supervise.daemon import run_daemon

    return run_daemon(args.config, check_flags=not args.skip_flag_check)


def _cmd_status(args: argparse.Namespace) -> int:
    from niodoo_supervisor.cli.status import show_status

    return show_status(args.config, state_dir=args.state_dir, as_json=args.json)


def _cmd_reload(args: argparse.Namespace) -> int:
    from niodoo_supervisor.cli.control_verbs import reload_config

    return reload_config(locate(args.config, args.state_dir))


def _cmd_restart(args: argparse.Namespace) -> int:
    from niodoo_supervisor.cli.control_verbs import restart

    return restart(locate(args.config, args.state_dir), now=args.now)


def _cmd_adapters(args: argparse.Namespace) -> int:
    from niodoo_supervisor.cli.control_verbs import adapters

    where = locate(args.config, args.state_dir)
    return adapters(where, args.action, getattr(args, "name", None), getattr(args, "path", None))


def _cmd_demo_model(args: argparse.Namespace) -> int:
    try:
        from niodoo_supervisor.demo.model import generate
    except ImportError as exc:
        print(
            f"niodoo-supervisor: demo-model needs the demo extra ({exc.name}): pip install 'niodoo-supervisor[demo]'",
            file=sys.stderr,
        )
        return exitcodes.CONFIG
    model = generate(args.directory, seed=args.seed, force=args.force)
    print(model.base)
    return exitcodes.OK
