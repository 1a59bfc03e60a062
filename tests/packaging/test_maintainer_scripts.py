"""The maintainer scripts run for real, through install, upgrade, remove and purge, in a private
mount namespace: /etc, /var/lib, /run and /opt are throwaway copies there, so the users, the
directories and the enablement they create never reach this machine. deb-systemd-helper is the
real one, or hidden to take the scripts' systemctl fallback; systemd is not running (as in a
container or chroot), and once pretends to be.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import require

SCENARIO = r"""
set -u
T=$1 STAGE=$2 HELPERS=$3
if [ "$HELPERS" = hidden ]; then                # the same PATH without deb-systemd-*
    mkdir "$T/bin"
    for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        for f in "$d"/*; do [ -e "$T/bin/${f##*/}" ] || ln -s "$f" "$T/bin/${f##*/}"; done
    done
    rm -f "$T/bin/deb-systemd-helper" "$T/bin/deb-systemd-invoke"
    PATH="$T/bin"
fi
cp -a /etc "$T/etc" && mount --bind "$T/etc" /etc
mount -t tmpfs tmpfs /var/lib && mkdir -p /var/lib/systemd
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /opt
cp -a /usr/lib/systemd/system "$T/units" && cp "$STAGE"/lib/systemd/system/*.service "$T/units/"
mount --bind "$T/units" /usr/lib/systemd/system
cp -a "$STAGE/etc/tagway" /etc/tagway        # what dpkg unpacks before configure
mkdir -p /opt/tagway/bin
D="$STAGE/DEBIAN"
export DPKG_MAINTSCRIPT_PACKAGE=tagway      # as dpkg sets it; deb-systemd-helper insists
sh "$D/postinst" configure; echo "install_rc=$?"
echo "agent_user=$(getent passwd tagway | cut -d: -f6,7)"
echo "cloud_user=$(getent passwd tagway-cloud | cut -d: -f6,7)"
echo "state=$(stat -c '%U:%G %a' /var/lib/tagway)"
echo "cloud_state=$(stat -c '%U:%G %a' /var/lib/tagway-cloud)"
echo "cloud_env=$(stat -c '%U:%G %a' /etc/tagway/cloud.env)"
echo "config_dir=$(stat -c '%U:%G %a' /etc/tagway)"
w=/etc/systemd/system/multi-user.target.wants
echo "enabled=$(test -L $w/tagway.service && echo yes || echo no)"
echo "cloud_enabled=$(test -L $w/tagway-cloud.service && echo yes || echo no)"
echo "readings" > /var/lib/tagway/outbox.db
if [ "$HELPERS" = hidden ]; then systemctl disable tagway.service 2>/dev/null
else deb-systemd-helper disable tagway.service >/dev/null; fi
mkdir -p /run/systemd/system                   # pretend systemd runs: restarts must not fail
sh "$D/postinst" configure 0.0.9; echo "upgrade_rc=$?"
echo "enabled_after_upgrade=$(test -L $w/tagway.service && echo yes || echo no)"
echo "state_after_upgrade=$(stat -c '%U:%G %a' /var/lib/tagway)"
rmdir /run/systemd/system /run/systemd
sh "$D/prerm" remove; echo "prerm_rc=$?"
sh "$D/postrm" remove; echo "remove_rc=$?"
echo "outbox_after_remove=$(cat /var/lib/tagway/outbox.db)"
echo "user_after_remove=$(getent passwd tagway >/dev/null && echo yes || echo no)"
echo "opt_after_remove=$(test -e /opt/tagway && echo yes || echo no)"
sh "$D/postrm" purge; echo "purge_rc=$?"
echo "state_after_purge=$(test -e /var/lib/tagway && echo yes || echo no)"
echo "cloud_state_after_purge=$(test -e /var/lib/tagway-cloud && echo yes || echo no)"
echo "user_after_purge=$(getent passwd tagway >/dev/null && echo yes || echo no)"
echo "group_after_purge=$(getent group tagway >/dev/null && echo yes || echo no)"
echo "cloud_user_after_purge=$(getent passwd tagway-cloud >/dev/null && echo yes || echo no)"
echo "enabled_after_purge=$(ls $w | grep -c tagway)"
"""


@pytest.mark.parametrize("helpers", ["deb-systemd-helper", "hidden"])
def test_install_upgrade_remove_and_purge(staged: Path, tmp_path: Path, helpers: str) -> None:
    unshare = require("unshare")
    require("deb-systemd-helper")
    if os.geteuid() != 0:
        pytest.skip("creating system users needs root (in a private namespace)")
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "mount", "-t",
                            "tmpfs", "tmpfs", str(tmp_path)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", SCENARIO, "scenario",
         str(tmp_path), str(staged), helpers],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    got = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert got == {
        "install_rc": "0",
        "agent_user": "/var/lib/tagway:/usr/sbin/nologin",
        "cloud_user": "/var/lib/tagway-cloud:/usr/sbin/nologin",
        "state": "tagway:tagway 700",
        "cloud_state": "tagway-cloud:tagway-cloud 700",
        "cloud_env": "root:tagway-cloud 640",
        "config_dir": "root:tagway 2775",  # the agent writes the cloud's versions beside config
        "enabled": "yes",  # enabled on first install...
        "cloud_enabled": "no",
        "upgrade_rc": "0",
        "enabled_after_upgrade": "no",  # ...and an admin's disable survives an upgrade
        "state_after_upgrade": "tagway:tagway 700",
        "prerm_rc": "0",
        "remove_rc": "0",
        "outbox_after_remove": "readings",  # remove keeps the state
        "user_after_remove": "yes",
        "opt_after_remove": "no",
        "purge_rc": "0",
        "state_after_purge": "no",  # purge deletes it
        "cloud_state_after_purge": "no",
        "user_after_purge": "no",
        "group_after_purge": "no",
        "cloud_user_after_purge": "no",
        "enabled_after_purge": "0",
    }, result.stderr
    # The host never saw any of it.
    assert subprocess.run(["getent", "passwd", "tagway"], capture_output=True,
                          check=False).returncode != 0  # fmt: skip
