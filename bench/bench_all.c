/* bench_all.c: `rmapvm bench all --out DIR`: every figure's benchmark, CSVs, gnuplot PNGs, machine description. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

/* The figure table leaves optional trailing fields out. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include "rmapvm/util.h"

/*
 * A figure: one benchmark run (its --json lines become NAME.csv) and a plot
 * of @y against @x, one line per value of @series (optionally also split by
 * @series2), restricted to rows where @filter_key equals @filter_val.
 */
/* ---- flat JSON objects (our own benchmark output) ---- */

#define MAX_COLS 48
struct table {
	char *cols[MAX_COLS];
	int ncols;
	char ***rows; /* rows[r][c], NULL = absent */
	int nrows;
};

static int table_col(struct table *t, const char *key, bool add)
{
	int i;

	for (i = 0; i < t->ncols; i++)
		if (!strcmp(t->cols[i], key))
			return i;
	if (!add || t->ncols == MAX_COLS)
		return -1;
	t->cols[t->ncols] = strdup(key);
	return t->ncols++;
}

/* Parse {"k":v,...} with string, number, bool values; returns 0 or -EINVAL. */
static int table_add_json(struct table *t, const char *line)
{
	const char *p = strchr(line, '{');
	char **row;

	if (!p)
		return -EINVAL;
	row = calloc(MAX_COLS, sizeof(char *));
	t->rows = realloc(t->rows, (t->nrows + 1) * sizeof(*t->rows));
	t->rows[t->nrows++] = row;
	p++;
	while (*p && *p != '}') {
		char key[64], val[256];
		size_t n = 0;
		int c;

		while (*p == ' ' || *p == ',')
			p++;
		if (*p != '"')
			return -EINVAL;
		p++;
		while (*p && *p != '"' && n < sizeof(key) - 1)
			key[n++] = *p++;
		key[n] = 0;
		if (*p++ != '"' || *p++ != ':')
			return -EINVAL;
		n = 0;
		if (*p == '"') {
			p++;
			while (*p && *p != '"' && n < sizeof(val) - 1)
				val[n++] = *p++ == ',' ? ';' : p[-1];
			p++;
		} else {
			while (*p && *p != ',' && *p != '}' && n < sizeof(val) - 1)
				val[n++] = *p++;
		}
		val[n] = 0;
		c = table_col(t, key, true);
		if (c >= 0)
			row[c] = strdup(val);
	}
	return 0;
}

static void table_free(struct table *t)
{
	int r, c;

	for (r = 0; r < t->nrows; r++) {
		for (c = 0; c < MAX_COLS; c++)
			free(t->rows[r][c]);
		free(t->rows[r]);
	}
	free(t->rows);
	for (c = 0; c < t->ncols; c++)
		free(t->cols[c]);
	memset(t, 0, sizeof(*t));
}

static int table_write_csv(const struct table *t, const char *path)
{
	FILE *f = fopen(path, "w");
	int r, c;

	if (!f)
		return -errno;
	for (c = 0; c < t->ncols; c++)
		fprintf(f, "%s%s", c ? "," : "", t->cols[c]);
	fputc('\n', f);
	for (r = 0; r < t->nrows; r++) {
		for (c = 0; c < t->ncols; c++)
			fprintf(f, "%s%s", c ? "," : "", t->rows[r][c] ? t->rows[r][c] : "");
		fputc('\n', f);
	}
	fclose(f);
	return 0;
}


/* One invocation: rmapvm bench <bench> <args|quick_args> --json. */
struct bench_run {
	const char *bench;
	const char *args;	 /* full-size arguments (about ten minutes for all figures) */
	const char *quick_args;	 /* --quick arguments (a smoke run) */
};

struct figure {
	const char *name;	 /* file stem: NAME.jsonl, NAME.csv, NAME.png */
	const char *title;
	struct bench_run runs[8]; /* their outputs are concatenated */
	const char *x, *y;	 /* column names */
	const char *series;	 /* column whose values make the lines */
	const char *series2;	 /* second column splitting the lines, or NULL */
	const char *filter_key;	 /* only rows with filter_key == filter_val, or NULL */
	const char *filter_val;
	bool logx, logy;
	const char *xlabel, *ylabel;
	/* Writes the "what it shows" sentences, with numbers taken from @t. */
	void (*summarize)(const struct table *t, FILE *md);
	const char *reading;	 /* how to read the plot (one sentence, no numbers) */
	const char *data_of;	 /* plot the data of this earlier figure instead of running */
};

/* ---- numbers for the summaries, always taken from the table ---- */

