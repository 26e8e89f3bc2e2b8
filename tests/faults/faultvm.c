/* faultvm.c: soft-MMU source VMs, in-process and child-process destinations, and the fault tests' checks. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "faultvm.h"
#include "harness.h"
#include "rmapvm/backend.h"
#include "rmapvm/util.h"
#include "rmapvm/workload.h"

void fsleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

/* ---- source VMs ---- */

void fvm_create(struct fvm *v, uint64_t mem, int vcpus, int slots, const char *workload)
{
	struct soft_vm_config c = { .mem_bytes = mem, .vcpus = vcpus, .slots = slots,
				    .backing = BACKING_ANON_4K, .lock_mode = MMU_LOCK_EXCLUSIVE };
	char werr[160], wl[200];

	memset(v, 0, sizeof(*v));
	if (workload_parse(workload, &c.workload, werr, sizeof(werr)))
		fail_msg("workload '%s': %s", workload, werr);
	assert_int_equal(soft_vm_create(&c, &v->svm), 0);
	assert_int_equal(soft_backend_create(v->svm, &v->be), 0);
	assert_int_equal(mig_source_create(v->be, &v->ms), 0);
	workload_format(&c.workload, wl, sizeof(wl));
	snprintf(v->desc, sizeof(v->desc),
		 "mem=%llu vcpus=%d slots=%d backing=%s lock=%d max=%llu workload=%s",
		 (unsigned long long)mem, vcpus, slots, backing_name(c.backing), (int)c.lock_mode, 0ull,
		 wl);
	assert_int_equal(soft_vm_start(v->svm), 0);
}

static void check_stats(struct soft_vm *svm, const char *when)
{
	int i;

	for (i = 0; i < soft_vm_config(svm)->vcpus; i++) {
		struct soft_vcpu_stats st;

		soft_vm_vcpu_stats(svm, i, &st);
		if (st.error || st.bad_reads)
			fail_msg("%s: vCPU %d: access error %d, %llu impossible stamps read", when, i,
				 st.error, (unsigned long long)st.bad_reads);
	}
}

void fvm_destroy_verified(struct fvm *v)
{
	char err[256];

	soft_vm_stop(v->svm);
	check_stats(v->svm, "source at the end");
	if (soft_vm_verify(v->svm, err, sizeof(err)))
		fail_msg("source VM verification: %s", err);
	mig_source_destroy(v->ms);
	v->be->ops->destroy(v->be);
	soft_vm_destroy(v->svm);
	memset(v, 0, sizeof(*v));
}

void fvm_params(struct fvm *v, struct mig_params *p, const char *uri)
{
	memset(p, 0, sizeof(*p));
	p->uri = uri;
	p->kind = "soft";
	p->desc = v->desc;
	p->desc_len = strlen(v->desc);
	p->dirty.mode = DIRTY_MODE_BITMAP;
	p->threads = 2;
	p->range_bytes = 1 << 20;
	p->timeout_s = 20;
	p->ack_timeout_ms = 15000;
}

uint64_t fvm_writes(struct soft_vm *svm)
{
	uint64_t n = 0;
	int i;

	for (i = 0; i < soft_vm_config(svm)->vcpus; i++) {
		struct soft_vcpu_stats st;

		soft_vm_vcpu_stats(svm, i, &st);
		n += st.writes;
	}
	return n;
}

void fvm_assert_running(struct soft_vm *svm, const char *when)
{
	uint64_t w0 = fvm_writes(svm);
	int i;

	for (i = 0; i < 200 && fvm_writes(svm) == w0; i++)
		fsleep_ms(5);
	if (fvm_writes(svm) == w0)
		fail_msg("%s: the VM does not run (no write in 1 s)", when);
	check_stats(svm, when);
}

void fvm_assert_same_memory(struct backend *a, struct backend *b)
{
	struct backend_region ra[64], rb[64];
	int na = a->ops->get_regions(a, ra, 64), nb = b->ops->get_regions(b, rb, 64), i;

	assert_int_equal(na, nb);
	for (i = 0; i < na; i++) {
		uint64_t pg;

		assert_int_equal(ra[i].gpa, rb[i].gpa);
		assert_int_equal(ra[i].size, rb[i].size);
		if (!memcmp(ra[i].hva, rb[i].hva, ra[i].size))
			continue;
		for (pg = 0; pg < ra[i].size / PAGE_SIZE; pg++)
			if (memcmp(ra[i].hva + pg * PAGE_SIZE, rb[i].hva + pg * PAGE_SIZE, PAGE_SIZE))
				break;
		fail_msg("after migration: slot %u page %llu differs between source and destination",
			 ra[i].slot, (unsigned long long)pg);
	}
}

