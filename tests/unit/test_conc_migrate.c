/* test_conc_migrate.c: live migration of a running soft-MMU VM (2 vCPUs writing stamps) to a second soft VM, every dirty mode. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/migrate.h"
#include "rmapvm/soft_vm.h"

/* The machine description a soft source sends: its soft_vm_config, as text. */
static void soft_desc(const struct soft_vm_config *c, char *buf, size_t len)
{
	snprintf(buf, len, "mem=%llu vcpus=%d slots=%d backing=%d lock=%d pattern=%u write=%u hot=%u frac=%u rate=%llu seed=%llu",
		 (unsigned long long)c->mem_bytes, c->vcpus, c->slots, (int)c->backing, (int)c->lock_mode,
		 c->workload.pattern, c->workload.write_pct, c->workload.hot_size_pct,
		 c->workload.hot_frac_pct, (unsigned long long)c->workload.rate,
		 (unsigned long long)c->workload.seed);
}

struct soft_dest {
	struct soft_vm *svm;	/* the VM built by create() */
};

static int soft_dest_create(void *opaque, const char *kind, const void *desc, size_t len,
			    uint32_t nr_vcpus, struct backend **out, char *err, size_t errlen)
{
	struct soft_dest *sd = opaque;
	struct soft_vm_config c = { 0 };
	unsigned long long mem, rate, seed;
	int backing, lock, r;
	char buf[512];

	if (strcmp(kind, "soft") || !desc || len >= sizeof(buf)) {
		snprintf(err, errlen, "not a soft VM stream");
		return -EPROTONOSUPPORT;
	}
	memcpy(buf, desc, len);
	buf[len] = 0;
	if (sscanf(buf, "mem=%llu vcpus=%d slots=%d backing=%d lock=%d pattern=%u write=%u hot=%u frac=%u rate=%llu seed=%llu",
		   &mem, &c.vcpus, &c.slots, &backing, &lock, &c.workload.pattern,
		   &c.workload.write_pct, &c.workload.hot_size_pct, &c.workload.hot_frac_pct, &rate,
		   &seed) != 11 || (uint32_t)c.vcpus != nr_vcpus) {
		snprintf(err, errlen, "bad soft description '%s'", buf);
		return -EINVAL;
	}
	c.mem_bytes = mem;
	c.backing = (enum backing_type)backing;
	c.lock_mode = (enum mmu_lock_mode)lock;
	c.workload.rate = rate;
	c.workload.seed = seed;
	r = soft_vm_create(&c, &sd->svm);
	if (r) {
		snprintf(err, errlen, "soft_vm_create: %s", strerror(-r));
		return r;
	}
	r = soft_backend_create(sd->svm, out);
	if (r) {
		soft_vm_destroy(sd->svm);
		sd->svm = NULL;
	}
	return r;
}

struct dest_run {
	struct mig_listener *l;
	struct soft_dest sd;
	struct mig_dest_ops ops;
	struct backend *be;
	struct mig_dest_info info;
	int r;
	char err[512];
	pthread_t t;
};

