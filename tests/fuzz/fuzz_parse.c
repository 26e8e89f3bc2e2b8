/* fuzz_parse.c: fuzz target for the strict parsers (sizes, durations, integers, workloads, backings). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rmapvm/backing.h"
#include "rmapvm/util.h"
#include "rmapvm/workload.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fuzz_parse: %s failed\n", #c);                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char s[128], err[128], canon[256], again[32];
	struct workload_spec ws, ws2;
	enum backing_type bt;
	uint64_t v, w;
	double d;

	if (size >= sizeof(s))
		return 0;
	memcpy(s, data, size);
	s[size] = 0;

	if (!parse_size(s, &v)) {
		/* Accepted sizes start with a digit and a plain number round-trips. */
		CHECK(s[0] >= '0' && s[0] <= '9');
		snprintf(again, sizeof(again), "%llu", (unsigned long long)v);
		CHECK(!parse_size(again, &w) && w == v);
	}
	if (!parse_u64(s, &v)) {
		snprintf(again, sizeof(again), "%llu", (unsigned long long)v);
		CHECK(!parse_u64(again, &w) && w == v);
	}
	if (!parse_duration(s, &d))
		CHECK(d >= 0 && d <= 1e9);
	if (!workload_parse(s, &ws, err, sizeof(err))) {
		CHECK(ws.pattern <= WL_HOTSET && ws.write_pct <= 100 && ws.hot_size_pct <= 100 &&
		      ws.hot_frac_pct <= 100);
		/* The canonical form parses back to the same spec. */
		workload_format(&ws, canon, sizeof(canon));
		CHECK(!workload_parse(canon, &ws2, err, sizeof(err)));
		CHECK(!memcmp(&ws, &ws2, sizeof(ws)));
	} else {
		CHECK(err[0] != 0);
	}
	if (!backing_parse(s, &bt))
		CHECK(bt < BACKING_NR_TYPES);
	return 0;
}
