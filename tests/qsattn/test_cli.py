"""The command line: every command takes the same --out, --format and --no-progress; --version;
one line and exit 2 on bad input."""
import pytest

from qsattn import __version__, cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_takes_the_shared_options(command):
    parser = cli.build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    opts = {o for a in sub._actions for o in a.option_strings}
    assert {"--out", "--format", "--no-progress"} <= opts, sorted(opts)
    fmt = next(a for a in sub._actions if "--format" in a.option_strings)
    assert set(fmt.choices) == {"md", "csv", "json"} and fmt.default == "md"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qsattn {__version__}"


def test_bad_format_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", "--q-len", "8", "--format", "xml"])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err