/* ---- destinations ---- */

int fvm_dest_create(void *opaque, const char *kind, const void *desc, size_t len, uint32_t nr_vcpus,
		    struct backend **out, char *err, size_t errlen)
{
	struct soft_vm **svmp = opaque;
	struct soft_vm_config c = { 0 };
	char d[MIG_MAX_DESC + 1], b[32], wl[256], werr[160];
	uint64_t vcpus, slots, lock;
	int r;

	if (strcmp(kind, "soft") || !desc || len > MIG_MAX_DESC) {
		snprintf(err, errlen, "expected a soft VM with a description");
		return -EINVAL;
	}
	memcpy(d, desc, len);
	d[len] = 0;
	if (kv_u64(d, "mem", &c.mem_bytes) || kv_u64(d, "vcpus", &vcpus) ||
	    kv_u64(d, "slots", &slots) || kv_u64(d, "lock", &lock) ||
	    kv_u64(d, "max", &c.max_accesses) || kv_get(d, "backing", b, sizeof(b)) ||
	    backing_parse(b, &c.backing) || kv_get(d, "workload", wl, sizeof(wl)) ||
	    workload_parse(wl, &c.workload, werr, sizeof(werr)) || vcpus != nr_vcpus || vcpus > 64 ||
	    slots > 512 || lock > 1) {
		snprintf(err, errlen, "bad machine description '%s'", d);
		return -EINVAL;
	}
	c.vcpus = (int)vcpus;
	c.slots = (int)slots;
	c.lock_mode = (enum mmu_lock_mode)lock;
	r = soft_vm_create(&c, svmp);
	if (r) {
		snprintf(err, errlen, "soft_vm_create: %s", strerror(-r));
		return r;
	}
	r = soft_backend_create(*svmp, out);
	if (r) {
		soft_vm_destroy(*svmp);
		*svmp = NULL;
		snprintf(err, errlen, "soft backend: %s", strerror(-r));
	}
	return r;
}

static void *fdest_fn(void *arg)
{
	struct fdest *d = arg;
	struct mig_dest_ops ops = { .create = fvm_dest_create, .opaque = &d->svm };

	d->r = mig_incoming(d->l, &d->p, &ops, &d->be, &d->info, d->err, sizeof(d->err));
	return NULL;
}

void fdest_start(struct fdest *d, const char *uri, uint32_t io_timeout_ms)
{
	char err[256];

	memset(d, 0, sizeof(*d));
	if (mig_listen(uri, &d->l, err, sizeof(err)))
		fail_msg("listen %s: %s", uri, err);
	d->p.accept_timeout_ms = 30000;
	d->p.io_timeout_ms = io_timeout_ms;
	assert_int_equal(pthread_create(&d->t, NULL, fdest_fn, d), 0);
	d->started = true;
}

uint16_t fdest_port(const struct fdest *d)
{
	const char *u = mig_listener_uri(d->l), *c = strrchr(u, ':');

	return c ? (uint16_t)atoi(c + 1) : 0;
}

void fdest_join(struct fdest *d)
{
	if (!d->started)
		return;
	pthread_join(d->t, NULL);
	d->started = false;
	mig_listener_close(d->l);
	d->l = NULL;
}

void fdest_cleanup(struct fdest *d)
{
	fdest_join(d);
	if (d->be)
		d->be->ops->destroy(d->be);
	if (d->svm)
		soft_vm_destroy(d->svm);
	d->be = NULL;
	d->svm = NULL;
}

void fdest_check_and_destroy(struct fdest *d, struct fvm *src)
{
	char err[256];

	fdest_join(d);
	if (d->r)
		fail_msg("destination rejected the migration: %s", d->err);
	assert_non_null(d->be);
	fvm_assert_same_memory(src->be, d->be);
	assert_int_equal(soft_vm_start(d->svm), 0);
	fvm_assert_running(d->svm, "destination after resume");
	soft_vm_stop(d->svm);
	check_stats(d->svm, "destination");
	if (soft_vm_verify(d->svm, err, sizeof(err)))
		fail_msg("destination VM verification: %s", err);
	fdest_cleanup(d);
}

