"""Deployment files: the systemd unit, install.sh, the example settings and the Mosquitto config.

Real tools throughout: systemd-analyze (package ``systemd``), shellcheck,
openssl, mosquitto and mosquitto_passwd. A test skips, naming the package,
only when its tool is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.settings import EdgeSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "deepfer-edge.service"
INSTALL = REPO / "deploy" / "install.sh"
ARM64_CHECK = REPO / "tools" / "arm64_check.sh"
EXAMPLE_TOML = REPO / "deploy" / "edge.example.toml"
MOSQUITTO_CONF = REPO / "deploy" / "mosquitto.example.conf"
MAX_EXPOSURE = 2.5


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or next((p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install {package})")
    return path


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; systemd allows repeated keys, configparser does not."""
    entries, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


# --- systemd unit --------------------------------------------------------------


def fake_root(tmp_path: Path, unit_text: str, with_binary: bool = True) -> Path:
    """A root for `systemd-analyze verify --root`: the host's stock units (for the
    default dependencies such as sysinit.target), the unit under /etc/systemd/system
    and, unless told otherwise, a stub at its ExecStart path."""
    root = tmp_path / "root"
    copied: set[Path] = set()
    for units in ("usr/lib/systemd/system", "lib/systemd/system"):
        host = Path("/") / units
        if host.is_dir() and host.resolve() not in copied:  # /lib is /usr/lib on merged-/usr systems
            shutil.copytree(host, root / units, symlinks=True)
            copied.add(host.resolve())
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system" / UNIT.name).write_text(unit_text)
    if with_binary:
        exe = root / "opt/deepfer/venv/bin/deepfer-edge"
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    analyze = need("systemd-analyze", "systemd")
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", "--recursive-errors=no", UNIT.name],
        capture_output=True, text=True, timeout=60,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify(fake_root(tmp_path, UNIT.read_text()))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # verify only warns (exit 0) about unknown keys or bad values: any mention is a defect.
    assert UNIT.name not in output, output


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("UMask=0077", "UMask=0077\nProtectSytem=strict"), "Unknown key"),
        (lambda t: t, "is not executable"),
    ],
    ids=["typo", "missing-binary"],
)
def test_verify_harness_catches_defects(tmp_path: Path, change, expected: str) -> None:
    # The same harness must flag a broken unit, or the test above proves nothing.
    result = verify(fake_root(tmp_path, change(UNIT.read_text()), with_binary=expected != "is not executable"))
    assert expected in result.stdout + result.stderr


