/* bench_all.c: `rmapvm bench all --out DIR`: every figure's benchmark, CSVs, gnuplot PNGs, machine description. */
#include <errno.h>
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
#include "rmapvm/util.h"

/*
 * A figure: one benchmark run (its --json lines become NAME.csv) and a plot
 * of @y against @x, one line per value of @series (optionally also split by
 * @series2), restricted to rows where @filter_key equals @filter_val.
 */
struct figure {
	const char *name;	 /* file stem: NAME.jsonl, NAME.csv, NAME.png */
	const char *title;
	const char *bench;	 /* rmapvm bench <bench> */
	const char *args;	 /* full-size arguments (about ten minutes for all) */
	const char *quick_args;	 /* --quick arguments (a smoke run) */
	const char *x, *y;	 /* column names */
	const char *series;	 /* column whose values make the lines */
	const char *series2;	 /* second column splitting the lines, or NULL */
	const char *filter_key;	 /* only rows with filter_key == filter_val, or NULL */
	const char *filter_val;
	bool logx, logy;
	const char *xlabel, *ylabel;
};

static const struct figure figures[] = {
	{ "fig1-dirty-scaling", "Fig. 1: dirty-log harvest time vs dirty pages (64 GiB guest)",
	  "dirty-scaling", "", "--quick", "dirty_pages", "harvest_ns", "algo", NULL, "guest_gib",
	  "64", true, true, "dirty pages", "harvest time (ns)" },
	{ "fig1-kernel", "Fig. 1b: soft MMU vs the kernel's GET/CLEAR_DIRTY_LOG (4 GiB slot)",
	  "dirty-kernel", "", "--quick", "dirty_pages", "harvest_ns", "algo", NULL, NULL, NULL,
	  true, true, "dirty pages", "harvest time (ns)" },
	{ "fig2-unmap", "Fig. 2: THP invalidation cost vs memslots", "unmap", "", "--quick",
	  "slots", "ns_per_2m", "variant", "mapping", NULL, NULL, true, true, "memslots",
	  "ns per 2 MiB invalidated" },
	{ "fig3-dirty-log", "Fig. 3: vCPU dirty-memory time per round by logging mode", "dirty-log",
	  "--sweep", "--sweep --quick", "mode", "dirty_ns_per_page", "backend", NULL, NULL, NULL,
	  false, true, "logging mode", "vCPU ns per dirtied page" },
	{ "fig4-migration", "Fig. 4: live migration total time and downtime vs working set",
	  "migrate", "--sweep", "--sweep --quick", "working_set_mib", "total_ms", "system", NULL,
	  NULL, NULL, false, true, "working set (MiB)", "total time (ms)" },
	{ "fig5-access", "Guest access cost by path", "access", "", "--pages 16384 --runs 3",
	  "case", "ns_per_access", "bench", NULL, NULL, NULL, false, true, "path", "ns per access" },
	{ "fig6-prefault", "Page tables of a large guest", "prefault", "--size 64G", "--size 4G",
	  "level", "prefault_s", "bench", NULL, NULL, NULL, false, false, "mapping level",
	  "prefault time (s)" },
};

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

/* ---- running one benchmark in a child ---- */

