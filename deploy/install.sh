#!/usr/bin/env bash
# Install, upgrade or remove the DeepFER edge daemon as a systemd service.
#
# Targets: Raspberry Pi OS Trixie 64-bit (Debian 13, Python 3.13) first, Bookworm
# 64-bit (Debian 12, Python 3.11) second, with a CSI camera through apt's picamera2;
# and any Debian 12/13 (arm64 or x86-64) with a USB camera. 32-bit Raspberry Pi OS
# is refused: nothing the daemon needs has a wheel there. Safe to run again: every step checks
# what is already there, and an existing /etc/deepfer/edge.toml is never
# overwritten. Run with --help for the options.
set -euo pipefail
# The daemon (user deepfer) must read the venv root creates; a hardened root
# umask such as 077 would make it unreadable.
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

# DEEPFER_PREFIX puts every path under another root (tests, image builds);
# DEEPFER_DRY_RUN=1 prints the commands instead of running them;
# DEEPFER_PYTHON is the interpreter the virtual environment is built from.
PREFIX=${DEEPFER_PREFIX:-}
DRY_RUN=${DEEPFER_DRY_RUN:-0}
SYSTEM_PYTHON=${DEEPFER_PYTHON:-/usr/bin/python3}

SERVICE_USER=deepfer
UNIT_NAME=deepfer-edge.service
OPT_DIR=$PREFIX/opt/deepfer
VENV=$OPT_DIR/venv
ETC_DIR=$PREFIX/etc/deepfer
STATE_DIR=$PREFIX/var/lib/deepfer
UNIT_DIR=$PREFIX/etc/systemd/system
# The home directory is the unit's StateDirectory; it is never under $PREFIX
# because it is a path as the daemon sees it.
SERVICE_HOME=/var/lib/deepfer
# Google's Coral repository (coral-edgetpu-stable) stops at libedgetpu1-std 16.0,
# built against TFLite 2.5; it is reported to segfault with TFLite newer than
# 2.11, and the daemon's LiteRT is far newer. The community rebuilds below match
# TFLite 2.17+; install.sh no longer adds Google's repository. This list is only
# what older versions of this script wrote, so --uninstall can point at it.
CORAL_LIST=$PREFIX/etc/apt/sources.list.d/coral-edgetpu.list
CORAL_KEYRING=$PREFIX/etc/apt/keyrings/coral-edgetpu.gpg
# feranick/libedgetpu: the maintained rebuilds of Google's runtime, one .deb per
# TFLite version, Debian release and architecture. The file name follows that
# project's releases (e.g. v16.0TF2.13.1-2/libedgetpu1-std_16.0tf2.13.1-2.bookworm_arm64.deb);
# DEEPFER_CORAL_RELEASE picks another release, --coral-deb a file or URL outright.
CORAL_RELEASES_URL=https://github.com/feranick/libedgetpu/releases
CORAL_RELEASE=${DEEPFER_CORAL_RELEASE:-16.0TF2.18.1-1}
CORAL_CRASH_NOTE="Google's official libedgetpu1-std 16.0 (coral-edgetpu-stable) is known to crash with TFLite newer than 2.11, which the daemon uses"