/* Value of column @y in the first row where every (key, value) pair matches; NaN if none. */
static double table_lookup(const struct table *t, const char *y, int npairs, ...)
{
	int yc = table_col((struct table *)t, y, false), r, i;
	const char *k[8], *v[8];
	va_list ap;

	va_start(ap, npairs);
	for (i = 0; i < npairs && i < 8; i++) {
		k[i] = va_arg(ap, const char *);
		v[i] = va_arg(ap, const char *);
	}
	va_end(ap);
	if (yc < 0)
		return NAN;
	for (r = 0; r < t->nrows; r++) {
		bool ok = t->rows[r][yc] != NULL;

		for (i = 0; i < npairs && ok; i++) {
			int c = table_col((struct table *)t, k[i], false);

			ok = c >= 0 && t->rows[r][c] && !strcmp(t->rows[r][c], v[i]);
		}
		if (ok)
			return atof(t->rows[r][yc]);
	}
	return NAN;
}

/* Largest numeric value of column @col (over rows matching @key == @val if @key). */
static double table_max(const struct table *t, const char *col, const char *key, const char *val)
{
	int c = table_col((struct table *)t, col, false);
	int kc = key ? table_col((struct table *)t, key, false) : -1;
	double m = NAN;
	int r;

	for (r = 0; c >= 0 && r < t->nrows; r++) {
		if (!t->rows[r][c] || (key && (kc < 0 || !t->rows[r][kc] || strcmp(t->rows[r][kc], val))))
			continue;
		if (isnan(m) || atof(t->rows[r][c]) > m)
			m = atof(t->rows[r][c]);
	}
	return m;
}

static void summarize_dirty_scaling(const struct table *t, FILE *md)
{
	char gib[32], maxd[32];
	double g = table_max(t, "guest_gib", NULL, NULL), d, rmap_max, rmap0, walk1k, rmap1k, tdp1k;

	if (isnan(g)) {
		fprintf(md, "No data.\n");
		return;
	}
	snprintf(gib, sizeof(gib), "%.0f", g);
	d = table_max(t, "dirty_pages", "guest_gib", gib);
	snprintf(maxd, sizeof(maxd), "%.0f", d);
	rmap_max = table_lookup(t, "harvest_ns", 3, "algo", "rmap", "guest_gib", gib, "dirty_pages", maxd);
	rmap0 = table_lookup(t, "harvest_ns", 3, "algo", "rmap", "guest_gib", gib, "dirty_pages", "0");
	walk1k = table_lookup(t, "harvest_ns", 3, "algo", "walk", "guest_gib", gib, "dirty_pages", "1024");
	rmap1k = table_lookup(t, "harvest_ns", 3, "algo", "rmap", "guest_gib", gib, "dirty_pages", "1024");
	tdp1k = table_lookup(t, "harvest_ns", 3, "algo", "tdp", "guest_gib", gib, "dirty_pages", "1024");
	fprintf(md,
		"On the %s GiB guest the talk's `rmap` harvest costs %.1f ns per dirty page at %s dirty "
		"pages and %.0f ns with none dirty, so its cost follows the dirty pages, not the guest "
		"size. With 1024 dirty pages the 2012 `walk` takes %.0f us against %.1f us for `rmap` "
		"(%.0fx) and %.1f us for the rmap-less `tdp` walk.\n",
		gib, rmap_max / d, maxd, rmap0, walk1k / 1e3, rmap1k / 1e3, walk1k / rmap1k,
		tdp1k / 1e3);
}

static void summarize_unmap(const struct table *t, FILE *md)
{
	double lr1 = table_lookup(t, "ns_per_2m", 3, "variant", "level_range", "mapping", "2m", "slots", "1");
	double pp1 = table_lookup(t, "ns_per_2m", 3, "variant", "per_page", "mapping", "2m", "slots", "1");
	double lr4 = table_lookup(t, "ns_per_2m", 3, "variant", "level_range", "mapping", "4k", "slots", "1");
	double pp4 = table_lookup(t, "ns_per_2m", 3, "variant", "per_page", "mapping", "4k", "slots", "1");
	double smax = table_max(t, "slots", NULL, NULL);
	char sm[32];

	snprintf(sm, sizeof(sm), "%.0f", smax);
	fprintf(md,
		"Invalidating a 2 MiB THP mapped huge costs %.2f us with the talk's `level_range` and "
		"%.2f us with the 2012 `per_page` loop (%.1fx), and with %s memslots `per_page` needs "
		"%.1f ms because it scans every slot for every 4 KiB page. With 4 KiB mappings all "
		"variants must zap 512 sptes, so they are close (%.2f vs %.2f us on 1 slot).\n",
		lr1 / 1e3, pp1 / 1e3, pp1 / lr1, sm,
		table_lookup(t, "ns_per_2m", 3, "variant", "per_page", "mapping", "2m", "slots", sm) / 1e6,
		lr4 / 1e3, pp4 / 1e3);
}

