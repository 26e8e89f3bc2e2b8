/* workload.c: parse and format workload specs ("random,write=50,rate=1000"). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rmapvm/util.h"
#include "rmapvm/workload.h"

static const char *const pattern_names[] = {
	[WL_SWEEP] = "sweep",
	[WL_RANDOM] = "random",
	[WL_HOTSET] = "hotset",
};

static int parse_pct(const char *v, uint32_t *out)
{
	uint64_t x;
	size_t n = strlen(v);
	char buf[32];

	if (n && v[n - 1] == '%') {
		if (n >= sizeof(buf))
			return -EINVAL;
		memcpy(buf, v, n - 1);
		buf[n - 1] = 0;
		v = buf;
	}
	if (parse_u64(v, &x) || x > 100)
		return -EINVAL;
	*out = (uint32_t)x;
	return 0;
}

int workload_parse(const char *s, struct workload_spec *spec, char *err, unsigned long errlen)
{
	char buf[256], *tok, *save = NULL;
	bool first = true;
	size_t i;

	memset(spec, 0, sizeof(*spec));
	spec->pattern = WL_SWEEP;
	spec->write_pct = 100;
	spec->hot_size_pct = 10;
	spec->hot_frac_pct = 90;
	spec->seed = 1;
	if (!s || !*s || strlen(s) >= sizeof(buf)) {
		snprintf(err, errlen, "empty or overlong workload spec");
		return -EINVAL;
	}
	strcpy(buf, s);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), first = false) {
		char *eq = strchr(tok, '=');
		int r = 0;

		if (first && !eq) {
			for (i = 0; i < sizeof(pattern_names) / sizeof(pattern_names[0]); i++)
				if (!strcmp(tok, pattern_names[i]))
					break;
			if (i == sizeof(pattern_names) / sizeof(pattern_names[0])) {
				snprintf(err, errlen, "unknown workload pattern '%s' (sweep, random, hotset)",
					 tok);
				return -EINVAL;
			}
			spec->pattern = (uint32_t)i;
			continue;
		}
		if (!eq) {
			snprintf(err, errlen, "expected key=value, got '%s'", tok);
			return -EINVAL;
		}
		*eq++ = 0;
		if (!strcmp(tok, "write"))
			r = parse_pct(eq, &spec->write_pct);
		else if (!strcmp(tok, "hot"))
			r = parse_pct(eq, &spec->hot_size_pct);
		else if (!strcmp(tok, "frac"))
			r = parse_pct(eq, &spec->hot_frac_pct);
		else if (!strcmp(tok, "rate"))
			r = parse_u64(eq, &spec->rate);
		else if (!strcmp(tok, "seed"))
			r = parse_u64(eq, &spec->seed);
		else {
			snprintf(err, errlen, "unknown workload key '%s' (write, hot, frac, rate, seed)",
				 tok);
			return -EINVAL;
		}
		if (r) {
			snprintf(err, errlen, "bad value '%s' for workload key '%s'", eq, tok);
			return -EINVAL;
		}
	}
	if (spec->pattern == WL_HOTSET && spec->hot_size_pct == 0) {
		snprintf(err, errlen, "hot set size must be above 0%%");
		return -EINVAL;
	}
	return 0;
}

void workload_format(const struct workload_spec *spec, char *buf, unsigned long len)
{
	const char *name = spec->pattern < 3 ? pattern_names[spec->pattern] : "?";

	snprintf(buf, len, "%s,write=%u,hot=%u,frac=%u,rate=%llu,seed=%llu", name, spec->write_pct,
		 spec->hot_size_pct, spec->hot_frac_pct, (unsigned long long)spec->rate,
		 (unsigned long long)spec->seed);
}
