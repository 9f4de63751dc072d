"""Config and command line: the issue's example config as written, errors that name the key
and its line, `--help` on every subcommand, `check`, `explain`, the packaging tables."""

import configparser
import os
import subprocess
import sys
import tomllib

import pytest

from proxydhcp import arch, cli, config
from proxydhcp.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The example of the ProxyDHCP issue, byte for byte (TFTP and HTTP sections included).
ISSUE_EXAMPLE = """\
interfaces: [eth0]
tftp:
  root: /usr/lib/ipxe
http:
  port: 8080
firmware:            # what legacy PXE clients are sent, by architecture
  bios: undionly.kpxe
  efi-x64: ipxe.efi
profiles:
  hello:
    script: |
      #!ipxe
      echo Hello ${mac} from proxydhcp
      shell
groups:
  - profile: hello   # a group with no selector is the default
"""


MINIMAL = os.path.join(ROOT, "contrib", "examples", "minimal.yaml")


@pytest.fixture
def example(tmp_path):
    path = tmp_path / "proxydhcp.yaml"
    path.write_text(ISSUE_EXAMPLE)
    return str(path)


def test_the_minimal_example_is_the_issue_example():
    """contrib/examples/minimal.yaml is what tests/e2e/test_minimal_example.py boots real firmware with."""
    with open(MINIMAL) as fh:
        assert fh.read() == ISSUE_EXAMPLE


