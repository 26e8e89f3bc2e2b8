/* util.c: the CLI's error exits and strict option parsers (the only place that dies). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "rmapvm/util.h"

noreturn void die(const char *fmt, ...)
{
	va_list ap;

	fputs("rmapvm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

noreturn void die_errno(int err, const char *fmt, ...)
{
	va_list ap;

	fputs("rmapvm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(err < 0 ? -err : err));
	exit(1);
}

uint64_t cli_parse_size(const char *opt, const char *s)
{
	uint64_t v;

	if (parse_size(s, &v))
		die("%s: '%s' is not a size (examples: 4096, 64k, 512M, 4G)", opt, s);
	return v;
}

double cli_parse_duration(const char *opt, const char *s)
{
	double v;

	if (parse_duration(s, &v))
		die("%s: '%s' is not a duration (examples: 10, 2.5s, 500ms, 1m)", opt, s);
	return v;
}

long cli_parse_int(const char *opt, const char *s, long min, long max)
{
	uint64_t v;

	if (parse_u64(s, &v) || v < (uint64_t)min || v > (uint64_t)max)
		die("%s: '%s' is not an integer in [%ld, %ld]", opt, s, min, max);
	return (long)v;
}
