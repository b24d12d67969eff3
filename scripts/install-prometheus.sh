#!/usr/bin/env bash
# Install the Prometheus server (Debian package `prometheus`, which also ships promtool) for the
# Prometheus integration test and the configuration checks in tests/test_deploy.py.
# Idempotent: does nothing when `prometheus` and `promtool` are already on PATH.
# The tests never use the system service: they start their own server on a free loopback port
# with their own --storage.tsdb.path in a temporary folder.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus already installed: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Without systemd as PID 1 (containers, CI runners) invoke-rc.d may refuse to start the service
# and fail the install; a policy-rc.d that denies service starts keeps the install going and
# keeps a system Prometheus from taking port 9090. Removed afterwards unless it was there before.
POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    ADDED_POLICY=1
fi
trap '[ "$ADDED_POLICY" = 1 ] && $SUDO rm -f "$POLICY"' EXIT
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends prometheus
prometheus --version 2>&1 | head -n1
promtool --version 2>&1 | head -n1
