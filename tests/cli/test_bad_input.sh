#!/bin/sh
# test_bad_input.sh: the CLI rejects nonsense with one clear line and a non-zero exit.
rmapvm=$1
fail=0

expect_error() {
	expected=$1
	shift
	out=$("$rmapvm" "$@" 2>&1 >/dev/null)
	rc=$?
	if [ $rc -eq 0 ]; then
		echo "FAIL: rmapvm $* succeeded"
		fail=1
	elif ! printf '%s' "$out" | grep -q -- "$expected"; then
		echo "FAIL: rmapvm $*: expected '$expected' in: $out"
		fail=1
	else
		echo "ok: rmapvm $* -> $out"
	fi
}

expect_error "is not a size" run --backend soft --mem 4Q
expect_error "is not a size" run --backend soft --mem -4G
expect_error "multiple of 4 KiB" run --backend soft --mem 4097
expect_error "not an integer" run --backend soft --vcpus 0
expect_error "not an integer" run --backend soft --vcpus 2x
expect_error "not an integer" run --backend soft --slots 40000
expect_error "is not 4k, thp" run --backend soft --backing huge
expect_error "unknown workload pattern" run --backend soft --workload zigzag
expect_error "bad value" run --backend soft --workload random,write=101
expect_error "not a duration" run --backend soft --duration soon
expect_error "is not soft, kvm or auto" run --backend xen
expect_error "too small" run --backend soft --mem 4k --vcpus 2
expect_error "unexpected argument" run --backend soft extra
expect_error "unknown command" frobnicate
expect_error "no benchmark named" bench nosuch

# A valid short run succeeds and verifies.
if ! "$rmapvm" run --backend soft --mem 16M --vcpus 2 --duration 0.2 --json | grep -q '"verify":"ok"'; then
	echo "FAIL: a valid soft run did not verify"
	fail=1
fi
exit $fail
