/* bench.c: the benchmark registry and statistics helpers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static struct bench_cmd *bench_head;

void bench_register(struct bench_cmd *cmd)
{
	struct bench_cmd **p = &bench_head;

	/* Keep the list sorted by name for `rmapvm bench --help`. */
	while (*p && strcmp((*p)->name, cmd->name) < 0)
		p = &(*p)->next;
	cmd->next = *p;
	*p = cmd;
}

struct bench_cmd *bench_find(const char *name)
{
	struct bench_cmd *c;

	for (c = bench_head; c; c = c->next)
		if (!strcmp(c->name, name))
			return c;
	return NULL;
}

struct bench_cmd *bench_list(void)
{
	return bench_head;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double bench_median(double *v, int n)
{
	if (n <= 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double bench_spread(const double *v, int n)
{
	double med;

	if (n <= 0)
		return 0;
	med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	return med > 0 ? (v[n - 1] - v[0]) / med : 0;
}

double bench_json_num(const char *line, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(line, pat);
	return p ? atof(p + strlen(pat)) : -1;
}

bool bench_kvm_available(const char *name, bool json)
{
	if (!access("/dev/kvm", R_OK | W_OK))
		return true;
	if (json)
		printf("{\"bench\":\"%s\",\"skipped\":\"/dev/kvm is not available\"}\n", name);
	else
		printf("%s: skipped: /dev/kvm is not available\n", name);
	return false;
}

int bench_self_exe(char *buf, size_t len)
{
	ssize_t n = readlink("/proc/self/exe", buf, len - 1);

	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}