int fvm_migrate(struct fvm *v, const struct mig_params *p, char *msg, size_t len)
{
	struct mig_info info;
	int r = mig_source_migrate(v->ms, p, NULL, NULL);

	mig_source_info(v->ms, &info);
	snprintf(msg, len, "%s", r ? info.error_msg : "completed");
	return r;
}

void fvm_retry_and_check(struct fvm *v)
{
	static int n;
	struct mig_params p;
	struct fdest d;
	char uri[128], msg[300];
	int r;

	snprintf(uri, sizeof(uri), "unix:/tmp/rmapvm-faults-%d-%d.sock", getpid(), n++);
	fdest_start(&d, uri, 15000);
	fvm_params(v, &p, uri);
	r = fvm_migrate(v, &p, msg, sizeof(msg));
	fdest_join(&d);
	if (r)
		fail_msg("retry failed: source: %s; destination: %s", msg, d.r ? d.err : "ok");
	fdest_check_and_destroy(&d, v);
}

/* ---- child-process destinations ---- */

void fchild_start(struct fchild *c, const char *uri, uint32_t io_timeout_ms,
		  void (*pre_exec)(void *), void *arg)
{
	char tmo[32], line[256];
	size_t got = 0;
	int pfd[2];
	uint64_t t0 = now_ns();

	memset(c, 0, sizeof(*c));
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	snprintf(tmo, sizeof(tmo), "%u", io_timeout_ms);
	fflush(stdout);
	fflush(stderr);
	c->pid = fork();
	assert_true(c->pid >= 0);
	if (c->pid == 0) {
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		if (pre_exec)
			pre_exec(arg);
		execl("/proc/self/exe", "fault-dest", "--fault-dest", uri, tmo, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	c->out_fd = pfd[0];
	/* wait for "listening" */
	while (now_ns() - t0 < 20000000000ull) {
		ssize_t n = read(c->out_fd, line + got, sizeof(line) - 1 - got);

		if (n <= 0)
			break;
		got += (size_t)n;
		line[got] = 0;
		if (strstr(line, "listening\n")) {
			snprintf(c->out, sizeof(c->out), "%s", line);
			return;
		}
	}
	fail_msg("child destination did not start: '%.*s'", (int)got, line);
}

int fchild_wait(struct fchild *c)
{
	size_t got = strlen(c->out);
	int st = 0;

	for (;;) {
		ssize_t n = read(c->out_fd, c->out + got, sizeof(c->out) - 1 - got);

		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == sizeof(c->out) - 1)
			got = 0; /* keep the tail */
	}
	c->out[got] = 0;
	close(c->out_fd);
	waitpid(c->pid, &st, 0);
	return st;
}

void fchild_main(int argc, char **argv)
{
	struct mig_dest_params p = { .accept_timeout_ms = 30000 };
	struct soft_vm *svm = NULL;
	struct mig_dest_ops ops = { .create = fvm_dest_create, .opaque = &svm };
	struct mig_listener *l;
	struct backend *be = NULL;
	char err[512];
	int r, i;

	if (argc < 4 || strcmp(argv[1], "--fault-dest"))
		return;
	p.io_timeout_ms = (uint32_t)atoi(argv[3]);
	if (mig_listen(argv[2], &l, err, sizeof(err))) {
		printf("listen failed: %s\n", err);
		exit(3);
	}
	printf("listening\n");
	fflush(stdout);
	r = mig_incoming(l, &p, &ops, &be, NULL, err, sizeof(err));
	mig_listener_close(l);
	if (r) {
		printf("rejected: %s\n", err);
		if (svm)
			soft_vm_destroy(svm);
		exit(1);
	}
	r = soft_vm_start(svm);
	fsleep_ms(200);
	soft_vm_stop(svm);
	for (i = 0; !r && i < soft_vm_config(svm)->vcpus; i++) {
		struct soft_vcpu_stats st;

		soft_vm_vcpu_stats(svm, i, &st);
		if (st.error || st.bad_reads)
			r = -EIO;
	}
	if (!r)
		r = soft_vm_verify(svm, err, sizeof(err));
	printf("%s\n", r ? "resumed VM failed verification" : "verified");
	be->ops->destroy(be);
	soft_vm_destroy(svm);
	exit(r ? 2 : 0);
}
