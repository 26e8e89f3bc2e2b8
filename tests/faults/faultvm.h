/* faultvm.h: soft-MMU source VMs, destinations (thread or child process) and the checks the fault tests share. */
#ifndef RMAPVM_TEST_FAULTVM_H
#define RMAPVM_TEST_FAULTVM_H

/*
 * A fault test runs a real soft-MMU VM (vCPU threads stamping pages with a
 * self-verifying workload) as the migration source, injects a fault into
 * one attempt, then checks:
 *   - the attempt failed with a clear message, or completed and verified;
 *   - on failure the source VM runs on (vCPUs keep writing, no access error,
 *     no impossible stamp read);
 *   - a retry over a clean path completes: the destination's memory equals
 *     the paused source's byte for byte, its digest verified, and the
 *     resumed destination VM runs and passes the workload verification;
 *   - the source VM itself passes the workload verification.
 * The destination is a thread of the test (fdest_*) or a child process
 * (fchild_*: the test binary re-executed with "--fault-dest URI").
 */
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rmapvm/migrate.h"
#include "rmapvm/soft_vm.h"

struct fvm {
	struct soft_vm *svm;
	struct backend *be;
	struct mig_source *ms;
	char desc[512];		/* machine description (the CLI's key=value format) */
};

/* Create and start a soft VM: @mem bytes, @vcpus, @slots, @workload spec. Asserts. */
void fvm_create(struct fvm *v, uint64_t mem, int vcpus, int slots, const char *workload);
/* Stop, verify (assert), destroy. */
void fvm_destroy_verified(struct fvm *v);
/* Default parameters for an attempt to @uri. */
void fvm_params(struct fvm *v, struct mig_params *p, const char *uri);
/* Total guest writes so far. */
uint64_t fvm_writes(struct soft_vm *svm);
/* Assert that @svm's vCPUs are running: writes grow, no access error, no bad read. */
void fvm_assert_running(struct soft_vm *svm, const char *when);
/* Assert that the memory of @a and @b is identical. */
void fvm_assert_same_memory(struct backend *a, struct backend *b);

/* Build a soft VM from a CLI machine description (the destinations' create op). */
int fvm_dest_create(void *opaque, const char *kind, const void *desc, size_t len, uint32_t nr_vcpus,
		    struct backend **out, char *err, size_t errlen);

/* In-process destination. */
struct fdest {
	struct mig_listener *l;
	struct mig_dest_params p;
	struct soft_vm *svm;		/* built by the create op (kept on failure too) */
	struct backend *be;		/* on success */
	struct mig_dest_info info;
	int r;
	char err[512];
	pthread_t t;
	bool started;
};
/* Listen on @uri ("tcp:127.0.0.1:0" picks a port) and start receiving. */
void fdest_start(struct fdest *d, const char *uri, uint32_t io_timeout_ms);
/* The port a tcp destination listens on. */
uint16_t fdest_port(const struct fdest *d);
/* Wait for the verdict. */
void fdest_join(struct fdest *d);
/* On success: compare with @src (paused), resume briefly, verify, destroy. Asserts. */
void fdest_check_and_destroy(struct fdest *d, struct fvm *src);
/* On failure: free what the destination built. */
void fdest_cleanup(struct fdest *d);

/*
 * One attempt with @p against a destination started by the caller; on
 * success the source is compared with the destination. Returns the
 * source's result; the message is in @msg.
 */
int fvm_migrate(struct fvm *v, const struct mig_params *p, char *msg, size_t len);

/*
 * A clean retry to a new in-process destination over unix:, then all the
 * checks above (source paused afterwards, then verified and destroyed by
 * the caller with fvm_destroy_verified()).
 */
void fvm_retry_and_check(struct fvm *v);

/* Child-process destination: the test binary with "--fault-dest URI IO_TIMEOUT_MS". */
struct fchild {
	pid_t pid;
	int out_fd;		/* its stdout+stderr (a pipe) */
	char out[4096];		/* collected by fchild_wait() */
};
/*
 * Start it; @pre_exec (may be NULL) runs in the child before exec (e.g.
 * joining a cgroup). Waits until it listens on @uri (tcp or unix).
 */
void fchild_start(struct fchild *c, const char *uri, uint32_t io_timeout_ms,
		  void (*pre_exec)(void *), void *arg);
/* Wait for it; returns the wait status. */
int fchild_wait(struct fchild *c);
/* If argv asks for it, run as a child destination and exit. Call first in main(). */
void fchild_main(int argc, char **argv);

void fsleep_ms(long ms);

#endif /* RMAPVM_TEST_FAULTVM_H */