def test_unit_security_exposure_is_low() -> None:
    analyze = need("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"\nsystemd-analyze security: overall exposure level {exposure} (limit {MAX_EXPOSURE})")
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_agrees_with_install_script_and_daemon() -> None:
    entries = unit_entries(UNIT.read_text())
    service = {k: v for s, k, v in entries if s == "Service"}
    script = INSTALL.read_text()
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    exe, *args = service["ExecStart"].split()
    assert exe == "/opt/deepfer/venv/bin/deepfer-edge"
    assert args == ["--config", "/etc/deepfer/edge.toml"]
    assert "VENV=$OPT_DIR/venv" in script and "OPT_DIR=$PREFIX/opt/deepfer" in script
    assert service["User"] == service["Group"] == "deepfer"
    assert "SERVICE_USER=deepfer" in script
    # The credential the unit loads is the file install.sh always creates.
    cred_name, cred_path = service["LoadCredential"].split(":", 1)
    assert cred_path == "/etc/deepfer/mqtt_password" and cred_name == "mqtt_password"
    assert '"$ETC_DIR/mqtt_password"' in script and "ETC_DIR=$PREFIX/etc/deepfer" in script
    assert service["StateDirectory"] == "deepfer"
    assert EdgeSettings.model_fields["mqtt"].default_factory().state_dir == Path("/var/lib") / service["StateDirectory"]
    # The settings error exit code is not worth restarting.
    from edge.settings import EX_CONFIG

    assert service["RestartPreventExitStatus"] == str(EX_CONFIG)
    allowed = [v for s, k, v in entries if k == "DeviceAllow"]
    for device_class in ("char-video4linux", "char-media", "char-dma_heap", "char-usb_device", "char-apex"):
        assert f"{device_class} rw" in allowed


# --- install.sh ----------------------------------------------------------------


def test_every_deploy_script_parses_and_passes_shellcheck() -> None:
    scripts = sorted([*(REPO / "deploy").glob("*.sh"), *(REPO / "tools").glob("*.sh")])
    assert INSTALL in scripts and ARM64_CHECK in scripts
    for script in scripts:
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable (chmod +x)"
    shellcheck = need("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, "--severity=style", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def fake_python(tmp_path: Path, numpy: str | None) -> Path:
    """Stands in for the system python3 when install.sh asks for its numpy version."""
    exe = tmp_path / "python3"
    answer = f"echo {numpy}" if numpy else "exit 1"
    exe.write_text(f'#!/bin/sh\ncase "$*" in *numpy*) {answer};; *) exec {sys.executable} "$@";; esac\n')
    exe.chmod(0o755)
    return exe


def stub_python(path: Path) -> None:
    """A venv interpreter that runs (install.sh only asks it to start)."""
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def dry_run(prefix: Path, *args: str, python: Path | None = None, check: bool = True,
            arch: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFER_")}
    env |= {"DEEPFER_PREFIX": str(prefix), "DEEPFER_DRY_RUN": "1"}
    if arch is not None:
        env["DEEPFER_ARCH"] = arch
    if python is not None:
        env["DEEPFER_PYTHON"] = str(python)
    result = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_help_exits_zero_and_documents_the_options() -> None:
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for word in ("--with-coral", "--coral-deb", "--uninstall", "--purge", "--dry-run", "--no-start",
                 "libedgetpu1-std", "feranick/libedgetpu", "known to", 'delegate = "edgetpu"', "SOURCE",
                 "not on PyPI", ".whl"):
        assert word in result.stdout, word


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    unknown = dry_run(tmp_path, "--frobnicate", check=False)
    assert unknown.returncode == 2 and "unknown option --frobnicate" in unknown.stderr
    purge_alone = dry_run(tmp_path, "--purge", check=False)
    assert purge_alone.returncode == 1 and "--uninstall" in purge_alone.stderr
    bad_source = dry_run(tmp_path, str(tmp_path / "nowhere"), check=False)
    assert bad_source.returncode == 1 and "nowhere" in bad_source.stderr


def test_refuses_to_run_without_root_outside_a_dry_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPFER_")}
    cmd = ["bash", str(INSTALL)]
    with tempfile.TemporaryDirectory() as public:
        if os.geteuid() == 0:
            # Drop to nobody; the script needs a readable copy (pytest's tmp is root-only).
            setpriv = need("setpriv", "util-linux")
            os.chmod(public, 0o755)
            script = Path(public) / "install.sh"
            shutil.copy(INSTALL, script)
            script.chmod(0o755)
            cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(script)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30, cwd=public)
    assert result.returncode == 1
    assert "must run as root" in result.stderr


def test_fresh_dry_run_plans_a_complete_install_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    out = dry_run(prefix, python=fake_python(tmp_path, None)).stdout
    cmds = commands(out)
    p = str(prefix)
    assert f"{tmp_path}/python3 -m venv --system-site-packages {p}/opt/deepfer/venv" in cmds
    pip = [c for c in cmds if " -m pip " in c]
    # The checkout is built into a wheel, and the wheel is what is installed.
    venv_pip = f"{p}/opt/deepfer/venv/bin/python -m pip --disable-pip-version-check"
    wheel = f"{p}/opt/deepfer/wheel/deepfer-VERSION-py3-none-any.whl"
    assert pip == [f"{venv_pip} wheel --no-deps --wheel-dir {p}/opt/deepfer/wheel {REPO}",
                   f"{venv_pip} install --constraint {p}/opt/deepfer/constraints.txt {wheel}",
                   f"{venv_pip} install --no-deps --force-reinstall {wheel}"]
    assert f"install -m 0640 -o root -g deepfer {EXAMPLE_TOML} {p}/etc/deepfer/edge.toml" in cmds
    assert f"install -m 0640 -o root -g deepfer /dev/null {p}/etc/deepfer/mqtt_password" in cmds
    assert f"install -m 0644 {UNIT} {p}/etc/systemd/system/deepfer-edge.service" in cmds
    assert cmds.index("systemctl daemon-reload") < cmds.index("systemctl enable --now deepfer-edge.service")
    assert "no numpy" in out and "numpy==" not in out
    assert "python3-picamera2" not in out
    if subprocess.run(["getent", "passwd", "deepfer"], capture_output=True).returncode != 0:
        assert any(c.startswith("useradd --system") and c.endswith(" deepfer") for c in cmds)
    assert tree(prefix) == []  # a dry run writes nothing


def test_second_run_keeps_local_settings_and_reuses_the_venv(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    etc = prefix / "etc/deepfer"
    etc.mkdir(parents=True)
    (etc / "edge.toml").write_text('[camera]\nsource = "usb:0"\n')
    (etc / "mqtt_password").write_text("hunter2\n")
    venv = prefix / "opt/deepfer/venv"
    (venv / "bin").mkdir(parents=True)
    stub_python(venv / "bin/python")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = true\n")
    before = {p: p.read_bytes() for p in (etc / "edge.toml", etc / "mqtt_password")}

    out = dry_run(prefix, python=fake_python(tmp_path, None)).stdout
    cmds = commands(out)
    p = str(prefix)
    assert f"install -m 0640 -o root -g deepfer {EXAMPLE_TOML} {p}/etc/deepfer/edge.toml.new" in cmds
    assert not any(c.endswith(f"{p}/etc/deepfer/edge.toml") for c in cmds)
    assert "kept your" in out
    assert not any("mqtt_password" in c for c in cmds)
    assert "mqtt_password present; unchanged" in out
    assert "virtual environment present" in out
    assert not any(" -m venv " in c for c in cmds)
    assert {p_: p_.read_bytes() for p_ in before} == before

    # An edge.toml identical to the example needs no .new beside it.
    shutil.copy(EXAMPLE_TOML, etc / "edge.toml")
    out = dry_run(prefix, python=fake_python(tmp_path, None)).stdout
    assert "is the current example; unchanged" in out
    assert not any("edge.toml" in c and "/etc/deepfer/" in c for c in commands(out))


def test_venv_without_system_site_packages_is_rebuilt(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    venv = prefix / "opt/deepfer/venv"
    (venv / "bin").mkdir(parents=True)
    stub_python(venv / "bin/python")
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    cmds = commands(dry_run(prefix, python=fake_python(tmp_path, None)).stdout)
    assert cmds.index(f"rm -rf {venv}") < cmds.index(f"{tmp_path}/python3 -m venv --system-site-packages {venv}")


@pytest.mark.parametrize(
    ("marker", "content"),
    [("etc/rpi-issue", "Raspberry Pi reference 2024-11-19\n"),
     ("etc/apt/sources.list.d/raspi.list", "deb http://archive.raspberrypi.com/debian/ bookworm main\n")],
    ids=["rpi-issue", "raspberrypi-archive"],
)
def test_raspberry_pi_os_gets_picamera2_and_numpy_pins(tmp_path: Path, marker: str, content: str) -> None:
    prefix = tmp_path / "prefix"
    (prefix / marker).parent.mkdir(parents=True)
    (prefix / marker).write_text(content)
    out = dry_run(prefix, python=fake_python(tmp_path, "1.24.2")).stdout
    cmds = commands(out)
    assert "Raspberry Pi OS" in out
    picamera_install = [c for c in cmds if "apt-get install" in c and "python3-picamera2" in c]
    assert picamera_install or "apt packages present" in out
    if picamera_install:
        assert "--no-install-recommends" in picamera_install[0]
    constraints = out.split(f"+ write {prefix}/opt/deepfer/constraints.txt <<EOF\n", 1)[1].split("\nEOF", 1)[0]
    assert constraints.splitlines() == ["numpy==1.24.2", "opencv-python-headless<4.12"]
    assert any("--constraint" in c and " -m pip " in c for c in cmds)


def test_numpy_2_system_needs_no_opencv_pin(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    (prefix / "etc/apt/sources.list.d").mkdir(parents=True)
    (prefix / "etc/apt/sources.list.d/raspi.list").write_text("# deb http://archive.raspberrypi.com/debian/ bookworm main\n")
    out = dry_run(prefix, python=fake_python(tmp_path, "2.2.4")).stdout
    assert "not Raspberry Pi OS" in out  # a commented-out repository does not count
    constraints = out.split("constraints.txt <<EOF\n", 1)[1].split("\nEOF", 1)[0]
    assert constraints.splitlines() == ["numpy==2.2.4"]


def test_package_sources(tmp_path: Path) -> None:
    py = fake_python(tmp_path, None)
    for gone in ("pypi", "deepfer==0.1.0"):
        result = dry_run(tmp_path / "a", gone, python=py, check=False)
        assert result.returncode == 1 and "not published on PyPI" in result.stderr and "pip wheel" in result.stderr
    wheel = tmp_path / "deepfer-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    from_wheel = [c for c in commands(dry_run(tmp_path / "c", str(wheel), python=py).stdout) if " -m pip " in c]
    assert len(from_wheel) == 2 and from_wheel[1].endswith(f"install --no-deps --force-reinstall {wheel}")
    other_checkout = [c for c in commands(dry_run(tmp_path / "d", str(REPO), python=py).stdout) if " -m pip " in c]
    assert other_checkout[0].endswith(f" wheel --no-deps --wheel-dir {tmp_path}/d/opt/deepfer/wheel {REPO}")


def os_release(prefix: Path, codename: str) -> None:
    (prefix / "etc").mkdir(parents=True, exist_ok=True)
    (prefix / "etc/os-release").write_text(f'PRETTY_NAME="Debian GNU/Linux"\nVERSION_CODENAME={codename}\n')


@pytest.mark.parametrize("arch", ["armhf", "armv7l", "armv6l"])
def test_32_bit_raspberry_pi_os_is_refused_with_the_reason(tmp_path: Path, arch: str) -> None:
    result = dry_run(tmp_path, python=fake_python(tmp_path, None), check=False, arch=arch)
    assert result.returncode == 1
    assert f"32-bit Raspberry Pi OS ({arch}) is not supported" in result.stderr
    assert "ai-edge-litert, numpy 2 and OpenCV publish no" in result.stderr and "64-bit" in result.stderr
    assert not any(" -m venv " in c for c in commands(result.stdout))  # refused before anything is planned


@pytest.mark.parametrize(("codename", "says"), [
    ("trixie", "Debian 13 trixie on arm64: the primary target"),
    ("bookworm", "Debian 12 bookworm on arm64: supported (Trixie is the primary target)"),
    ("bullseye", "release 'bullseye' is untested"),
])
def test_release_is_named_trixie_first(tmp_path: Path, codename: str, says: str) -> None:
    os_release(tmp_path, codename)
    result = dry_run(tmp_path, python=fake_python(tmp_path, None), arch="arm64")
    assert says in result.stdout + result.stderr


def fake_venv_python(tmp_path: Path, numpy: str, picamera2_error: str | None) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    exe = venv / "bin/python"
    picamera2 = f'echo "{picamera2_error}" >&2; exit 1' if picamera2_error else "exit 0"
    exe.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  *"import picamera2"*) {picamera2};;\n'
        f'  *"print(numpy.__version__)"*) echo {numpy};;\n'
        "  *) exit 0;;\n"
        "esac\n"
    )
    exe.chmod(0o755)
    return venv


def verify_imports(venv: Path, system_numpy: str) -> subprocess.CompletedProcess[str]:
    """install.sh's post-install check, run on its own by sourcing the script."""
    script = 'source "$1"; DRY_RUN=0 VENV="$2" RPI_OS=1 SYS_NUMPY="$3"; verify_imports'
    return subprocess.run(["bash", "-c", script, "bash", str(INSTALL), str(venv), system_numpy],
                          capture_output=True, text=True, timeout=30)


def test_post_install_check_explains_the_numpy_pitfall(tmp_path: Path) -> None:
    error = "ValueError: numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, got 88 from PyObject"
    result = verify_imports(fake_venv_python(tmp_path / "a", "2.2.0", error), "1.24.2")
    assert result.returncode == 1
    assert "numpy.dtype size changed" in result.stderr
    assert "the venv imports numpy 2.2.0" in result.stderr and "system numpy (1.24.2)" in result.stderr
    assert "pip uninstall -y numpy" in result.stderr and "numpy==1.24.2" in result.stderr

    other = verify_imports(fake_venv_python(tmp_path / "b", "1.24.2", "ImportError: libcamera.so.0.3: cannot open"), "1.24.2")
    assert other.returncode == 1 and "not the numpy pitfall" in other.stderr and "libcamera.so" in other.stderr

    fine = verify_imports(fake_venv_python(tmp_path / "c", "1.24.2", None), "1.24.2")
    assert fine.returncode == 0, fine.stderr
    assert "imports OK: numpy 1.24.2, OpenCV, deepfer, picamera2" in fine.stdout


@pytest.mark.parametrize("codename", ["trixie", "bookworm"])
def test_with_coral_installs_the_matched_community_runtime(tmp_path: Path, codename: str) -> None:
    prefix = tmp_path / "prefix"
    os_release(prefix, codename)
    out = dry_run(prefix, "--with-coral", python=fake_python(tmp_path, None), arch="arm64").stdout
    cmds = commands(out)
    deb = f"libedgetpu1-std_16.0tf2.18.1-1.{codename}_arm64.deb"
    url = f"https://github.com/feranick/libedgetpu/releases/download/v16.0TF2.18.1-1/{deb}"
    local = f"{prefix}/opt/deepfer/coral/{deb}"
    assert f"curl -fsSL --retry 2 -o {local} {url}" in cmds
    apt = [c for c in cmds if "apt-get install" in c and local in c]
    assert len(apt) == 1  # apt, not dpkg -i: libusb comes along
    assert max(i for i, c in enumerate(cmds) if c == "apt-get update") < cmds.index(apt[0])
    # Google's repository and its 16.0 runtime, which crash with this TFLite, are not used.
    assert "coral-edgetpu-stable" not in "\n".join(cmds) and not any("apt-key.gpg" in c for c in cmds)
    assert "udevadm control --reload-rules" in cmds
    assert "Coral: set delegate" in out


def test_with_coral_takes_a_given_runtime_package(tmp_path: Path) -> None:
    deb = tmp_path / "libedgetpu1-std_16.0tf2.19.1-1.trixie_arm64.deb"
    deb.write_bytes(b"")
    out = dry_run(tmp_path / "p", "--with-coral", "--coral-deb", str(deb), python=fake_python(tmp_path, None)).stdout
    cmds = commands(out)
    assert any("apt-get install" in c and c.endswith(str(deb)) for c in cmds)
    assert not any(c.startswith("curl ") for c in cmds)
    alone = dry_run(tmp_path / "q", "--coral-deb", str(deb), check=False)
    assert alone.returncode == 1 and "--coral-deb only goes with --with-coral" in alone.stderr


def test_with_coral_without_a_known_build_says_why_and_how(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    os_release(prefix, "bullseye")
    result = dry_run(prefix, "--with-coral", python=fake_python(tmp_path, None), arch="arm64")
    assert "the Coral runtime was NOT installed: no community build is known for bullseye on arm64" in result.stderr
    assert "16.0" in result.stderr and "known to crash with TFLite newer than 2.11" in result.stderr
    assert "https://github.com/feranick/libedgetpu/releases" in result.stderr and "--coral-deb FILE.deb" in result.stderr
    assert not any("libedgetpu" in c for c in commands(result.stdout))
    assert "Coral: set delegate" not in result.stdout  # no promise the runtime is there


def test_arm64_check_documents_itself_and_refuses_an_unknown_release() -> None:
    helped = subprocess.run(["bash", str(ARM64_CHECK), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0
    for word in ("bookworm", "trixie", "--system-site-packages", "Cortex-A72", "equal this host's"):
        assert word in helped.stdout, word
    bad = subprocess.run(["bash", str(ARM64_CHECK), "buster"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "RELEASE must be bookworm or trixie" in bad.stderr


def test_uninstall_keeps_settings_and_state_unless_purged(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    for d in ("etc/systemd/system", "opt/deepfer/venv", "etc/deepfer", "var/lib/deepfer"):
        (prefix / d).mkdir(parents=True)
    (prefix / "etc/systemd/system/deepfer-edge.service").write_text(UNIT.read_text())
    p = str(prefix)

    out = dry_run(prefix, "--uninstall").stdout
    cmds = commands(out)
    assert cmds[:3] == ["systemctl disable --now deepfer-edge.service",
                        f"rm -f {p}/etc/systemd/system/deepfer-edge.service",
                        "systemctl daemon-reload"]
    assert f"rm -rf {p}/opt/deepfer" in cmds
    assert not any(f"{p}/etc/deepfer" in c or f"{p}/var/lib/deepfer" in c for c in cmds)
    assert "kept" in out

    purge = commands(dry_run(prefix, "--uninstall", "--purge").stdout)
    assert f"rm -rf {p}/etc/deepfer {p}/var/lib/deepfer" in purge
    assert (prefix / "etc/deepfer").is_dir()  # still a dry run


# --- edge.example.toml ---------------------------------------------------------

SETTING_LINE = re.compile(r"^(?:# )?([a-z_]+) = (.+)$")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DEEPFER_"):
            monkeypatch.delenv(key)


def example_settings() -> dict[str, dict[str, tuple[str, bool]]]:
    """section -> key -> (TOML value text, commented out?); top-level keys under ''."""
    found: dict[str, dict[str, tuple[str, bool]]] = {"": {}}
    section = ""
    for line in EXAMPLE_TOML.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
            found[section] = {}
            continue
        m = SETTING_LINE.match(line)
        if m:
            assert m.group(1) not in found[section], f"{m.group(1)} twice in [{section}]"
            found[section][m.group(1)] = (m.group(2), line.startswith("#"))
    return found


def test_example_settings_load(clean_env: None) -> None:
    settings = load_settings(EXAMPLE_TOML)
    assert settings.camera.source == "csi"
    assert settings.mqtt.enabled


def test_example_lists_every_setting(clean_env: None) -> None:
    found = example_settings()
    for name, field in EdgeSettings.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub is None:
            assert name in found[""], f"top-level setting {name} missing from {EXAMPLE_TOML.name}"
            continue
        assert name in found, f"section [{name}] missing from {EXAMPLE_TOML.name}"
        for key in sub:
            assert key in found[name], f"{name}.{key} missing from {EXAMPLE_TOML.name}"
        extra = set(found[name]) - set(sub)
        assert not extra, f"[{name}] lists unknown settings {extra}"


def test_commented_values_are_the_defaults_and_valid(clean_env: None, tmp_path: Path) -> None:
    found = example_settings()
    defaults = EdgeSettings(device_id="x").model_dump(mode="json")
    checked = 0
    for section, keys in found.items():
        for key, (value, commented) in keys.items():
            default = defaults[key] if section == "" else defaults[section][key]
            if not commented or default is None or (section, key) == ("", "device_id"):
                continue  # live values are choices; None defaults show an example instead
            parsed = tomllib.loads(f"v = {value}")["v"]
            assert parsed == default, f"{section}.{key}: example says {value}, default is {default!r}"
            checked += 1
    assert checked >= 30  # the comment convention ("# key = value") is what makes this check bite
    # Uncommenting everything must still give valid settings.
    everything = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", EXAMPLE_TOML.read_text())
    (tmp_path / "all.toml").write_text(everything)
    settings = load_settings(tmp_path / "all.toml")
    assert settings.classifier.delegate == "cpu" and settings.mqtt.password_file is not None


# --- mosquitto.example.conf ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(d: Path) -> None:
    """The README's openssl commands, for host name localhost."""
    openssl = need("openssl", "openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-days", "30", "-subj", "/CN=DeepFER test CA", "-keyout", "ca.key", "-out", "ca.crt"],
        [openssl, "req", *ec, "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", "server.key", "-out", "server.csr"],
        [openssl, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "30", "-copy_extensions", "copy", "-out", "server.crt"],
    ]
    for step in steps:
        subprocess.run(step, cwd=d, check=True, capture_output=True, timeout=60)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    mosquitto = need("mosquitto", "mosquitto")
    passwd_tool = need("mosquitto_passwd", "mosquitto")
    make_certs(tmp_path)
    subprocess.run([passwd_tool, "-c", "-b", str(tmp_path / "passwd"), "deepfer", "s3cret"], check=True, capture_output=True, timeout=30)
    port = free_port()
    conf = MOSQUITTO_CONF.read_text()
    for old, new in [
        ("/etc/mosquitto/passwd", str(tmp_path / "passwd")),
        ("/etc/mosquitto/certs/", f"{tmp_path}/"),
        ("\nlistener 8883\n", f"\nlistener {port} 127.0.0.1\n"),
    ]:
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/deepfer.conf").write_text(conf)
    # Debian's stock mosquitto.conf, which the example is meant to sit beside.
    main_conf = [
        "persistence true",
        f"persistence_location {tmp_path}/",
        "log_dest stderr",
        "log_type all",
        f"include_dir {tmp_path}/conf.d",
    ]
    if os.geteuid() == 0:
        main_conf.insert(0, "user root")  # else mosquitto drops to 'mosquitto', who cannot read tmp_path
    (tmp_path / "mosquitto.conf").write_text("\n".join(main_conf) + "\n")
    proc = subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto refused the example config:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mosquitto did not open its TLS listener")
                time.sleep(0.1)
        yield port, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mqtt_connect(port: int, ca: Path, username: str | None, password: str | None) -> str:
    """Connect over TLS; return the CONNACK reason as text."""
    import paho.mqtt.client as mqtt

    done = threading.Event()
    result: dict[str, str] = {}

    def on_connect(client, userdata, flags, reason_code, properties=None) -> None:
        result["reason"] = str(reason_code)
        done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{username}")
    client.on_connect = on_connect
    client.tls_set(ca_certs=str(ca))
    if username:
        client.username_pw_set(username, password)
    client.connect("localhost", port, keepalive=10)
    client.loop_start()
    try:
        assert done.wait(15), "no CONNACK from the broker"
    finally:
        client.disconnect()
        client.loop_stop()
    return result["reason"]


@pytest.mark.broker
def test_mosquitto_example_config_starts_and_enforces_tls_and_passwords(tls_broker: tuple[int, Path]) -> None:
    port, d = tls_broker
    assert mqtt_connect(port, d / "ca.crt", "deepfer", "s3cret") == "Success"
    assert mqtt_connect(port, d / "ca.crt", "deepfer", "wrong") != "Success"
    assert mqtt_connect(port, d / "ca.crt", None, None) != "Success"  # allow_anonymous false


# --- documentation that must stay true ---------------------------------------------


README = REPO / "README.md"
CARD = REPO / "edge" / "models" / "deepfer_fernet_int8.md"


def test_readme_installs_from_the_checkout_or_a_wheel_not_from_pypi() -> None:
    text = README.read_text() + (REPO / "deploy" / "README.md").read_text()
    # The first and second commands of the README, verbatim.
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/deepfer-edge --camera demo --stdout" in text
    assert "\n./tools/test.sh\n" in text
    # deepfer is not on PyPI: nothing may tell a reader to fetch it from there.
    assert not re.search(r"pip install [\"']?deepfer\b", text), re.search(r"pip install [\"']?deepfer\b.*", text)
    assert "install.sh pypi" not in text
    assert "pip wheel --no-deps -w dist ." in text and "python3 -m build" in text


def test_every_extra_named_in_the_docs_installs_something() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert all(extras.values()), [k for k, v in extras.items() if not v]
    named = set(re.findall(r"\.\[(\w+)", README.read_text() + (REPO / "tools" / "test.sh").read_text()))
    assert named and named <= set(extras), named - set(extras)


def test_targets_are_trixie_first_then_bookworm() -> None:
    for doc in (README, REPO / "deploy" / "README.md"):
        text = doc.read_text()
        assert "Trixie" in text and "Bookworm" in text, doc
        assert text.index("Trixie") < text.index("Bookworm"), f"{doc.name} names Bookworm before Trixie"
        assert "32-bit" in text and "not supported" in text, doc


def test_responsible_use_is_in_the_readme_and_every_model_card() -> None:
    from train.card import model_card

    metrics = {"n": 10, "accuracy": 0.5, "top2_accuracy": 0.7, "macro": {"f1": 0.4}, "weighted": {"f1": 0.45},
               "ece": 0.05, "per_class": {"happy": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10}}}
    generated = model_card("x", {"int8": metrics})
    for name, text in (("README", README.read_text()), ("shipped card", CARD.read_text()), ("generated card", generated)):
        assert "## Responsible use" in text, name
        assert "visible facial expression" in text and "not" in text.split("visible facial expression", 1)[1][:200], name
        assert "2 February 2025" in text and "EU AI Act" in text, name
        assert "workplace" in text and "education" in text and "not support" in text, name