static void summarize_access(const struct table *t, FILE *md)
{
	fprintf(md,
		"A soft-TLB hit costs %.1f ns, a miss with a 4-level walk %.0f ns, a slow fault %.2f us "
		"(4 KiB) and %.2f us (2 MiB, with the pagemap/kpageflags lookups), and the lockless "
		"fast fault %.0f ns.\n",
		table_lookup(t, "ns_per_access", 1, "case", "tlb_hit"),
		table_lookup(t, "ns_per_access", 1, "case", "tlb_miss_walk"),
		table_lookup(t, "ns_per_access", 1, "case", "fault_slow_4k") / 1e3,
		table_lookup(t, "ns_per_access", 1, "case", "fault_slow_2m") / 1e3,
		table_lookup(t, "ns_per_access", 1, "case", "fault_fast"));
}

static void summarize_prefault(const struct table *t, FILE *md)
{
	double bytes = table_max(t, "guest_bytes", NULL, NULL);

	fprintf(md,
		"Building the page tables and rmaps of a %.0f GiB guest without touching its memory "
		"takes %.2f s at 4 KiB (%.0f ns per mapping) and %.3f s at 2 MiB; rmap heads and "
		"lpage_info cost %.2f bytes per 4 KiB guest page.\n",
		bytes / (1 << 30), table_lookup(t, "prefault_s", 1, "level", "1"),
		table_lookup(t, "ns_per_mapping", 1, "level", "1"),
		table_lookup(t, "prefault_s", 1, "level", "2"),
		table_lookup(t, "metadata_bytes_per_page", 1, "level", "1"));
}

static void summarize_dirty_kernel(const struct table *t, FILE *md)
{
	double d = table_max(t, "dirty_pages", "algo", "kvm_get");
	char dp[32];
	double rmap, tdp, kget, kclear, rclear;

	if (isnan(d)) {
		fprintf(md, "The kernel series were skipped (no /dev/kvm); see the CSV for the soft "
			    "series.\n");
		return;
	}
	snprintf(dp, sizeof(dp), "%.0f", d);
	rmap = table_lookup(t, "ns_per_page", 2, "algo", "rmap", "dirty_pages", dp);
	tdp = table_lookup(t, "ns_per_page", 2, "algo", "tdp", "dirty_pages", dp);
	kget = table_lookup(t, "ns_per_page", 2, "algo", "kvm_get", "dirty_pages", dp);
	kclear = table_lookup(t, "ns_per_page", 2, "algo", "kvm_clear", "dirty_pages", dp);
	rclear = table_lookup(t, "ns_per_page", 2, "algo", "rmap_clear", "dirty_pages", dp);
	fprintf(md,
		"On a slot of %.0f GiB with %s dirty pages the kernel's KVM_GET_DIRTY_LOG costs %.1f ns "
		"per dirty page against %.1f ns for the soft MMU's `rmap` harvest (%.1fx) and %.1f ns "
		"for `tdp`, and KVM_CLEAR_DIRTY_LOG %.1f ns against %.1f ns for the soft clear. The "
		"kernel here re-protects through the shadow MMU of a nested PVM host, so its absolute "
		"cost is higher than on bare metal; the soft MMU pays no VM exits and no ioctl.\n",
		table_max(t, "slot_bytes", NULL, NULL) / (1ull << 30), dp, kget, rmap, kget / rmap,
		tdp, kclear, rclear);
}

static void summarize_dirty_log(const struct table *t, FILE *md)
{
	fprintf(md,
		"Per dirtied page the soft MMU's vCPUs pay %.0f ns with write protection (bitmap), %.0f "
		"ns in manual mode, %.0f ns with rings and %.0f ns with D bits (no write faults on 4 KiB "
		"pages); a real guest under the kernel pays %.0f ns (classic), %.0f ns (manual) and %.0f "
		"ns (ring) per page, a write fault through nested PVM each time.\n",
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log", "mode", "bitmap"),
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log", "mode", "manual"),
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log", "mode", "ring"),
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log", "mode", "dbit"),
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log-kvm", "mode", "bitmap"),
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log-kvm", "mode", "manual"),
		table_lookup(t, "dirty_ns_per_page", 2, "bench", "dirty-log-kvm", "mode", "ring"));
}

