/* util.h: strict parsers, clocks and bit helpers used by every layer. */
#ifndef RMAPVM_UTIL_H
#define RMAPVM_UTIL_H

#include <stdint.h>
#include <time.h>
#include "rmapvm/types.h"

/*
 * parse_size() - "4096", "4k", "512M", "4G", "1T" (binary units, case
 * insensitive, optional "iB"/"B"). Rejects empty strings, signs, junk,
 * fractions and overflow. Returns 0 or -EINVAL / -ERANGE.
 */
int parse_size(const char *s, uint64_t *out);
/* parse_duration() - "10", "2.5s", "500ms", "1m"; seconds >= 0. 0 or -EINVAL/-ERANGE. */
int parse_duration(const char *s, double *seconds);
/* parse_u64() - a decimal or 0x-hex integer, whole string. 0 or -EINVAL/-ERANGE. */
int parse_u64(const char *s, uint64_t *out);

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * guest_memcpy() - copy guest memory that running vCPUs may be writing:
 * 8-byte relaxed atomic loads (plain moves on x86), so that the race with
 * the guest, which dirty logging resolves by sending the page again, is
 * well defined (and visible as such to ThreadSanitizer). @len and both
 * pointers must be 8-byte aligned.
 */
static inline void guest_memcpy(void *dst, const void *src, size_t len)
{
	uint64_t *d = dst;
	const uint64_t *s = src;
	size_t i;

	for (i = 0; i < len / 8; i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}

/*
 * kv_get() - the value of @key in a "k1=v1 k2=v2" description (values
 * without spaces), copied into @out. Returns 0, -ENOENT (no such key) or
 * -ENOSPC (value longer than @len - 1).
 */
int kv_get(const char *desc, const char *key, char *out, unsigned long len);
/* kv_u64() - @key's value as parse_u64() reads it. 0, -ENOENT or -EINVAL. */
int kv_u64(const char *desc, const char *key, uint64_t *v);

/* Format @bytes as "1.5 GiB" into @buf. */
const char *fmt_bytes(uint64_t bytes, char *buf, unsigned long len);

#endif /* RMAPVM_UTIL_H */
