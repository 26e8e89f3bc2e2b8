/* cli.h: shared declarations of the rmapvm command-line tool (the only layer that prints and exits). */
#ifndef RMAPVM_CLI_H
#define RMAPVM_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdnoreturn.h>

#include "rmapvm/backend.h"
#include "rmapvm/backing.h"
#include "rmapvm/workload.h"

/* Options of `rmapvm run`, common to both backends. */
struct run_options {
	const char *backend;		/* "soft" | "kvm" | "auto" */
	uint64_t mem_bytes;		/* --mem */
	int vcpus;			/* --vcpus */
	int slots;			/* --slots: guest RAM split into this many memslots */
	enum backing_type backing;	/* --backing */
	struct workload_spec workload;	/* --workload */
	double duration_s;		/* --duration, 0 = until the workload ends */
	bool json;			/* --json */
	bool lock_shared;		/* --lock shared: faults take mmu_lock for read */
	const char *dirty_mode;		/* --dirty-mode, NULL = no logging */
	const char *migrate_to;		/* --migrate-to URI, NULL = none */
	double migrate_after_s;		/* --migrate-after */
	const char *control;		/* --control PATH */
	const char *harvest;		/* --harvest rmap|walk|tdp (soft), NULL = default */
	uint64_t range_bytes;		/* --range-size, 0 = default */
	int threads;			/* --threads: harvester/sender threads, 0 = 1 */
	uint32_t downtime_ms;		/* --downtime-ms, 0 = 300 */
	double timeout_s;		/* --timeout, 0 = none */
	bool timeout_force;		/* --timeout-action force */
	uint64_t bandwidth;		/* --bandwidth bytes/s, 0 = none */
	bool compress;			/* --compress (zstd) */
};

/* Print "rmapvm: <message>" to stderr and exit(1). */
noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like die(), adding strerror(-err). */
noreturn void die_errno(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict parsers: exit with a clear message on nonsense. */
uint64_t cli_parse_size(const char *opt, const char *s);
double cli_parse_duration(const char *opt, const char *s);
long cli_parse_int(const char *opt, const char *s, long min, long max);

/* Backends of `rmapvm run`. */
int cli_run_soft(const struct run_options *opt);
int cli_run_kvm(const struct run_options *opt);	/* src/cli/run_kvm.c */
/* `rmapvm demo`. */
int cli_demo(int argc, char **argv);

#endif /* RMAPVM_CLI_H */