static void summarize_migration(const struct table *t, FILE *md)
{
	static const char *const sizes[] = { "512", "256", "128", "64", "32" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(sizes); i++) {
		double one = table_lookup(t, "total_ms", 2, "system", "rmapvm-kvm 1-range",
					  "working_set_mib", sizes[i]);
		double r4 = table_lookup(t, "total_ms", 2, "system", "rmapvm-kvm 4M x2",
					 "working_set_mib", sizes[i]);
		double q = table_lookup(t, "total_ms", 1, "working_set_mib", sizes[i]);
		int qc = table_col((struct table *)t, "system", false), r;
		const char *qname = NULL;

		for (r = 0; qc >= 0 && r < t->nrows; r++)
			if (t->rows[r][qc] && !strncmp(t->rows[r][qc], "qemu", 4))
				qname = t->rows[r][qc];
		if (qname)
			q = table_lookup(t, "total_ms", 2, "system", qname, "working_set_mib", sizes[i]);
		if (isnan(one) || isnan(r4))
			continue;
		fprintf(md,
			"With a %s MiB working set rmapvm migrates the KVM guest in %.0f ms with 4 MiB "
			"ranges and 2 threads against %.0f ms as one whole-guest range (downtime %.0f vs "
			"%.0f ms)",
			sizes[i], r4, one,
			table_lookup(t, "downtime_ms", 2, "system", "rmapvm-kvm 4M x2", "working_set_mib",
				     sizes[i]),
			table_lookup(t, "downtime_ms", 2, "system", "rmapvm-kvm 1-range",
				     "working_set_mib", sizes[i]));
		if (qname && !isnan(q))
			fprintf(md, "; QEMU (%s) takes %.0f ms (downtime %.0f ms)", qname, q,
				table_lookup(t, "downtime_ms", 2, "system", qname, "working_set_mib",
					     sizes[i]));
		fprintf(md, ". Every destination verified the memory digest and the guest's stamps.\n");
		return;
	}
	fprintf(md, "No complete series.\n");
}

static const struct figure figures[] = {
	{ "fig1-dirty-scaling", "Fig. 1: dirty-log harvest time vs dirty pages (largest guest)",
	  { { "dirty-scaling", "", "--quick" } }, "dirty_pages", "harvest_ns", "algo", NULL,
	  "guest_gib", NULL, true, true, "dirty pages", "harvest time (ns)",
	  summarize_dirty_scaling,
	  "Lines: harvest algorithms on the largest guest measured; flat = cost of the guest size." },
	{ "fig1b-dirty-kernel", "Fig. 1b: soft MMU vs the kernel's GET/CLEAR_DIRTY_LOG, equal slot",
	  { { "dirty-kernel", "", "--quick" } }, "dirty_pages", "harvest_ns", "algo", NULL, NULL,
	  NULL, true, true, "dirty pages", "harvest time (ns)", summarize_dirty_kernel,
	  "Lines: soft algorithms and the kernel's ioctls on a slot of the same size." },
	{ "fig2-unmap", "Fig. 2: THP invalidation cost vs memslots",
	  { { "unmap", "", "--quick" } }, "slots", "ns_per_2m", "variant", "mapping", NULL, NULL,
	  true, true, "memslots", "ns per 2 MiB invalidated", summarize_unmap,
	  "Lines: unmap variant x mapping size (2m = THP mapped huge, 4k = split)." },
	{ "fig3-dirty-log", "Fig. 3: vCPU cost of dirty logging per dirtied page, by mode",
	  { { "dirty-log", "-m bitmap -b 512M -i 5", "-m bitmap -b 32M -i 3" },
	    { "dirty-log", "-m manual -b 512M -i 5", "-m manual -b 32M -i 3" },
	    { "dirty-log", "-m ring -b 512M -i 5", "-m ring -b 32M -i 3" },
	    { "dirty-log", "-m dbit -b 512M -i 5", "-m dbit -b 32M -i 3" },
	    { "dirty-log-kvm", "", "--quick" } },
	  "mode", "dirty_ns_per_page", "bench", NULL, NULL, NULL, false, true, "logging mode",
	  "vCPU ns per dirtied page", summarize_dirty_log,
	  "Bars: dirty-log = the soft MMU (dirty_log_perf_test's dirty-memory time / pages); "
	  "dirty-log-kvm = a real guest under the kernel (none = untracked)." },
	{ "fig4-migration", "Fig. 4: live migration total time vs working set, rmapvm (KVM) and QEMU",
	  { { "migrate-kvm", "", "--quick" }, { "migrate-qemu", "--runs 3", "--quick" } },
	  "working_set_mib", "total_ms", "system", NULL, NULL, NULL, false, true,
	  "working set (MiB)", "total time (ms)", summarize_migration,
	  "Lines: rmapvm configurations (range size x threads) and QEMU 7.2, the same 1-vCPU guest "
	  "writing random pages over the working set, 300 ms downtime limit, loopback TCP." },
	{ "fig4b-downtime", "Fig. 4b: downtime vs working set, rmapvm (KVM) and QEMU",
	  { { NULL } },
	  "working_set_mib", "downtime_ms", "system", NULL, NULL, NULL, false, false,
	  "working set (MiB)", "downtime (ms)", NULL,
	  "Lines: as Fig. 4. rmapvm's downtime ends at the destination's verified ACK; QEMU's "
	  "(query-migrate) at the end of its stream (see docs/QEMU-COMPARISON.md).",
	  "fig4-migration" },
	{ "fig4c-ranges", "Fig. 4c: range-wise migration, range size x threads (soft VM)",
	  { { "migrate", "", "--mem 256M" } }, "range_bytes", "total_ms", "threads", NULL, NULL,
	  NULL, true, false, "range size (bytes)", "total time (ms)", NULL,
	  "Lines: harvester/sender threads; a 1 GiB range is one harvest of the whole guest "
	  "per round (the talk's starting point), smaller ranges are the talk's proposal." },
	{ "fig5-access", "Guest access cost by path",
	  { { "access", "", "--pages 16384 --runs 3" } }, "case", "ns_per_access", "bench", NULL,
	  NULL, NULL, false, true, "path", "ns per access", summarize_access,
	  "Bars: ns per guest access for each path through the soft MMU." },
	{ "fig6-prefault", "Page tables of a large guest",
	  { { "prefault", "--size 64G", "--size 4G" } }, "level", "prefault_s", "bench", NULL, NULL,
	  NULL, false, false, "mapping level", "prefault time (s)", summarize_prefault,
	  "Bars: time to build the page tables at 4 KiB (1) and 2 MiB (2) mappings." },
};

