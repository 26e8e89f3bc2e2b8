/* bench.h: benchmark registration for `rmapvm bench NAME` and shared measurement helpers. */
#ifndef RMAPVM_BENCH_H
#define RMAPVM_BENCH_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/*
 * A benchmark: `rmapvm bench <name> [args]` calls main(argc, argv) with
 * argv[0] = name. It prints to stdout (one JSON object per line with
 * --json) and returns an exit status. Benchmarks live in the bench folder and
 * register themselves with BENCH_REGISTER (any bench source file).
 */
struct bench_cmd {
	const char *name;
	const char *help;	/* one line */
	int (*main)(int argc, char **argv);
	struct bench_cmd *next;
};

void bench_register(struct bench_cmd *cmd);
struct bench_cmd *bench_find(const char *name);
struct bench_cmd *bench_list(void);

#define BENCH_REGISTER(_name_, _fn_, _help_)                                                       \
	static struct bench_cmd __bench_##_fn_ = { .name = _name_, .help = _help_, .main = _fn_ }; \
	__attribute__((constructor)) static void __bench_register_##_fn_(void)                     \
	{                                                                                          \
		bench_register(&__bench_##_fn_);                                                   \
	}

/* The number after "\"@key\":" in a JSON line of ours, or -1 if absent. */
double bench_json_num(const char *line, const char *key);

/*
 * bench_kvm_available() - true if /dev/kvm opens; otherwise prints the
 * benchmark's "skipped" line (JSON with @json) and returns false.
 */
bool bench_kvm_available(const char *name, bool json);
/* The running rmapvm binary's path, for benchmarks that run it again. 0 or -errno. */
int bench_self_exe(char *buf, size_t len);

/* Median of @n samples (sorts @v in place). */
double bench_median(double *v, int n);
/* Spread: (max - min) / median of @n samples, after bench_median sorted them. */
double bench_spread(const double *v, int n);

#endif /* RMAPVM_BENCH_H */