def run(*argv):
    """The console script's entry point in a child process: what an operator sees."""
    return subprocess.run([sys.executable, "-m", "proxydhcp", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_issue_example_loads_as_written(example):
    cfg = config.load(example)
    assert cfg.dhcp.interfaces == ["eth0"]
    assert cfg.boot.firmware == {"bios": "undionly.kpxe", "x64-uefi": "ipxe.efi"}   # efi-x64 is x64-uefi
    assert cfg.tftp.root == "/usr/lib/ipxe" and cfg.http.port == 8080
    assert [g.profile for g in cfg.policy.groups] == ["hello"]


def test_check_on_the_issue_example(example):
    for command in ("check", "check-config"):
        out = run(command, "-c", example)
        assert (out.returncode, out.stdout, out.stderr) == (0, f"{example}: OK\n", "")


def test_explain_on_the_issue_example(example):
    out = run("explain", "-c", example, "--mac", "52:54:00:12:34:56", "--arch", "7", "--server", "10.0.0.5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "profile: hello" in lines
    assert "echo Hello ${mac} from proxydhcp" in lines
    assert any(line.startswith("dhcp 67: OFFER") and "no boot file" in line and "4011" in line for line in lines)
    assert "dhcp 4011: ACK (yiaddr 0.0.0.0, 60 PXEClient): boot file ipxe.efi (legacy-pxe, arch x64-uefi)" in lines
    out = run("explain", "-c", example, "--mac", "52:54:00:12:34:56", "--arch", "0", "--user-class", "iPXE",
              "--vendor-class", "PXEClient:Arch:00000:UNDI:002001", "--server", "10.0.0.5")
    assert out.returncode == 0, out.stderr
    assert ("dhcp 67: OFFER (yiaddr 0.0.0.0, 60 PXEClient): boot file "
            "http://10.0.0.5:8080/boot.ipxe?mac=52:54:00:12:34:56&arch=0&ip=${netX/ip} (ipxe, arch bios)") in out.stdout
    out = run("explain", "-c", example, "--mac", "52:54:00:12:34:56", "--vendor-class", "udhcp 1.35.0")
    assert "dhcp 67: no reply (not_pxe:" in out.stdout and "dhcp 4011" not in out.stdout


def test_default_config_serves_debians_ipxe_package():
    cfg = config.load(None)
    assert cfg.tftp.root == "/usr/lib/ipxe"
    assert cfg.boot.firmware == {"bios": "undionly.kpxe", "x64-uefi": "ipxe.efi"}
    if os.path.isdir("/usr/lib/ipxe"):      # Debian's ipxe package: the names it installs
        for name in cfg.boot.firmware.values():
            assert os.path.exists(os.path.join(cfg.tftp.root, name)), name


def test_every_subcommand_has_help():
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    names = sorted(sub.choices)
    assert {"serve", "check", "check-config", "explain", "arches", "sessions", "events"} <= set(names)
    for argv in [["--help"]] + [[name, "--help"] for name in names]:
        out = run(*argv)
        assert out.returncode == 0 and out.stdout.startswith("usage: proxydhcp"), (argv, out.stderr)
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("proxydhcp ")


@pytest.mark.parametrize("text,line,key", [
    ("dhcp:\n  port: 67\n  bogus: 1\n", 3, "dhcp: unknown setting(s) bogus"),
    ("tftp:\n  enabled: true\n  port: sixty-nine\n", 3, "tftp.port: expected int"),
    ("dhcp:\n  quirks:\n    - match: {arch: [7]}\n      set: {colour: red}\n", 4, "dhcp.quirks[0].set.colour"),
    ("interfaces: [eth0, '']\n", 1, "dhcp.interfaces[1]"),
    ("firmware:\n  bios: undionly.kpxe\n  efi-z80: z.efi\n", 3, "boot.firmware.efi-z80: unknown firmware key"),
    ("log: {level: info}\nfirmwares: {}\n", 2, "unknown section(s) firmwares"),
    ("groups:\n  - profile: nowhere\n", 2, "groups[0]"),
    ("tftp:\n  port: 69\n  transfer_timeout: 0\n", 3, "tftp.transfer_timeout: seconds a transfer may last"),
    ("tftp:\n  retransmit_timeout: -1\n", 2, "tftp.retransmit_timeout: seconds before a block is sent again"),
    ("tftp:\n  max_retries: -1\n", 2, "tftp.max_retries: 0-100"),
])
def test_errors_name_the_key_and_its_line(text, line, key):
    with pytest.raises(ConfigError) as e:
        config.parse(text, "site.yaml")
    message = e.value.located()      # what `check` and `serve` print
    assert message.startswith(f"site.yaml, line {line}: ") and key in message, message
    assert key in str(e.value)        # the message itself (a reload's log line) names the key


def test_check_prints_the_file_line_of_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("log:\n  level: info\n  format: xml\n")
    out = run("check", "-c", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"proxydhcp: config error: {path}, line 3: log.format: must be text or json, got 'xml'\n"


def test_shorthand_and_section_both_given_is_an_error():
    with pytest.raises(ConfigError, match=r"interfaces \(line 1\): also given as dhcp.interfaces"):
        config.parse("interfaces: [eth0]\ndhcp: {interfaces: [eth1]}\n")
    with pytest.raises(ConfigError, match="same firmware key as another entry"):
        config.parse("boot:\n  firmware: {x64-uefi: a.efi, efi-x64: b.efi}\n")


def test_firmware_aliases_come_from_the_arch_table():
    assert arch.firmware_key("efi-x64") == "x64-uefi" and arch.firmware_key("x64-uefi") == "x64-uefi"
    assert arch.firmware_key("efi-arm64") == "arm64-uefi" and arch.firmware_key("efi-bios") is None
    assert set(arch.FIRMWARE_ALIASES.values()) <= arch.FIRMWARE_KEYS


def test_console_script_and_build_system():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        build = tomllib.load(fh)["build-system"]
    assert build["build-backend"] == "setuptools.build_meta" and build["requires"]
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    assert "proxydhcp = proxydhcp.cli:main" in setup["options.entry_points"]["console_scripts"]


def test_ci_runs_the_readme_test_command():
    """.ci/run (executable) runs `make test`, the command the README gives, whose recipe is pytest
    over tests/."""
    ci = os.path.join(ROOT, ".ci", "run")
    assert os.access(ci, os.X_OK)
    commands = [line.strip() for line in open(ci) if line.strip() and not line.startswith("#")]
    assert commands[-1] == "make test"
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "make test " in readme and "make demo " in readme
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-m pytest" in recipe and " tests" in recipe
