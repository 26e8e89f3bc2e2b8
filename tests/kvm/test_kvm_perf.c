/* test_kvm_perf.c: the kernel's dirty-log costs on this machine: GET/CLEAR time vs dirty pages, ring harvest per entry, write-fault cost. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "harness.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/util.h"

/*
 * Shaped on dirty_log_perf_test: one vCPU sweeps its RAM writing every
 * page; the host lets it run for an interval, pauses it, and times the
 * harvest of what it dirtied. Under write-protection logging every write
 * of the sweep hits a freshly protected page, so interval / pages is the
 * write-fault cost. The memory size comes from RMAPVM_KVM_PERF_MEM
 * (default 256M; the figures in docs/KVM.md use 4G and longer intervals,
 * RMAPVM_KVM_PERF_LONG=1). Sanity checks only: this test reports numbers.
 */

struct perf {
	struct kvm_vm *vm;
	uint64_t mem;
	struct kvm_region_info ri;	/* RAM slot 1 */
	uint64_t *bm;
};

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };

	nanosleep(&ts, NULL);
}

static uint64_t guest_writes(struct kvm_vm *vm)
{
	struct kvm_vcpu_stats st;

	kvm_vm_vcpu_stats(vm, 0, &st);
	return st.guest_writes;
}

static uint64_t popcount(const uint64_t *bm, uint64_t words)
{
	uint64_t n = 0, i;

	for (i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

static void perf_setup(struct perf *p, uint32_t ring_entries)
{
	struct kvm_vm_config cfg = {
		.nr_vcpus = 1,
		.nr_slots = 1,
		.backing = BACKING_THP,
		.workload = { .pattern = WL_SWEEP, .write_pct = 100 },
		.batch = 4096,
		.ring_entries = ring_entries,
	};
	const char *env = getenv("RMAPVM_KVM_PERF_MEM");
	char err[512];
	uint64_t t0, npages;

	p->mem = 256ull << 20;
	if (env && parse_size(env, &p->mem))
		fail_msg("RMAPVM_KVM_PERF_MEM=%s: not a size", env);
	cfg.mem_bytes = p->mem;
	if (kvm_vm_create(&cfg, &p->vm, err, sizeof(err)))
		fail_msg("kvm_vm_create: %s", err);
	kvm_vm_region(p->vm, 1, &p->ri);
	npages = p->ri.npages;
	p->bm = calloc((npages + 63) / 64, 8);
	/* Populate: one full pass, untracked (first touch builds shadow + host pages). */
	t0 = now_ns();
	assert_int_equal(kvm_vm_start(p->vm), 0);
	while (guest_writes(p->vm) < npages)
		sleep_ns(1000000);
	printf("# populate %llu pages: %.2f s\n", (unsigned long long)npages,
	       (double)(now_ns() - t0) / 1e9);
}

/* Untracked write rate over @ns. */
static double untracked_rate(struct perf *p, uint64_t ns)
{
	uint64_t w0 = guest_writes(p->vm), t0 = now_ns(), w1;

	sleep_ns(ns);
	w1 = guest_writes(p->vm);
	return (double)(w1 - w0) / ((double)(now_ns() - t0) / 1e9);
}

static const uint64_t intervals_ms_short[] = { 1, 4, 16, 64, 256 };
static const uint64_t intervals_ms_long[] = { 1, 4, 16, 64, 256, 1024, 4096, 8192 };

static void intervals(const uint64_t **iv, size_t *n)
{
	if (getenv("RMAPVM_KVM_PERF_LONG")) {
		*iv = intervals_ms_long;
		*n = ARRAY_SIZE(intervals_ms_long);
	} else {
		*iv = intervals_ms_short;
		*n = ARRAY_SIZE(intervals_ms_short);
	}
}

/* Bitmap modes: run an interval, pause, time GET (and CLEAR) of the whole slot. */
static void bitmap_series(struct perf *p, bool manual)
{
	struct dirty_config dc = { .mode = manual ? DIRTY_MODE_MANUAL : DIRTY_MODE_BITMAP };
	struct kvm_dirty_log log = { .slot = p->ri.slot, .dirty_bitmap = p->bm };
	uint64_t words = (p->ri.npages + 63) / 64;
	const uint64_t *iv;
	size_t n, i;

	intervals(&iv, &n);
	assert_int_equal(kvm_vm_dirty_start(p->vm, &dc), 0);
	/* Start clean: harvest what enabling (or the populate pass) left. */
	assert_int_equal(kvm_vm_pause(p->vm), 0);
	assert_int_equal(kvm_vm_harvest_range(p->vm, p->ri.slot, 0, p->ri.npages, p->bm), 0);
	printf("# %-7s %10s %12s %12s %14s %12s\n", manual ? "manual" : "classic", "interval",
	       "dirty pages", "GET us", manual ? "CLEAR us" : "-", "us/fault");
	for (i = 0; i < n; i++) {
		uint64_t t0, t1, t2, dirty, run0, run1;
		struct kvm_clear_dirty_log clr = {
			.slot = p->ri.slot,
			.num_pages = (uint32_t)p->ri.npages,
			.first_page = 0,
			.dirty_bitmap = p->bm,
		};

		run0 = now_ns();
		for (int tries = 0;; tries++) {
			assert_int_equal(kvm_vm_resume(p->vm), 0);
			sleep_ns(iv[i] * 1000000ull);
			assert_int_equal(kvm_vm_pause(p->vm), 0);
			run1 = now_ns();
			t0 = now_ns();
			assert_int_equal(ioctl(kvm_vm_fd(p->vm), KVM_GET_DIRTY_LOG, &log), 0);
			t1 = now_ns();
			dirty = popcount(p->bm, words);
			/* A loaded host may not run the vCPU at all in a short interval. */
			if (dirty || tries == 20)
				break;
		}
		if (manual)
			assert_int_equal(ioctl(kvm_vm_fd(p->vm), KVM_CLEAR_DIRTY_LOG, &clr), 0);
		t2 = now_ns();
		printf("# %-7s %8llums %12llu %12.1f %14.1f %12.2f\n", "", (unsigned long long)iv[i],
		       (unsigned long long)dirty, (double)(t1 - t0) / 1e3,
		       manual ? (double)(t2 - t1) / 1e3 : 0.0,
		       dirty ? (double)(run1 - run0) / 1e3 / (double)dirty : 0.0);
		assert_true(dirty > 0);
	}
	assert_int_equal(kvm_vm_dirty_stop(p->vm), 0);
	assert_int_equal(kvm_vm_resume(p->vm), 0);
}

static void count_entry(void *opaque, uint32_t slot, uint64_t offset)
{
	(*(uint64_t *)opaque)++;
}

static void perf_teardown(struct perf *p)
{
	kvm_vm_destroy(p->vm);
	free(p->bm);
}

static void test_bitmap_costs(void **state)
{
	struct perf p;
	double rate;

	TEST_REQUIRE_KVM();
	perf_setup(&p, 0);
	rate = untracked_rate(&p, 200000000ull);
	printf("# untracked sweep: %.1f M page writes/s\n", rate / 1e6);
	assert_true(rate > 0);
	bitmap_series(&p, false);
	bitmap_series(&p, true);
	perf_teardown(&p);
}

static void test_ring_costs(void **state)
{
	struct kvm_caps caps;
	struct perf p;
	uint32_t entries;
	const uint64_t *iv;
	size_t n, i;
	struct dirty_config dc = { .mode = DIRTY_MODE_RING };

	TEST_REQUIRE_KVM();
	assert_int_equal(kvm_probe(&caps), 0);
	if (!caps.ring_max_bytes)
		TEST_SKIP("no KVM_CAP_DIRTY_LOG_RING");
	entries = caps.ring_max_bytes / 16;
	perf_setup(&p, entries);
	assert_int_equal(kvm_vm_dirty_start(p.vm, &dc), 0);
	intervals(&iv, &n);
	printf("# ring (%u entries) %6s %12s %14s %12s %10s\n", entries, "interval", "entries",
	       "harvest+reset us", "ns/entry", "ring-full");
	for (i = 0; i < n && iv[i] <= 256; i++) {
		uint64_t got = 0, t0, t1;
		struct kvm_vcpu_stats st;
		int r;

		assert_int_equal(kvm_vm_pause(p.vm), 0);
		kvm_vm_harvest_rings(p.vm, count_entry, &got); /* drain */
		got = 0;
		assert_int_equal(kvm_vm_resume(p.vm), 0);
		sleep_ns(iv[i] * 1000000ull);
		assert_int_equal(kvm_vm_pause(p.vm), 0);
		t0 = now_ns();
		r = kvm_vm_harvest_rings(p.vm, count_entry, &got);
		t1 = now_ns();
		assert_true(r >= 0);
		kvm_vm_vcpu_stats(p.vm, 0, &st);
		printf("# %25llums %12llu %14.1f %12.1f %10llu\n", (unsigned long long)iv[i],
		       (unsigned long long)got, (double)(t1 - t0) / 1e3,
		       got ? (double)(t1 - t0) / (double)got : 0.0,
		       (unsigned long long)st.ring_full_exits);
		assert_int_equal(kvm_vm_resume(p.vm), 0);
	}
	perf_teardown(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bitmap_costs),
		cmocka_unit_test(test_ring_costs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