usage() {
    cat <<EOF
Usage: sudo $0 [OPTIONS] [SOURCE]
       sudo $0 --uninstall [--purge] [--dry-run]

Installs DeepFER edge as the systemd service deepfer-edge:
  apt packages    python3-venv, ca-certificates; python3-picamera2 on Raspberry Pi OS
  user            deepfer (system user, groups: video; plugdev/apex with --with-coral)
  /opt/deepfer/venv   virtual environment (--system-site-packages, so apt's
                  picamera2/libcamera are importable), numpy pinned to the system's
  /etc/deepfer/edge.toml   settings from deploy/edge.example.toml; an existing one
                  is kept and the new example is written as edge.toml.new
  /etc/deepfer/mqtt_password   broker password (empty = none), 0640 root:deepfer
  /etc/systemd/system/deepfer-edge.service   enabled and (re)started

SOURCE (where the deepfer package comes from; deepfer is not on PyPI):
  (none)          the checkout this script belongs to ($REPO_DIR):
                  a wheel is built from it (pip wheel) and installed
  DIR             another checkout directory, built into a wheel the same way
  FILE.whl        a wheel built elsewhere (python3 -m build, or pip wheel --no-deps .)

Options:
  --with-coral    also set up a Coral Edge TPU: install a libedgetpu1-std built
                  against TFLite 2.17+ (the community build for this Debian
                  release from $CORAL_RELEASES_URL,
                  release $CORAL_RELEASE; runtime + udev rules for the USB
                  Accelerator), add deepfer to plugdev (and apex for PCIe/M.2
                  cards, whose gasket-dkms driver is not installed here). Not
                  Google's coral-edgetpu-stable libedgetpu1-std 16.0: it is known to
                  crash with TFLite newer than 2.11. Then set delegate = "edgetpu"
                  (or "auto") under [classifier] in edge.toml and replug the USB
                  Accelerator. See deploy/README.md.
  --coral-deb F   with --with-coral: install this libedgetpu1-std .deb (a file or
                  an https:// URL) instead of the default community build
  --no-start      install and enable, but do not start now
  --uninstall     stop and remove the service, /opt/deepfer and the deepfer user;
                  /etc/deepfer and /var/lib/deepfer are kept
  --purge         with --uninstall: also delete /etc/deepfer and /var/lib/deepfer
  --dry-run       print the commands instead of running them (or DEEPFER_DRY_RUN=1)
  -h, --help      show this help

Environment: DEEPFER_PREFIX=DIR puts all paths under DIR; DEEPFER_PYTHON
(default /usr/bin/python3) is the interpreter the venv is built from;
DEEPFER_ARCH overrides the detected Debian architecture (tests, image builds);
DEEPFER_CORAL_RELEASE picks the community Coral release (default $CORAL_RELEASE).
EOF
}

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Run a command that changes the system, or only show it in a dry run.
run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Write CONTENT to FILE (mode 0644), or show it in a dry run.
write_file() {
    local file=$1 content=$2
    if [[ $DRY_RUN == 1 ]]; then
        printf '+ write %q <<EOF\n%s\nEOF\n' "$file" "$content"
    else
        printf '%s\n' "$content" >"$file"
        chmod 0644 "$file"
    fi
}

# apt-get update once per run, and again after a repository was added.
APT_FRESH=0
apt_update() {
    if [[ $APT_FRESH == 0 ]]; then
        run apt-get update
        APT_FRESH=1
    fi
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

user_exists() { getent passwd "$SERVICE_USER" >/dev/null; }

is_raspberry_pi_os() {
    # /etc/rpi-issue is written by Raspberry Pi OS images; the repository check
    # also catches a Debian with Raspberry Pi's archive (where picamera2 lives) added.
    [[ -e $PREFIX/etc/rpi-issue ]] ||
        grep -qsE '^[^#]*archive\.raspberrypi\.(com|org)' "$PREFIX"/etc/apt/sources.list "$PREFIX"/etc/apt/sources.list.d/*
}

system_numpy_version() {
    "$SYSTEM_PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        say "apt packages present: $*"
        return
    fi
    apt_update
    # Recommends of python3-picamera2 are the Qt/OpenGL preview stack: not for a headless daemon.
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

resolve_source() {
    local src=${1:-}
    if [[ -z $src ]]; then
        if ! grep -qs '^name = "deepfer"' "$REPO_DIR/pyproject.toml"; then
            die "$REPO_DIR is not a deepfer checkout; give a checkout directory or a .whl file as SOURCE"
        fi
        PKG_SPEC=$REPO_DIR
        PKG_KIND=dir
    elif [[ $src == pypi || ($src == deepfer* && ! -e $src) ]]; then
        die "deepfer is not published on PyPI; install from a checkout (sudo $0) or a wheel (python3 -m pip wheel --no-deps -w dist . && sudo $0 dist/deepfer-*.whl)"
    elif [[ -d $src ]]; then
        [[ -f $src/pyproject.toml ]] || die "$src has no pyproject.toml; give a deepfer checkout or a .whl file"
        PKG_SPEC=$(cd "$src" && pwd)
        PKG_KIND=dir
    elif [[ -f $src && $src == *.whl ]]; then
        PKG_SPEC=$(cd "$(dirname "$src")" && pwd)/$(basename "$src")
        PKG_KIND=wheel
    else
        die "SOURCE '$src' is neither a checkout directory nor a .whl file"
    fi
}

debian_arch() {
    if [[ -n ${DEEPFER_ARCH:-} ]]; then
        echo "$DEEPFER_ARCH"
    else
        dpkg --print-architecture 2>/dev/null || uname -m
    fi
}

os_codename() {
    # VERSION_CODENAME is bookworm/trixie on Debian and on Raspberry Pi OS alike.
    local release=$PREFIX/etc/os-release
    [[ -f $release ]] || release=/etc/os-release
    (
        # shellcheck disable=SC1090
        . "$release" 2>/dev/null && echo "${VERSION_CODENAME:-unknown}"
    ) || echo unknown
}

check_platform() {
    local arch codename
    arch=$(debian_arch)
    case $arch in
        arm64 | aarch64 | amd64 | x86_64) ;;
        armhf | armel | armv7l | armv6l | arm)
            die "32-bit Raspberry Pi OS ($arch) is not supported: ai-edge-litert, numpy 2 and OpenCV publish no
  wheels for it, so pip would have to compile them (hours, and LiteRT does not build there at all).
  Install Raspberry Pi OS (64-bit), Trixie or Bookworm, on a Pi 3, 4, 5 or Zero 2 W, then run this again."
            ;;
        *) warn "$arch is untested and has no ai-edge-litert wheel; the supported targets are arm64 (Raspberry Pi OS 64-bit) and x86-64" ;;
    esac
    codename=$(os_codename)
    case $codename in
        trixie) say "Debian 13 trixie on $arch: the primary target" ;;
        bookworm) say "Debian 12 bookworm on $arch: supported (Trixie is the primary target)" ;;
        *) warn "release '$codename' is untested; the targets are Trixie (Debian 13) and Bookworm (Debian 12)" ;;
    esac
    CODENAME=$codename
    ARCH=$arch
}

install_packages() {
    local pkgs=(python3-venv ca-certificates)
    if is_raspberry_pi_os; then
        say "Raspberry Pi OS: installing picamera2 from apt (pip cannot build libcamera's bindings)"
        pkgs+=(python3-picamera2)
        RPI_OS=1
    else
        say "not Raspberry Pi OS: USB cameras, video files and streams only (camera.source = \"usb:0\")"
        RPI_OS=0
    fi
    apt_install "${pkgs[@]}"
}

coral_installed_version() {
    dpkg-query -W -f='${db:Status-Status} ${Version}' libedgetpu1-std 2>/dev/null | sed -n 's/^installed //p'
}

# A matched runtime's version names the TFLite it was built against: 16.0tf2.18.1-1.
coral_version_is_matched() {
    [[ $1 =~ tf2\.([0-9]+) ]] && ((BASH_REMATCH[1] >= 17))
}

coral_default_deb() {
    local release_lower
    release_lower=$(printf '%s' "$CORAL_RELEASE" | tr '[:upper:]' '[:lower:]')
    case $ARCH:$CODENAME in
        arm64:bookworm | arm64:trixie | amd64:bookworm | amd64:trixie)
            echo "$CORAL_RELEASES_URL/download/v$CORAL_RELEASE/libedgetpu1-std_${release_lower}.${CODENAME}_${ARCH}.deb"
            ;;
        *) return 1 ;;
    esac
}

coral_not_installed() {
    warn "the Coral runtime was NOT installed: $1.
  $CORAL_CRASH_NOTE, so this script does not install it.
  Get a matched one: download the libedgetpu1-std_16.0tf2.<17 or newer>*.${CODENAME}_${ARCH}.deb from
  $CORAL_RELEASES_URL and run: sudo $0 --with-coral --coral-deb FILE.deb
  Meanwhile classifier.delegate = \"auto\" runs on the CPU."
    CORAL_OK=0
}

setup_coral() {
    local current deb
    current=$(coral_installed_version || true)
    if [[ -n $current && -z $CORAL_DEB ]] && coral_version_is_matched "$current"; then
        say "Coral runtime present: libedgetpu1-std $current (built against TFLite 2.17+)"
    else
        if [[ -n $current ]] && ! coral_version_is_matched "$current"; then
            warn "libedgetpu1-std $current is installed: $CORAL_CRASH_NOTE; replacing it with a matched build"
        fi
        deb=$CORAL_DEB
        if [[ -z $deb ]] && ! deb=$(coral_default_deb); then
            coral_not_installed "no community build is known for $CODENAME on $ARCH"
            return
        fi
        if [[ $deb == https://* || $deb == http://* ]]; then
            apt_install curl ca-certificates
            local file=$OPT_DIR/coral/${deb##*/}
            run install -d -m 0755 "$OPT_DIR/coral"
            say "downloading the Coral runtime $deb"
            if ! run curl -fsSL --retry 2 -o "$file" "$deb"; then
                coral_not_installed "downloading $deb failed (no network, or that release has no build for $CODENAME/$ARCH)"
                return
            fi
            deb=$file
        elif [[ ! -f $deb ]]; then
            die "--coral-deb $deb: no such file"
        else
            deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
        fi
        apt_update
        # apt (not dpkg -i) so that the runtime's dependency libusb-1.0-0 comes along.
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --allow-downgrades "$deb"
    fi
    # The runtime's udev rule gives the USB Accelerator to plugdev; the
    # running rules only apply to devices plugged in after a reload.
    run udevadm control --reload-rules
    run udevadm trigger --subsystem-match=usb --action=add
    if [[ -e $CORAL_LIST ]]; then
        warn "$CORAL_LIST (Google's coral-edgetpu-stable, written by an older install.sh) would offer libedgetpu1-std 16.0 again; remove it: sudo rm $CORAL_LIST $CORAL_KEYRING && sudo apt-get update"
    fi
}

setup_user() {
    if user_exists; then
        say "user $SERVICE_USER exists"
    else
        run useradd --system --user-group --home-dir "$SERVICE_HOME" --no-create-home \
            --shell /usr/sbin/nologin --comment "DeepFER edge daemon" "$SERVICE_USER"
    fi
    # Device access comes from group membership (the unit maps no extra groups:
    # SupplementaryGroups= would fail on a host that lacks one of them).
    local groups=(video) group
    if [[ $WITH_CORAL == 1 ]]; then
        groups+=(plugdev apex)
    fi
    for group in "${groups[@]}"; do
        if ! getent group "$group" >/dev/null; then
            [[ $group == apex ]] || warn "group $group does not exist on this system; skipping it"
            continue
        fi
        if user_exists && id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$group"; then
            continue
        fi
        run usermod -a -G "$group" "$SERVICE_USER"
    done
}

setup_dirs() {
    run install -d -m 0755 "$OPT_DIR"
    # /etc/deepfer holds the password and maybe TLS keys: root writes, the daemon reads.
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    # systemd's StateDirectory= would create it too; here it exists for
    # `sudo -u deepfer deepfer-edge check` before the first start.
    run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
}

venv_is_usable() {
    [[ -x $VENV/bin/python ]] &&
        grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null &&
        "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1
}

setup_venv() {
    if venv_is_usable; then
        say "virtual environment present: $VENV"
    else
        if [[ -e $VENV ]]; then
            # After an OS upgrade (new Python) or without system site packages the
            # venv cannot see apt's picamera2; rebuilding is cheaper than repairing.
            say "virtual environment $VENV is unusable or lacks system site packages: rebuilding it"
            run rm -rf "$VENV"
        fi
        run "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
    fi
}

write_constraints() {
    # apt's picamera2 and simplejpeg are compiled against Debian's numpy (1.24 on
    # Bookworm). A numpy 2 from pip in the venv would shadow it and break
    # `import picamera2` with "numpy.dtype size changed, may indicate binary
    # incompatibility". Pin numpy to the system's and pick wheels that accept it.
    local constraints=$OPT_DIR/constraints.txt content
    SYS_NUMPY=$(system_numpy_version)
    if [[ -z $SYS_NUMPY ]]; then
        say "no numpy in $SYSTEM_PYTHON's site packages: pip chooses numpy freely"
        content="# No system numpy: nothing to pin."
    else
        say "system numpy $SYS_NUMPY: pinned in the venv (apt's compiled modules need it)"
        content="numpy==$SYS_NUMPY"
        if [[ ${SYS_NUMPY%%.*} -lt 2 ]]; then
            # 4.12 and later require numpy >= 2; 4.11.0.86 is the last for numpy 1.x.
            content+=$'\n'"opencv-python-headless<4.12"
        fi
    fi
    write_file "$constraints" "$content"
    CONSTRAINTS=$constraints
}

build_wheel() {
    # Whatever the source, a wheel is what gets installed: the same artefact as a
    # wheel built elsewhere and copied over (setuptools' build/ and *.egg-info
    # stay in the checkout; both are in .gitignore).
    local dir=$OPT_DIR/wheel
    say "building a wheel from the checkout $PKG_SPEC"
    run rm -rf "$dir"
    run "${PIP[@]}" wheel --no-deps --wheel-dir "$dir" "$PKG_SPEC"
    if [[ $DRY_RUN == 1 ]]; then
        WHEEL=$dir/deepfer-VERSION-py3-none-any.whl
    else
        WHEEL=$(find "$dir" -maxdepth 1 -name 'deepfer-*.whl' -print -quit)
        [[ -n $WHEEL ]] || die "pip wheel built no deepfer-*.whl in $dir; see the pip output above"
    fi
}

install_package() {
    PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
    if [[ $PKG_KIND == dir ]]; then
        build_wheel
    else
        WHEEL=$PKG_SPEC
    fi
    say "installing deepfer from $WHEEL"
    run "${PIP[@]}" install --constraint "$CONSTRAINTS" "$WHEEL"
    # pip skips a wheel whose version is already installed; a rebuilt wheel must replace it.
    run "${PIP[@]}" install --no-deps --force-reinstall "$WHEEL"
}

verify_imports() {
    [[ $DRY_RUN == 1 ]] && return
    local py=$VENV/bin/python err
    if ! err=$("$py" -c 'import numpy, cv2, edge.cli' 2>&1); then
        die "the installed package does not import: ${err##*$'\n'}
  Inspect with: $py -c 'import numpy, cv2, edge.cli'"
    fi
    if ! "$py" -c 'import ai_edge_litert.interpreter' >/dev/null 2>&1 &&
        ! "$py" -c 'import tflite_runtime.interpreter' >/dev/null 2>&1; then
        warn "no TFLite runtime in the venv (ai-edge-litert has no wheel for $(uname -m));
  install one: sudo $py -m pip install tflite-runtime"
    fi
    if [[ $RPI_OS == 1 ]] && ! err=$("$py" -c 'import picamera2' 2>&1); then
        local venv_numpy
        venv_numpy=$("$py" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo '?')
        if [[ $venv_numpy != "$SYS_NUMPY" ]]; then
            die "import picamera2 fails in the venv: ${err##*$'\n'}
  picamera2/simplejpeg come from apt and are built against the system numpy (${SYS_NUMPY:-none});
  the venv imports numpy $venv_numpy. Fix (then run this script again):
    sudo $py -m pip uninstall -y numpy        # use the system numpy
    sudo $py -m pip install 'numpy==${SYS_NUMPY:-<system version>}' 'opencv-python-headless<4.12'
  or, without a CSI camera, remove python3-picamera2 and use camera.source = \"usb:0\"."
        fi
        die "import picamera2 fails in the venv: ${err##*$'\n'}
  numpy matches the system's ($venv_numpy), so this is not the numpy pitfall. Check apt's
  install outside the venv: /usr/bin/python3 -c 'import picamera2'
  (sudo apt-get install --reinstall python3-picamera2 python3-libcamera)."
    fi
    say "imports OK: numpy $("$py" -c 'import numpy; print(numpy.__version__)'), OpenCV, deepfer$([[ $RPI_OS == 1 ]] && echo ', picamera2')"
}

install_config() {
    local example=$SCRIPT_DIR/edge.example.toml target=$ETC_DIR/edge.toml
    if [[ ! -e $target ]]; then
        run install -m 0640 -o root -g "$SERVICE_USER" "$example" "$target"
    elif cmp -s "$example" "$target"; then
        say "$target is the current example; unchanged"
    else
        run install -m 0640 -o root -g "$SERVICE_USER" "$example" "$target.new"
        say "kept your $target; the current example is $target.new (compare: diff $target $target.new)"
    fi
    # The unit loads this as a credential and refuses to start without the file;
    # empty means no password.
    if [[ ! -e $ETC_DIR/mqtt_password ]]; then
        run install -m 0640 -o root -g "$SERVICE_USER" /dev/null "$ETC_DIR/mqtt_password"
    else
        say "$ETC_DIR/mqtt_password present; unchanged"
    fi
    run install -m 0644 "$example" "$OPT_DIR/edge.example.toml"
    if [[ -f $SCRIPT_DIR/README.md ]]; then
        run install -m 0644 "$SCRIPT_DIR/README.md" "$OPT_DIR/README.md"
    fi
}

service_is_active() {
    systemctl is-active --quiet "$UNIT_NAME" 2>/dev/null
}

install_unit() {
    local unit_src=$REPO_DIR/systemd/$UNIT_NAME
    run install -d -m 0755 "$UNIT_DIR"
    run install -m 0644 "$unit_src" "$UNIT_DIR/$UNIT_NAME"
    run systemctl daemon-reload
    if [[ $NO_START == 1 ]]; then
        run systemctl enable "$UNIT_NAME"
        say "enabled; start it with: sudo systemctl start deepfer-edge"
    elif service_is_active; then
        run systemctl enable "$UNIT_NAME"
        # Upgrade: pick up the new code and unit.
        run systemctl restart "$UNIT_NAME"
    else
        run systemctl enable --now "$UNIT_NAME"
    fi
}

do_install() {
    [[ -f $SCRIPT_DIR/edge.example.toml && -f $REPO_DIR/systemd/$UNIT_NAME ]] ||
        die "run this script from a deepfer checkout: it needs deploy/edge.example.toml and systemd/$UNIT_NAME beside it"
    if [[ $DRY_RUN != 1 && -z $PREFIX && ! -d /run/systemd/system ]]; then
        die "systemd is not running here (a container?); this script installs a systemd service"
    fi
    check_platform
    install_packages
    if [[ $WITH_CORAL == 1 ]]; then
        setup_coral
    fi
    setup_user
    setup_dirs
    setup_venv
    write_constraints
    install_package
    verify_imports
    install_config
    install_unit
    say "done. Settings: $ETC_DIR/edge.toml (then: sudo systemctl restart deepfer-edge)"
    # CREDENTIALS_DIRECTORY=/etc/deepfer hands check the same mqtt_password the unit loads.
    say "check the set-up:  sudo -u $SERVICE_USER env CREDENTIALS_DIRECTORY=/etc/deepfer $VENV/bin/deepfer-edge check --config /etc/deepfer/edge.toml"
    say "follow the log:    journalctl -u deepfer-edge -f"
    if [[ $WITH_CORAL == 1 && $CORAL_OK == 1 ]]; then
        say "Coral: set delegate = \"edgetpu\" (or \"auto\") under [classifier] and replug the USB Accelerator"
    fi
}

do_uninstall() {
    if [[ -e $UNIT_DIR/$UNIT_NAME ]]; then
        run systemctl disable --now "$UNIT_NAME"
        run rm -f "$UNIT_DIR/$UNIT_NAME"
        run systemctl daemon-reload
        # Forget a failed state so a later install starts clean; absent state is fine.
        run systemctl reset-failed "$UNIT_NAME" || true
    else
        say "no $UNIT_DIR/$UNIT_NAME; nothing to stop"
    fi
    if [[ -e $OPT_DIR ]]; then
        run rm -rf "$OPT_DIR"
    fi
    if user_exists; then
        run userdel "$SERVICE_USER"
    fi
    if [[ $PURGE == 1 ]]; then
        run rm -rf "$ETC_DIR" "$STATE_DIR"
        say "removed settings ($ETC_DIR) and state ($STATE_DIR)"
    else
        say "kept $ETC_DIR and $STATE_DIR (--uninstall --purge removes them)"
    fi
    if [[ -e $CORAL_LIST ]]; then
        say "the Coral apt repository stays; remove it with: sudo rm $CORAL_LIST $CORAL_KEYRING && sudo apt-get update"
    fi
}

main() {
    local action=install source=""
    WITH_CORAL=0 NO_START=0 PURGE=0 RPI_OS=0 SYS_NUMPY="" CONSTRAINTS="" PKG_SPEC="" PKG_KIND="" WHEEL=""
    CORAL_DEB="" CORAL_OK=1 CODENAME=unknown ARCH=unknown PIP=()
    while (($# > 0)); do
        case $1 in
            -h | --help)
                usage
                exit 0
                ;;
            --with-coral) WITH_CORAL=1 ;;
            --coral-deb)
                (($# >= 2)) || die "--coral-deb needs a .deb file or URL"
                CORAL_DEB=$2
                shift
                ;;
            --no-start) NO_START=1 ;;
            --uninstall) action=uninstall ;;
            --purge) PURGE=1 ;;
            --dry-run) DRY_RUN=1 ;;
            -*)
                printf 'error: unknown option %s\n\n' "$1" >&2
                usage >&2
                exit 2
                ;;
            *)
                [[ -z $source ]] || die "only one SOURCE may be given (got '$source' and '$1')"
                source=$1
                ;;
        esac
        shift
    done
    [[ $DRY_RUN == 1 ]] && say "dry run: commands are printed, not run"
    if [[ -n $CORAL_DEB && $WITH_CORAL != 1 ]]; then
        die "--coral-deb only goes with --with-coral"
    fi
    if [[ $PURGE == 1 && $action != uninstall ]]; then
        die "--purge only goes with --uninstall"
    fi
    if [[ $DRY_RUN != 1 && $(id -u) != 0 ]]; then
        die "must run as root: sudo $0 $*"
    fi
    # Guard the rm -rf targets against an unexpected prefix.
    [[ $OPT_DIR == */opt/deepfer && $ETC_DIR == */etc/deepfer && $STATE_DIR == */var/lib/deepfer ]] ||
        die "unexpected install paths under DEEPFER_PREFIX='$PREFIX'"
    if [[ $action == uninstall ]]; then
        do_uninstall
    else
        resolve_source "$source"
        do_install
    fi
}

# Sourcing (tests) defines the functions without running anything.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
