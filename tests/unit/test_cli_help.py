"""First contact with the command (issue 11, part 7): --version, help on every subcommand and
argument, the exit codes in --help, global options after the command, shell completion."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from handlers import cli

ROOT = Path(__file__).resolve().parents[2]


def walk(parser: argparse.ArgumentParser, path: str = "deploybot"):
    """(where, action) for every argument of every parser, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", SimpleHelp(helped.get(name))
                yield from walk(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action


class SimpleHelp:
    def __init__(self, help_: str | None) -> None:
        self.help = help_


def test_every_subcommand_and_argument_has_help():
    missing = [where for where, action in walk(cli.build_parser())
               if not (action.help or "").strip() or action.help == argparse.SUPPRESS]
    assert not missing, f"no help text: {missing}"


def test_help_ends_with_the_exit_codes_the_code_uses(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    codes = out.split("exit codes:")[1]
    listed = [int(n) for n in re.findall(r"^\s+(\d+)\s", codes, re.M)]
    assert listed == sorted({cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_PENDING,
                             cli.EXIT_REFUSED, 130, cli.EXIT_BROKEN_PIPE})
    assert out.rstrip().splitlines()[-1].lstrip().startswith(str(cli.EXIT_BROKEN_PIPE))


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"deploybot {metadata.version('deploybot')}"


@pytest.mark.parametrize("argv", [
    ["check-config", "--config", "{path}"],
    ["--config", "{path}", "check-config"],
    ["check-config", "--config={path}", "--log-level", "debug", "--log-format", "json"],
    ["--log-level", "info", "check-config", "--config", "{path}", "--as", "alice"]])
def test_global_options_work_after_the_command_too(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "d.db"))
    monkeypatch.delenv("DEPLOYBOT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./deploybot.yaml to fall back on
    path = str(ROOT / "examples" / "deploybot.yaml")
    assert cli.main([a.replace("{path}", path) for a in argv]) == cli.EXIT_OK
    assert f"{path}: ok" in capsys.readouterr().out


def test_the_option_after_the_command_wins():
    args = cli.build_parser().parse_args(
        ["--config", "a.yaml", "--log-format", "text", "status", "--config", "b.yaml",
         "--log-format", "json"])
    assert (args.config, args.log_format, args.log_level, args.user) == \
        ("b.yaml", "json", None, None)
    nested = cli.build_parser().parse_args(["ticket", "show", "DEMO-1", "--config", "c.yaml"])
    assert nested.config == "c.yaml"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_a_script_that_knows_the_commands(capsys, shell):
    assert cli.main(["completion", shell]) == cli.EXIT_OK
    script = capsys.readouterr().out
    for word in ("check-config", "rollback", "--log-format", "--dry-run"):
        assert word in script
    if shell == "bash" and shutil.which("bash"):
        # the script at least parses: bash -n reads it without running it
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True,
                                 timeout=30)
        assert checked.returncode == 0, checked.stderr
