/* test_migrate_kvm.c: live migration of a running KVM guest (2 vCPUs) to a second KVM VM in-process, each dirty mode; a cut connection, then a retry. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/migrate.h"

static const struct kvm_vm_config base_cfg = {
	.mem_bytes = 64ull << 20,
	.nr_vcpus = 2,
	.nr_slots = 2,
	.backing = BACKING_ANON_4K,
	.workload = { .pattern = WL_HOTSET, .write_pct = 70, .hot_size_pct = 20, .hot_frac_pct = 90,
		      .seed = 11 },
	.guest_flags = GUEST_F_VERIFY_READS | GUEST_F_VERIFY_END | GUEST_F_SYNC_EXITS,
	.batch = 2048,
	.max_rounds = 0, /* until asked to stop */
};

struct kdest {
	struct mig_listener *l;
	struct kvm_vm_config cfg;
	struct backend be;
	struct kvm_vm *vm;
	struct backend *out;
	struct mig_dest_info info;
	int r;
	char err[512];
	pthread_t t;
};

static int kdest_create(void *opaque, const char *kind, const void *desc, size_t len,
			uint32_t nr_vcpus, struct backend **out, char *err, size_t errlen)
{
	struct kdest *d = opaque;
	int r;

	if (strcmp(kind, "kvm") || len != sizeof(d->cfg)) {
		snprintf(err, errlen, "not this test's KVM stream");
		return -EPROTONOSUPPORT;
	}
	memcpy(&d->cfg, desc, len);
	d->cfg.print = NULL;
	r = kvm_vm_create(&d->cfg, &d->vm, err, errlen);
	if (r)
		return r;
	kvm_backend_init(&d->be, d->vm);
	*out = &d->be;
	return 0;
}

static void *kdest_thread(void *arg)
{
	struct kdest *d = arg;
	struct mig_dest_params p = { .accept_timeout_ms = 30000, .io_timeout_ms = 30000 };
	struct mig_dest_ops ops = { .create = kdest_create, .opaque = d };

	d->r = mig_incoming(d->l, &p, &ops, &d->out, &d->info, d->err, sizeof(d->err));
	return NULL;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000l };

	nanosleep(&ts, NULL);
}

static void migrate_kvm(enum dirty_mode mode, int threads, uint64_t range, bool fail_first)
{
	struct kvm_vm_config cfg = base_cfg;
	struct kvm_vm *vm;
	struct backend be;
	struct mig_source *ms;
	struct mig_params p = { 0 };
	struct mig_info info;
	struct kdest d;
	char err[512], uri[128];
	int r, attempt;

	TEST_REQUIRE_KVM();
	if (mode == DIRTY_MODE_RING)
		cfg.ring_entries = 4096;
	r = kvm_vm_create(&cfg, &vm, err, sizeof(err));
	if (r == -EOPNOTSUPP)
		TEST_SKIP("%s", err);
	if (r)
		fail_msg("kvm_vm_create: %s", err);
	kvm_backend_init(&be, vm);
	assert_int_equal(kvm_vm_start(vm), 0);
	sleep_ms(1500); /* boot and run a while */
	assert_int_equal(mig_source_create(&be, &ms), 0);
	snprintf(uri, sizeof(uri), "unix:/tmp/rmapvm-test-kmig-%d.sock", getpid());
	p.uri = uri;
	p.kind = "kvm";
	p.desc = &cfg;
	p.desc_len = sizeof(cfg);
	p.threads = threads;
	p.range_bytes = range;
	p.dirty.mode = mode;
	p.dirty.initially_set = mode == DIRTY_MODE_MANUAL;
	p.dirty.ring_entries = cfg.ring_entries;
	for (attempt = fail_first ? 0 : 1; attempt < 2; attempt++) {
		memset(&d, 0, sizeof(d));
		assert_int_equal(mig_listen(uri, &d.l, err, sizeof(err)), 0);
		assert_int_equal(pthread_create(&d.t, NULL, kdest_thread, &d), 0);
		p.downtime_ms = attempt ? 300 : 1;
		p.bandwidth = attempt ? 0 : 20 << 20;
		p.timeout_s = attempt ? 60 : 0.5;
		p.timeout_action = attempt ? MIG_TIMEOUT_FORCE : MIG_TIMEOUT_CANCEL;
		r = mig_source_migrate(ms, &p, NULL, NULL);
		pthread_join(d.t, NULL);
		mig_listener_close(d.l);
		mig_source_info(ms, &info);
		if (attempt == 0) {
			assert_int_equal(r, -ETIMEDOUT);
			assert_int_not_equal(d.r, 0);
			assert_non_null(strstr(d.err, "source aborted"));
			assert_int_equal(kvm_vm_wait(vm, 0), -ETIMEDOUT); /* still running */
			continue;
		}
		if (r || d.r)
			fail_msg("source %d (%s), destination %d (%s)", r, info.error_msg, d.r, d.err);
	}
	print_message("  kvm %d threads, range %llu KiB: total %llu ms, downtime %llu ms, %llu rounds, "
		      "%llu pages + %llu zero\n",
		      threads, (unsigned long long)(range >> 10), (unsigned long long)info.total_ms,
		      (unsigned long long)info.downtime_ms, (unsigned long long)info.dirty_sync_count,
		      (unsigned long long)info.normal_pages, (unsigned long long)info.zero_pages);
	/* the guest goes on at the destination and verifies its whole region */
	assert_int_equal(kvm_vm_start(d.vm), 0);
	sleep_ms(300);
	assert_int_equal(kvm_vm_request_stop(d.vm), 0);
	do {
		r = kvm_vm_wait(d.vm, 0.05);
		if (r == -ETIMEDOUT && mode == DIRTY_MODE_RING)
			kvm_vm_harvest_rings(d.vm, NULL, NULL);
	} while (r == -ETIMEDOUT);
	if (r)
		fail_msg("destination guest: %s", kvm_vm_error(d.vm));
	d.out->ops->destroy(d.out);
	mig_source_destroy(ms);
	be.ops->destroy(&be);
}

static void test_kvm_bitmap_2threads(void **state)
{
	migrate_kvm(DIRTY_MODE_BITMAP, 2, 4 << 20, false);
}

static void test_kvm_manual_1thread(void **state)
{
	migrate_kvm(DIRTY_MODE_MANUAL, 1, 16 << 20, false);
}

static void test_kvm_ring(void **state)
{
	migrate_kvm(DIRTY_MODE_RING, 2, 8 << 20, false);
}

static void test_kvm_failed_then_retry(void **state)
{
	migrate_kvm(DIRTY_MODE_MANUAL, 2, 2 << 20, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kvm_bitmap_2threads),
		cmocka_unit_test(test_kvm_manual_1thread),
		cmocka_unit_test(test_kvm_ring),
		cmocka_unit_test(test_kvm_failed_then_retry),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
