/* parse.c: strict parsers for sizes, durations and integers (nonsense is rejected, not guessed). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rmapvm/util.h"

int parse_u64(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (!s || !*s || !isdigit((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno == ERANGE)
		return -ERANGE;
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

int parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned int shift = 0;
	char *end;

	if (!s || !isdigit((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (errno || end == s)
		return -EINVAL;
	if (*end) {
		switch (tolower((unsigned char)*end)) {
		case 'k': shift = 10; break;
		case 'm': shift = 20; break;
		case 'g': shift = 30; break;
		case 't': shift = 40; break;
		case 'b': shift = 0; end--; break;
		default: return -EINVAL;
		}
		end++;
		if (shift && (!strcasecmp(end, "ib") || !strcasecmp(end, "b")))
			end += strlen(end);
		else if (!shift && !strcasecmp(end, "b"))
			end++;
		if (*end)
			return -EINVAL;
	}
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

int parse_duration(const char *s, double *seconds)
{
	double v, mult = 1.0;
	char *end;

	if (!s || !(isdigit((unsigned char)s[0]) || s[0] == '.'))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno == ERANGE || !isfinite(v))
		return -ERANGE;
	if (end == s)
		return -EINVAL;
	if (!strcmp(end, "") || !strcmp(end, "s"))
		mult = 1.0;
	else if (!strcmp(end, "ms"))
		mult = 1e-3;
	else if (!strcmp(end, "us"))
		mult = 1e-6;
	else if (!strcmp(end, "m") || !strcmp(end, "min"))
		mult = 60.0;
	else if (!strcmp(end, "h"))
		mult = 3600.0;
	else
		return -EINVAL;
	if (v < 0 || v * mult > 1e9)
		return -ERANGE;
	*seconds = v * mult;
	return 0;
}

int kv_get(const char *desc, const char *key, char *out, unsigned long len)
{
	size_t kl = strlen(key);
	const char *p = desc;

	while (p && *p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, kl) && p[kl] == '=') {
			const char *v = p + kl + 1, *e = strchr(v, ' ');
			size_t n = e ? (size_t)(e - v) : strlen(v);

			if (n >= len)
				return -ENOSPC;
			memcpy(out, v, n);
			out[n] = 0;
			return 0;
		}
		p = strchr(p, ' ');
	}
	return -ENOENT;
}

int kv_u64(const char *desc, const char *key, uint64_t *v)
{
	char buf[64];
	int r = kv_get(desc, key, buf, sizeof(buf));

	if (r)
		return r == -ENOENT ? r : -EINVAL;
	return parse_u64(buf, v) ? -EINVAL : 0;
}

const char *fmt_bytes(uint64_t bytes, char *buf, unsigned long len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned int u = 0;

	while (v >= 1024 && u + 1 < ARRAY_SIZE(unit)) {
		v /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
	return buf;
}
