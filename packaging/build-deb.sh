#!/usr/bin/env bash
# Build the tagway Debian package: dist/tagway_<version>_<arch>.deb (`make deb`).
#
# Usage: bash packaging/build-deb.sh [--skip-venv] [--stage-dir DIR] [--out DIR]
#   --skip-venv      stage everything but the virtual environment and stop before dpkg-deb
#                    (seconds instead of minutes: the tests check the layout this way)
#   --stage-dir DIR  build the package tree in DIR (kept afterwards) instead of a temp dir
#   --out DIR        where the .deb goes (default: dist/)
# Environment: PYTHON (the target's interpreter, default /usr/bin/python3),
#   PIP_CONSTRAINTS_FROM (a python whose installed versions pin the build; default .venv's,
#   so the package carries the versions the tests ran against), DEB_COMPRESSION (gzip).
#
# How the virtual environment gets to /opt/tagway without building on the build machine's
# /opt: it is created at <stage>/opt/tagway with the system python (`python3 -m venv`, whose
# interpreter links point at /usr/bin/python3, the same path on the gateway), the wheel and its
# dependencies are installed without byte-compiling, and then every place that recorded the
# staging path is rewritten to /opt/tagway: the scripts' shebangs, the activate scripts and
# pyvenv.cfg. Byte-code is compiled last with the staging prefix stripped, so tracebacks name
# /opt/tagway/... and the read-only /opt (ProtectSystem=strict) never needs a .pyc written.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG="$ROOT/packaging"
PYTHON=${PYTHON:-/usr/bin/python3}
PREFIX=/opt/tagway
SKIP_VENV=0
STAGE=""
OUT="$ROOT/dist"

while [ $# -gt 0 ]; do
    case "$1" in
        --skip-venv) SKIP_VENV=1 ;;
        --stage-dir) STAGE=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$STAGE" ]; then
    STAGE="$WORK/stage"
fi
rm -rf "$STAGE"
mkdir -p "$STAGE" "$OUT"
STAGE=$(cd "$STAGE" && pwd)
OUT=$(cd "$OUT" && pwd)

log() { echo "build-deb: $*" >&2; }

# PEP 440 -> Debian: pre-releases sort before the release (0.2.0rc1 -> 0.2.0~rc1).
PY_VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")
DEB_VERSION=$(printf '%s' "$PY_VERSION" | sed -E 's/\.?(a|b|rc|dev)([0-9]+)/~\1\2/g')
ARCH=$(dpkg --print-architecture)

stage_files() {
    install -d -m 0755 "$STAGE/DEBIAN" "$STAGE/etc/tagway" "$STAGE/lib/systemd/system" \
        "$STAGE/usr/bin" "$STAGE$PREFIX/share/doc"
    install -m 0644 "$PKG/systemd/tagway.service" "$PKG/systemd/tagway-cloud.service" \
        "$STAGE/lib/systemd/system/"
    # The starter config `tagway init` writes, with the package's state directory.
    # cli/starter.py is loaded by its path: importing the `cli` package would need typer.
    "$PYTHON" - "$ROOT/cli/starter.py" > "$STAGE/etc/tagway/config.yaml" <<'PY'
import runpy, sys
starter = runpy.run_path(sys.argv[1])["STARTER"]
sys.stdout.write(starter.format(path="/etc/tagway/config.yaml", name="gateway-1",
                                state_dir="/var/lib/tagway"))
PY
    chmod 0644 "$STAGE/etc/tagway/config.yaml"
    install -m 0640 "$PKG/etc/cloud.env" "$STAGE/etc/tagway/cloud.env"
    install -m 0644 "$ROOT/README.md" "$STAGE$PREFIX/share/doc/README.md"
    [ -f "$ROOT/CHANGELOG.md" ] && install -m 0644 "$ROOT/CHANGELOG.md" "$STAGE$PREFIX/share/doc/"
    ln -sf "$PREFIX/bin/tagway" "$STAGE/usr/bin/tagway"
    install -m 0644 "$PKG/debian/conffiles" "$STAGE/DEBIAN/conffiles"
    install -m 0755 "$PKG/debian/postinst" "$PKG/debian/prerm" "$PKG/debian/postrm" \
        "$STAGE/DEBIAN/"
}

source_tree() {
    # A clean copy of the sources (tracked and new files, nothing ignored): building the wheel
    # in place would leave build/ and *.egg-info in the work tree.
    mkdir -p "$WORK/src"
    if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
            | tar --null -cf - -T -) | tar -xf - -C "$WORK/src"
    else
        (cd "$ROOT" && tar --exclude=.venv --exclude=dist --exclude=build -cf - .) \
            | tar -xf - -C "$WORK/src"
    fi
}

constraints() {
    local from=${PIP_CONSTRAINTS_FROM:-$ROOT/.venv/bin/python}
    : > "$WORK/constraints.txt"
    if [ -x "$from" ]; then
        "$from" -m pip list --format=freeze --exclude-editable 2>/dev/null \
            | grep -v -i '^tagway==' > "$WORK/constraints.txt" || true
        log "pinning to the $(wc -l < "$WORK/constraints.txt") versions installed in $from"
    fi
}

build_venv() {
    local venv="$STAGE$PREFIX"
    source_tree
    constraints
    log "creating the virtual environment with $PYTHON"
    "$PYTHON" -m venv "$venv"
    log "building the tagway wheel"
    "$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/wheels" "$WORK/src"
    log "installing tagway and its dependencies (pip's cache is reused)"
    "$venv/bin/python" -m pip install --quiet --no-compile -c "$WORK/constraints.txt" \
        "$WORK"/wheels/tagway-*.whl
    relocate "$venv"
    log "byte-compiling for $PREFIX"
    "$venv/bin/python" -m compileall -q -j 0 --invalidation-mode checked-hash \
        -s "$STAGE" -p / "$venv/lib" >/dev/null
}

relocate() {
    # Rewrite the staging path to the installed path wherever the venv recorded it.
    local venv=$1 file
    while IFS= read -r -d '' file; do
        if head -c 2 "$file" | grep -q '#!' || [[ "$file" == */activate* ]]; then
            sed -i "s#$venv#$PREFIX#g" "$file"
        fi
    done < <(find "$venv/bin" -type f -print0)
    sed -i "s#$venv#$PREFIX#g" "$venv/pyvenv.cfg"
    if grep -rIl --exclude-dir=__pycache__ "$STAGE" "$venv/bin" "$venv/pyvenv.cfg"; then
        echo "build-deb: the staging path is still recorded in the files above" >&2
        exit 1
    fi
}

write_control() {
    local size
    size=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
    sed -e "s/@VERSION@/$DEB_VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$size/" \
        "$PKG/debian/control.in" > "$STAGE/DEBIAN/control"
    chmod 0644 "$STAGE/DEBIAN/control"
    # Conffiles are left out, as dh_md5sums does: dpkg tracks their hashes itself.
    (cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' \
        | grep -v -x -F -f <(sed 's#^/##' "$STAGE/DEBIAN/conffiles") \
        | LC_ALL=C sort | tr '\n' '\0' | xargs -0 md5sum) > "$STAGE/DEBIAN/md5sums"
    chmod 0644 "$STAGE/DEBIAN/md5sums"
}

stage_files
if [ "$SKIP_VENV" = 1 ]; then
    write_control
    log "staged without the virtual environment in $STAGE"
    exit 0
fi
build_venv
write_control
DEB="$OUT/tagway_${DEB_VERSION}_${ARCH}.deb"
log "packing $DEB"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-gzip}" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
