#!/usr/bin/env bash
# ensure-deps.sh: install the Debian packages the build, tests and demo need, if missing.
set -euo pipefail

pkgs=(cmake gcc make pkg-config clang libclang-rt-14-dev libcmocka-dev libxxhash-dev libzstd-dev)
# iproute2: ip netns / tc for the fault tests (they skip without it)
pkgs+=(iproute2)
# Target-specific extras come as arguments (make bench: gnuplot-nox qemu-system-x86).
pkgs+=("$@")

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ensure-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/rmapvm-apt.log 2>&1; then
	$sudo apt-get update >>/tmp/rmapvm-apt.log 2>&1 || true
	$sudo apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/rmapvm-apt.log 2>&1 || {
		echo "ensure-deps: apt-get failed, see /tmp/rmapvm-apt.log" >&2
		tail -20 /tmp/rmapvm-apt.log >&2
		exit 1
	}
fi