static int run_bench(const char *self, const struct figure *fig, bool quick, const char *out)
{
	char cmd[1024];
	int status;
	pid_t pid;

	snprintf(cmd, sizeof(cmd), "%s bench %s %s --json", self, fig->bench,
		 quick ? fig->quick_args : fig->args);
	printf("== %s: %s\n", fig->name, cmd);
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd < 0)
			_exit(127);
		dup2(fd, 1);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void plot(const struct figure *fig, const struct table *t, const char *dir)
{
	int xc = table_col((struct table *)t, fig->x, false);
	int yc = table_col((struct table *)t, fig->y, false);
	int sc = table_col((struct table *)t, fig->series, false);
	int s2 = fig->series2 ? table_col((struct table *)t, fig->series2, false) : -1;
	int fc = fig->filter_key ? table_col((struct table *)t, fig->filter_key, false) : -1;
	char path[512], seen[32][128];
	int nseen = 0, r, i;
	bool categorical_x = false;
	FILE *f;

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
		fprintf(f, "set style data histograms\nset style fill solid 0.8\nset xtics rotate by -30\n");
	fprintf(f, "plot ");
	for (r = 0; r < t->nrows; r++) {
		char key[128];
		const char *a = t->rows[r][sc], *b = s2 >= 0 ? t->rows[r][s2] : NULL;

		if (!a || (fc >= 0 && (!t->rows[r][fc] || strcmp(t->rows[r][fc], fig->filter_val))))
			continue;
		snprintf(key, sizeof(key), "%s%s%s", a, b ? " " : "", b ? b : "");
		for (i = 0; i < nseen && strcmp(seen[i], key); i++)
			;
		if (i < nseen || nseen == 32)
			continue;
		strcpy(seen[nseen++], key);
		if (nseen > 1)
			fprintf(f, ", \\\n     ");
		/* Rows of other series (or filtered out) become undefined points. */
		fprintf(f, "'%s/%s.csv' every ::1 using ", dir, fig->name);
		fprintf(f, "((strcol(%d) eq \"%s\"", sc + 1, a);
		if (b)
			fprintf(f, " && strcol(%d) eq \"%s\"", s2 + 1, b);
		if (fc >= 0)
			fprintf(f, " && strcol(%d) eq \"%s\"", fc + 1, fig->filter_val);
		if (categorical_x)
			fprintf(f, ") ? $%d : 1/0):xtic(%d) title \"%s\"", yc + 1, xc + 1, key);
		else
			fprintf(f, ") ? $%d : 1/0):%d with linespoints title \"%s\"", xc + 1,
				yc + 1, key);
	}
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

static int bench_all_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "out", required_argument, NULL, 'o' },
		{ "quick", no_argument, NULL, 'q' },
		{ "only", required_argument, NULL, 'O' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *out = "bench-results", *only = NULL;
	char self[512];
	bool quick = false;
	int c, failed = 0;
	size_t i;
	ssize_t n;

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
		case 'j':
			break;
		case 'h':
			printf("usage: rmapvm bench all [--out DIR] [--quick] [--only NAME]\n"
			       "Runs every figure's benchmark, writing DIR/<figure>.csv, .png (gnuplot)\n"
			       "and DIR/machine.txt. --quick is a smoke-test size.\n");
			return 0;
		default:
			return 2;
		}
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0) {
		perror("rmapvm: /proc/self/exe");
		return 1;
	}
	self[n] = 0;
	if (mkdir(out, 0755) && errno != EEXIST) {
		fprintf(stderr, "rmapvm: --out %s: %s\n", out, strerror(errno));
		return 1;
	}
	write_machine(out);
	for (i = 0; i < ARRAY_SIZE(figures); i++) {
		const struct figure *fig = &figures[i];
		char jsonl[512], csv[512], line[4096];
		struct table t = { 0 };
		FILE *f;
		int r;

		if (only && !strstr(fig->name, only))
			continue;
		if (!bench_find(fig->bench)) {
			printf("== %s: skipped: no benchmark '%s' in this build\n", fig->name, fig->bench);
			continue;
		}
		snprintf(jsonl, sizeof(jsonl), "%s/%s.jsonl", out, fig->name);
		snprintf(csv, sizeof(csv), "%s/%s.csv", out, fig->name);
		r = run_bench(self, fig, quick, jsonl);
		if (r) {
			printf("   FAILED (exit %d)\n", r);
			failed++;
			continue;
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
		table_free(&t);
	}
	return failed ? 1 : 0;
}

BENCH_REGISTER("all", bench_all_main, "every figure: CSVs, gnuplot PNGs, machine description")
