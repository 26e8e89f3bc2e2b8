#!/usr/bin/env bash
# run-fuzz.sh: run each libFuzzer target for a bounded time on a scratch copy of its corpus.
# usage: run-fuzz.sh BINDIR SECONDS TARGET...
set -euo pipefail
bindir=$1 secs=$2
shift 2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "$@"; do
	mkdir -p "$scratch/$t"
	cp -r "tests/fuzz/corpus/$t/." "$scratch/$t/" 2>/dev/null || true
	log="$scratch/$t.log"
	if ! "$bindir/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
		-artifact_prefix="$scratch/$t-" "$scratch/$t" >"$log" 2>&1; then
		echo "fuzz: $t FAILED; last lines:" >&2
		tail -30 "$log" >&2
		mkdir -p fuzz-artifacts && cp "$scratch/$t"-* fuzz-artifacts/ 2>/dev/null || true
		exit 1
	fi
	runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
	echo "fuzz: $t ok: ${runs:-?} in ${secs}s, ${cov:-cov: ?}"
done