static void *dest_thread(void *arg)
{
	struct dest_run *d = arg;
	struct mig_dest_params p = { .accept_timeout_ms = 30000, .io_timeout_ms = 30000 };

	d->r = mig_incoming(d->l, &p, &d->ops, &d->be, &d->info, d->err, sizeof(d->err));
	return NULL;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

static void check_vm(struct soft_vm *svm, const char *who)
{
	char err[256];
	int i;

	for (i = 0; i < soft_vm_config(svm)->vcpus; i++) {
		struct soft_vcpu_stats st;

		soft_vm_vcpu_stats(svm, i, &st);
		if (st.error || st.bad_reads)
			fail_msg("%s: vCPU %d: error %d, %llu impossible stamps read", who, i, st.error,
				 (unsigned long long)st.bad_reads);
	}
	if (soft_vm_verify(svm, err, sizeof(err)))
		fail_msg("%s: %s", who, err);
}

static uint64_t vm_writes(struct soft_vm *svm)
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

/*
 * Migrate a running 2-vCPU soft VM over a unix socket; check the memory
 * equals the source's at switch-over, that the guest runs on at the
 * destination with every stamp verifying, and return the source's stats.
 */
static void soft_migrate(const char *mode, enum dirty_log_algo algo, int threads, uint64_t range,
			 bool fail_first)
{
	struct soft_vm_config c = {
		.mem_bytes = (64ull << 20) / (uint64_t)test_scale(),
		.vcpus = 2,
		.slots = 3,
		.backing = BACKING_ANON_4K,
		.lock_mode = MMU_LOCK_EXCLUSIVE,
	};
	struct soft_vm *src;
	struct backend *be;
	struct mig_source *ms;
	struct mig_params p = { 0 };
	struct mig_info info;
	struct dest_run d;
	struct dirty_log_config dcfg;
	char desc[512], uri[128], err[256];
	uint64_t w0;
	int r, attempt;

	assert_int_equal(workload_parse("hotset,write=70,hot=20,frac=90,rate=200000", &c.workload, err,
					sizeof(err)),
			 0);
	assert_int_equal(soft_vm_create(&c, &src), 0);
	assert_int_equal(soft_backend_create(src, &be), 0);
	vm_get_dirty_log_config(soft_vm_vm(src), &dcfg);
	assert_int_equal(dirty_log_set_harvest(soft_vm_vm(src), algo, dcfg.lock), 0);
	assert_int_equal(soft_vm_start(src), 0);
	sleep_ms(50);
	assert_int_equal(mig_source_create(be, &ms), 0);
	soft_desc(&c, desc, sizeof(desc));
	snprintf(uri, sizeof(uri), "unix:/tmp/rmapvm-test-cmig-%d.sock", getpid());
	p.uri = uri;
	p.kind = "soft";
	p.desc = desc;
	p.desc_len = strlen(desc);
	p.threads = threads;
	p.range_bytes = range;
	p.timeout_s = 60;
	p.timeout_action = MIG_TIMEOUT_FORCE;
	{
		struct dirty_log_config m = { 0 };

		assert_int_equal(dirty_log_mode_parse(mode, &m), 0);
		p.dirty.mode = m.dbit ? DIRTY_MODE_DBIT : m.mode;
		p.dirty.initially_set = m.mode == DIRTY_MODE_MANUAL;
		p.dirty.ring_entries = 4096;
	}
	for (attempt = fail_first ? 0 : 1; attempt < 2; attempt++) {
		memset(&d, 0, sizeof(d));
		assert_int_equal(mig_listen(uri, &d.l, err, sizeof(err)), 0);
		d.ops.create = soft_dest_create;
		d.ops.opaque = &d.sd;
		assert_int_equal(pthread_create(&d.t, NULL, dest_thread, &d), 0);
		if (attempt == 0) {
			/* a destination that dies mid-stream: cut the connection after round 0 */
			p.downtime_ms = 1;
			p.bandwidth = 40 << 20;
			p.timeout_s = 0.3;
			p.timeout_action = MIG_TIMEOUT_CANCEL;
		} else {
			p.downtime_ms = 300;
			p.bandwidth = 0;
			p.timeout_s = 60;
			p.timeout_action = MIG_TIMEOUT_FORCE;
		}
		r = mig_source_migrate(ms, &p, NULL, NULL);
		pthread_join(d.t, NULL);
		mig_listener_close(d.l);
		mig_source_info(ms, &info);
		if (attempt == 0) {
			/* failed: source runs on and still verifies, destination said why */
			assert_int_equal(r, -ETIMEDOUT);
			assert_int_equal(info.state, MIG_STATE_CANCELLED);
			assert_int_not_equal(d.r, 0);
			assert_non_null(strstr(d.err, "source aborted"));
			if (d.sd.svm)
				soft_vm_destroy(d.sd.svm);
			w0 = vm_writes(src);
			sleep_ms(30);
			assert_true(vm_writes(src) > w0);
			check_vm(src, "source after a failed migration");
			continue;
		}
		if (r || d.r)
			fail_msg("%s/%s/%d threads: source %d (%s), destination %d (%s)", mode,
				 dirty_log_algo_name(algo), threads, r, info.error_msg, d.r, d.err);
	}
	assert_int_equal(info.state, MIG_STATE_COMPLETED);
	/* switch-over image equals the paused source */
	{
		const struct mem_backing *a = soft_vm_backing(src), *b = soft_vm_backing(d.sd.svm);

		assert_int_equal(memcmp((void *)a->hva, (void *)b->hva, c.mem_bytes), 0);
	}
	check_vm(src, "source at switch-over");
	check_vm(d.sd.svm, "destination before resume");
	/* the guest goes on at the destination */
	assert_int_equal(soft_vm_start(d.sd.svm), 0);
	w0 = vm_writes(d.sd.svm);
	sleep_ms(100);
	soft_vm_stop(d.sd.svm);
	assert_true(vm_writes(d.sd.svm) > w0);
	check_vm(d.sd.svm, "destination after running on");
	print_message("  %s/%s threads=%d range=%lluK: total %llu ms, downtime %llu ms, %llu rounds, "
		      "%llu pages + %llu zero, %llu bytes; final %llu pages %llu ms, vcpu %llu ms, ack %llu ms, dest verify %llu ms\n",
		      mode, dirty_log_algo_name(algo), threads, (unsigned long long)(range >> 10),
		      (unsigned long long)info.total_ms, (unsigned long long)info.downtime_ms,
		      (unsigned long long)info.dirty_sync_count, (unsigned long long)info.normal_pages,
		      (unsigned long long)info.zero_pages, (unsigned long long)info.transferred,
		      (unsigned long long)info.final_pages, (unsigned long long)info.final_ms,
		      (unsigned long long)info.vcpu_ms, (unsigned long long)info.ack_ms,
		      (unsigned long long)d.info.verify_ms);
	d.be->ops->destroy(d.be);
	soft_vm_destroy(d.sd.svm);
	mig_source_destroy(ms);
	be->ops->destroy(be);
	soft_vm_destroy(src);
}

static void test_soft_bitmap_rmap_2threads(void **state)
{
	soft_migrate("bitmap", DIRTY_ALGO_RMAP, 2, 4 << 20, false);
}

static void test_soft_manual_tdp_1thread(void **state)
{
	soft_migrate("manual", DIRTY_ALGO_TDP, 1, 16 << 20, false);
}

static void test_soft_ring(void **state)
{
	soft_migrate("ring", DIRTY_ALGO_RMAP, 2, 8 << 20, false);
}

static void test_soft_dbit_walk_3threads(void **state)
{
	soft_migrate("dbit", DIRTY_ALGO_WALK, 3, 1 << 20, false);
}

static void test_soft_failed_then_retry(void **state)
{
	soft_migrate("bitmap", DIRTY_ALGO_RMAP, 2, 2 << 20, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_soft_bitmap_rmap_2threads),
		cmocka_unit_test(test_soft_manual_tdp_1thread),
		cmocka_unit_test(test_soft_ring),
		cmocka_unit_test(test_soft_dbit_walk_3threads),
		cmocka_unit_test(test_soft_failed_then_retry),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
