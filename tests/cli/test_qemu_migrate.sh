#!/bin/sh
# test_qemu_migrate.sh: `rmapvm bench migrate-qemu` migrates a small guest under QEMU (TCG) and the destination verifies; skips without QEMU.
rmapvm=$1

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	echo "SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
	exit 0
fi
out=$("$rmapvm" bench migrate-qemu --accel tcg --sizes 16 --runs 1 --warmup 0.3s --timeout 60s --json 2>&1)
rc=$?
printf '%s\n' "$out"
if [ $rc -ne 0 ]; then
	echo "FAIL: bench migrate-qemu exited with $rc"
	exit 1
fi
line=$(printf '%s\n' "$out" | grep '^{')
for want in '"system":"qemu-tcg"' '"working_set_mib":16' '"completed":1' '"verified":true' \
	'"total_ms":' '"downtime_ms":' '"setup_ms":' '"transferred_bytes":' '"dirty_syncs":'; do
	case $line in
	*"$want"*) ;;
	*)
		echo "FAIL: no $want in: $line"
		exit 1
		;;
	esac
done
echo "ok: QEMU (TCG) migrated the guest and the destination verified it"