/* ---- running one benchmark in a child ---- */

static int run_bench(const char *self, const struct bench_run *run, bool quick, const char *out,
		     char *cmd, size_t cmdlen)
{
	int status;
	pid_t pid;

	snprintf(cmd, cmdlen, "rmapvm bench %s %s --json", run->bench,
		 quick ? run->quick_args : run->args);
	printf("== %s\n", cmd);
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid) {
		char full[1200];
		int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);

		if (fd < 0)
			_exit(127);
		dup2(fd, 1);
		snprintf(full, sizeof(full), "%s bench %s %s --json", self, run->bench,
			 quick ? run->quick_args : run->args);
		execl("/bin/sh", "sh", "-c", full, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

struct xy {
	double x, y;
};

static int cmp_xy(const void *a, const void *b)
{
	double d = ((const struct xy *)a)->x - ((const struct xy *)b)->x;

	return d < 0 ? -1 : d > 0;
}

/* One gnuplot data block per series (blocks separated by two blank lines). */
static void write_series_dat(const struct figure *fig, const struct table *t, const char *dir,
			     char (*seen)[128], int nseen, int xc, int yc, int sc, int s2, int fc,
			     const char *filter_val)
{
	struct xy *pts = calloc(t->nrows ? t->nrows : 1, sizeof(*pts));
	char path[512];
	FILE *f;
	int i, r, n;

	snprintf(path, sizeof(path), "%s/%s.dat", dir, fig->name);
	f = fopen(path, "w");
	if (!f || !pts) {
		free(pts);
		if (f)
			fclose(f);
		return;
	}
	for (i = 0; i < nseen; i++) {
		for (r = n = 0; r < t->nrows; r++) {
			char key[128];
			const char *a = t->rows[r][sc], *b = s2 >= 0 ? t->rows[r][s2] : NULL;

			if (!a || !t->rows[r][xc] || !t->rows[r][yc])
				continue;
			if (fc >= 0 && (!t->rows[r][fc] || strcmp(t->rows[r][fc], filter_val)))
				continue;
			snprintf(key, sizeof(key), "%s%s%s", a, b ? " " : "", b ? b : "");
			if (strcmp(key, seen[i]))
				continue;
			pts[n].x = atof(t->rows[r][xc]);
			pts[n++].y = atof(t->rows[r][yc]);
		}
		qsort(pts, n, sizeof(*pts), cmp_xy);
		fprintf(f, "# %s\n", seen[i]);
		for (r = 0; r < n; r++)
			fprintf(f, "%.6g,%.6g\n", pts[r].x, pts[r].y);
		fprintf(f, "\n\n");
	}
	fclose(f);
	free(pts);
}

static void plot(const struct figure *fig, const struct table *t, const char *dir)
{
	int xc = table_col((struct table *)t, fig->x, false);
	int yc = table_col((struct table *)t, fig->y, false);
	int sc = table_col((struct table *)t, fig->series, false);
	int s2 = fig->series2 ? table_col((struct table *)t, fig->series2, false) : -1;
	int fc = fig->filter_key ? table_col((struct table *)t, fig->filter_key, false) : -1;
	char path[512], seen[32][128], fval[32];
	const char *filter_val = fig->filter_val;
	int nseen = 0, r, i;
	bool categorical_x = false;
	FILE *f;

	/* No filter value: the largest one (e.g. the largest guest measured). */
	if (fc >= 0 && !filter_val) {
		snprintf(fval, sizeof(fval), "%.0f", table_max(t, fig->filter_key, NULL, NULL));
		filter_val = fval;
	}

	if (xc < 0 || yc < 0 || sc < 0) {
		printf("   plot skipped: columns %s/%s/%s not in the output\n", fig->x, fig->y,
		       fig->series);
		return;
	}
	for (r = 0; r < t->nrows; r++) {
		const char *v = t->rows[r][xc];

		if (v && (v[0] < '0' || v[0] > '9'))
			categorical_x = true;
	}
	snprintf(path, sizeof(path), "%s/%s.gp", dir, fig->name);
	f = fopen(path, "w");
	if (!f)
		return;
	fprintf(f, "set terminal pngcairo size 1000,650 noenhanced\nset output '%s/%s.png'\n", dir,
		fig->name);
	fprintf(f, "set datafile separator ','\nset key outside right\nset grid\n");
	fprintf(f, "set title \"%s\"\nset xlabel \"%s\"\nset ylabel \"%s\"\n", fig->title,
		fig->xlabel, fig->ylabel);
	if (fig->logx && !categorical_x)
		fprintf(f, "set logscale x\n");
	if (fig->logy)
		fprintf(f, "set logscale y\n");
	if (categorical_x)
		fprintf(f, "set style fill solid 0.8\nset boxwidth 0.7\nset xtics rotate by -30\n"
			   "set offsets 0.5, 0.5, 0, 0\n");
	fprintf(f, "plot ");
	for (r = 0; r < t->nrows; r++) {
		char key[128];
		const char *a = t->rows[r][sc], *b = s2 >= 0 ? t->rows[r][s2] : NULL;

		if (!a || (fc >= 0 && (!t->rows[r][fc] || strcmp(t->rows[r][fc], filter_val))))
			continue;
		snprintf(key, sizeof(key), "%s%s%s", a, b ? " " : "", b ? b : "");
		for (i = 0; i < nseen && strcmp(seen[i], key); i++)
			;
		if (i < nseen || nseen == 32)
			continue;
		strcpy(seen[nseen++], key);
		if (nseen > 1)
			fprintf(f, ", \\\n     ");
		if (!categorical_x) {
			/* Lines: the series' points, sorted by x, in block nseen-1 of the .dat file. */
			fprintf(f, "'%s/%s.dat' index %d using 1:2 with linespoints title \"%s\"", dir,
				fig->name, nseen - 1, key);
			continue;
		}
		/* Boxes: one per row, at its row number, labelled by x; rows of other
		 * series (or filtered out) become undefined points. */
		fprintf(f, "'%s/%s.csv' every ::1 using 0:", dir, fig->name);
		fprintf(f, "((strcol(%d) eq \"%s\"", sc + 1, a);
		if (b)
			fprintf(f, " && strcol(%d) eq \"%s\"", s2 + 1, b);
		if (fc >= 0)
			fprintf(f, " && strcol(%d) eq \"%s\"", fc + 1, filter_val);
		fprintf(f, ") ? $%d : 1/0):xtic(%d) with boxes title \"%s\"", yc + 1, xc + 1, key);
	}
	if (!categorical_x)
		write_series_dat(fig, t, dir, seen, nseen, xc, yc, sc, s2, fc, filter_val);
	fprintf(f, "\n");
	fclose(f);
	if (!nseen)
		return;
	{
		char cmd[600];

		snprintf(cmd, sizeof(cmd), "gnuplot '%s' 2>'%s/%s.gnuplot.log'", path, dir, fig->name);
		if (system(cmd))
			printf("   gnuplot failed: see %s/%s.gnuplot.log\n", dir, fig->name);
		else
			printf("   plot: %s/%s.png\n", dir, fig->name);
	}
}

static void write_machine(const char *dir)
{
	char path[512], line[512];
	struct utsname u;
	FILE *f, *in;

	snprintf(path, sizeof(path), "%s/machine.txt", dir);
	f = fopen(path, "w");
	if (!f)
		return;
	uname(&u);
	fprintf(f, "kernel: %s %s %s\n", u.sysname, u.release, u.machine);
	in = fopen("/proc/cpuinfo", "r");
	while (in && fgets(line, sizeof(line), in))
		if (!strncmp(line, "model name", 10)) {
			fprintf(f, "cpu: %s", strchr(line, ':') + 2);
			break;
		}
	if (in)
		fclose(in);
	fprintf(f, "cpus online: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
	fprintf(f, "memory: %lld MiB\n",
		(long long)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE) / (1024 * 1024));
	in = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (in && fgets(line, sizeof(line), in))
		fprintf(f, "thp: %s", line);
	if (in)
		fclose(in);
	fprintf(f, "/dev/kvm: %s\n", access("/dev/kvm", R_OK | W_OK) ? "absent" : "present");
	if (!access("/sys/module/kvm_pvm", F_OK))
		fprintf(f, "kvm module: kvm_pvm (nested PVM, shadow paging)\n");
	else if (!access("/sys/module/kvm_intel", F_OK))
		fprintf(f, "kvm module: kvm_intel\n");
	else if (!access("/sys/module/kvm_amd", F_OK))
		fprintf(f, "kvm module: kvm_amd\n");
	in = fopen("/sys/module/kvm/parameters/tdp_mmu", "r");
	if (in && fgets(line, sizeof(line), in))
		fprintf(f, "kvm tdp_mmu: %s", line);
	if (in)
		fclose(in);
	fprintf(f, "hypervisor flag in cpuinfo: %s\n",
		system("grep -qw hypervisor /proc/cpuinfo") == 0 ? "yes (this host is itself a VM)"
								   : "no");
	fclose(f);
	printf("== machine description: %s\n", path);
}

/* RESULTS.md: machine, then per figure the commands, the plot and what it shows. */
static void results_header(FILE *md, const char *dir, bool quick)
{
	char path[600], line[512];
	FILE *in;

	fprintf(md, "# rmapvm results\n\n");
	fprintf(md, "Generated by `rmapvm bench all%s` (`make bench`); every number below is "
		    "computed from the CSV files beside this page. Speeds are compared only "
		    "within one run on one machine.\n\n## Machine\n\n```\n",
		quick ? " --quick" : "");
	snprintf(path, sizeof(path), "%s/machine.txt", dir);
	in = fopen(path, "r");
	while (in && fgets(line, sizeof(line), in))
		fputs(line, md);
	if (in)
		fclose(in);
	fprintf(md, "```\n");
}

/* Where RESULTS.md finds the figures' files, relative to itself. */
static char results_prefix[512];

static void results_figure(FILE *md, const struct figure *fig, const struct table *t,
			   char (*cmds)[512], int ncmds)
{
	int xc = table_col((struct table *)t, fig->x, false);
	int yc = table_col((struct table *)t, fig->y, false);
	int sc = table_col((struct table *)t, fig->series, false);
	int s2 = fig->series2 ? table_col((struct table *)t, fig->series2, false) : -1;
	int k, r, shown = 0;

	fprintf(md, "\n## %s\n\n", fig->title);
	for (k = 0; k < ncmds; k++)
		fprintf(md, "%s`%s`", k ? ", " : "Made by ", cmds[k]);
	fprintf(md, " -> [%s.csv](%s%s.csv)\n\n![%s](%s%s.png)\n\n%s\n\n", fig->name,
		results_prefix, fig->name, fig->name, results_prefix, fig->name, fig->reading);
	if (!t->nrows) {
		fprintf(md, "**No data** (the benchmark was skipped or failed; see its output).\n");
		return;
	}
	if (fig->summarize)
		fig->summarize(t, md);
	if (xc < 0 || yc < 0)
		return;
	fprintf(md, "\n| %s | %s | %s |\n|---|---|---|\n", fig->series, fig->x, fig->y);
	for (r = 0; r < t->nrows && shown < 40; r++) {
		if (!t->rows[r][yc] || !t->rows[r][xc])
			continue;
		fprintf(md, "| %s%s%s | %s | %s |\n", sc >= 0 && t->rows[r][sc] ? t->rows[r][sc] : "",
			s2 >= 0 && t->rows[r][s2] ? " " : "",
			s2 >= 0 && t->rows[r][s2] ? t->rows[r][s2] : "", t->rows[r][xc], t->rows[r][yc]);
		shown++;
	}
	if (shown == 40)
		fprintf(md, "| ... | | (see the CSV) |\n");
}

static int bench_all_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "quick", no_argument, NULL, 'q' },
		{ "only", required_argument, NULL, 'O' },
		{ "results-md", required_argument, NULL, 'M' },
		{ "replot", no_argument, NULL, 'R' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out = "bench-results", *only = NULL, *results_md = NULL;
	char self[512], mdpath[600];
	FILE *md;
	bool quick = false, replot = false;
	int c, failed = 0;
	size_t i;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'o':
			out = optarg;
			break;
		case 'q':
			quick = true;
			break;
		case 'O':
			only = optarg;
			break;
		case 'M':
			results_md = optarg;
			break;
		case 'R':
			replot = true;
			break;
		case 'j':
			break;
		case 'h':
			printf("usage: rmapvm bench all [--out DIR] [--quick] [--only NAME] [--results-md PATH] [--replot]\n"
			       "Runs every figure's benchmark, writing DIR/<figure>.csv, .png (gnuplot)\n"
			       "and DIR/machine.txt. --quick is a smoke-test size. --replot rebuilds the CSVs,\n"
			       "plots and RESULTS.md from DIR/<figure>.jsonl of an earlier run.\n");
			return 0;
		default:
			return 2;
		}
	}
	if (bench_self_exe(self, sizeof(self))) {
		perror("rmapvm: /proc/self/exe");
		return 1;
	}
	{
		/* mkdir -p */
		char tmp[512], *q;

		snprintf(tmp, sizeof(tmp), "%s", out);
		for (q = tmp + 1; *q; q++)
			if (*q == '/') {
				*q = 0;
				mkdir(tmp, 0755);
				*q = '/';
			}
	}
	if (mkdir(out, 0755) && errno != EEXIST) {
		fprintf(stderr, "rmapvm: --out %s: %s\n", out, strerror(errno));
		return 1;
	}
	if (!replot)
		write_machine(out);
	snprintf(mdpath, sizeof(mdpath), "%s/RESULTS.md", out);
	if (results_md) {
		/* Links from the page's folder to --out: works when --out is inside it. */
		const char *slash = strrchr(results_md, '/');
		size_t dl = slash ? (size_t)(slash - results_md) : 0;

		snprintf(mdpath, sizeof(mdpath), "%s", results_md);
		if (dl && !strncmp(out, results_md, dl) && out[dl] == '/')
			snprintf(results_prefix, sizeof(results_prefix), "%s/", out + dl + 1);
		else if (!dl)
			snprintf(results_prefix, sizeof(results_prefix), "%s/", out);
		else
			snprintf(results_prefix, sizeof(results_prefix), "%s/", out);
	}
	md = fopen(mdpath, "w");
	if (!md) {
		fprintf(stderr, "rmapvm: %s: %s\n", mdpath, strerror(errno));
		return 1;
	}
	results_header(md, out, quick);
	for (i = 0; i < ARRAY_SIZE(figures); i++) {
		const struct figure *fig = &figures[i];
		char jsonl[512], csv[512], line[4096], cmds[8][512];
		struct table t = { 0 };
		int nruns = 0, k, r = 0;
		FILE *f;

		if (only && !strstr(fig->name, only))
			continue;
		snprintf(jsonl, sizeof(jsonl), "%s/%s.jsonl", out, fig->name);
		snprintf(csv, sizeof(csv), "%s/%s.csv", out, fig->name);
		if (!replot)
			unlink(jsonl);
		if (fig->data_of && !replot) {
			char from[512], cmd[1200];

			snprintf(from, sizeof(from), "%s/%s.jsonl", out, fig->data_of);
			snprintf(cmd, sizeof(cmd), "cp '%s' '%s' 2>/dev/null", from, jsonl);
			if (system(cmd))
				printf("== %s: no data from %s\n", fig->name, fig->data_of);
			snprintf(cmds[nruns++], sizeof(cmds[0]), "(the runs of %s)", fig->data_of);
		}
		for (k = 0; k < 8 && fig->runs[k].bench; k++) {
			if (!bench_find(fig->runs[k].bench)) {
				printf("== %s: skipped: no benchmark '%s' in this build\n", fig->name,
				       fig->runs[k].bench);
				snprintf(cmds[nruns++], sizeof(cmds[0]), "(no benchmark '%s' in this build)",
					 fig->runs[k].bench);
				continue;
			}
			if (replot) {
				/* Rebuild from the raw output of an earlier run. */
				snprintf(cmds[nruns++], sizeof(cmds[0]), "rmapvm bench %s %s --json",
					 fig->runs[k].bench,
					 quick ? fig->runs[k].quick_args : fig->runs[k].args);
				continue;
			}
			r = run_bench(self, &fig->runs[k], quick, jsonl, cmds[nruns], sizeof(cmds[0]));
			nruns++;
			if (r) {
				printf("   FAILED (exit %d)\n", r);
				failed++;
			}
		}
		f = fopen(jsonl, "r");
		while (f && fgets(line, sizeof(line), f))
			if (line[0] == '{' && table_add_json(&t, line))
				printf("   ignoring a malformed line: %.60s\n", line);
		if (f)
			fclose(f);
		table_write_csv(&t, csv);
		printf("   %d rows -> %s\n", t.nrows, csv);
		plot(fig, &t, out);
		results_figure(md, fig, &t, cmds, nruns);
		table_free(&t);
	}
	fclose(md);
	printf("== summary: %s\n", mdpath);
	return failed ? 1 : 0;
}

BENCH_REGISTER("all", bench_all_main, "every figure: CSVs, gnuplot PNGs, machine description")
