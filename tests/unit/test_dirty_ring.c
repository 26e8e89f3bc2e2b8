/* test_dirty_ring.c: dirty rings: push order, harvest/reset protocol, 64-page coalescing, ring-full stops the vCPU. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "mmu/dirty_internal.h"
#include "rmapvm/dirty_log.h"

#define SLOT_ID 5 /* as 0, id 5: entries carry (as_id << 16) | id */

struct rfx {
	struct vm *vm;
	struct vcpu *vcpu;
	struct mem_backing b;
	uint64_t npages;
};

static void rfx_init(struct rfx *f, uint32_t entries, bool dbit, uint64_t pages)
{
	struct vm_memory_region mr = { .slot = SLOT_ID };
	struct dirty_log_config c;
	struct vm_config cfg;

	vm_config_default(&cfg);
	assert_int_equal(vm_create(&cfg, &f->vm), 0);
	f->vcpu = vm_get_vcpu(f->vm, 0);
	dirty_log_config_default(&c);
	c.mode = DIRTY_MODE_RING;
	c.ring_entries = entries;
	c.dbit = dbit;
	assert_int_equal(vm_configure_dirty_log(f->vm, &c), 0);
	f->npages = pages;
	assert_int_equal(backing_alloc(&f->b, BACKING_ANON_4K, pages * PAGE_SIZE), 0);
	mr.memory_size = pages * PAGE_SIZE;
	mr.userspace_addr = f->b.hva;
	assert_int_equal(vm_set_user_memory_region(f->vm, &mr), 0);
	assert_true(vm_prefault_memory(f->vm, 0, 0, pages * PAGE_SIZE, PG_LEVEL_4K) > 0);
	mr.flags = KVM_MEM_LOG_DIRTY_PAGES;
	assert_int_equal(vm_set_user_memory_region(f->vm, &mr), 0);
}

static void rfx_fini(struct rfx *f)
{
	vm_destroy(f->vm);
	backing_free(&f->b);
}

struct seen {
	uint64_t offs[8192];
	int n;
	int bad_slot;
};

static void seen_fn(void *opaque, uint32_t slot, uint64_t offset)
{
	struct seen *s = opaque;

	if (slot != SLOT_ID)
		s->bad_slot++;
	if (s->n < (int)ARRAY_SIZE(s->offs))
		s->offs[s->n++] = offset;
}

static bool writable(struct rfx *f, uint64_t page)
{
	int level;
	uint64_t *sptep = mmu_lookup_leaf(f->vm, 0, page, &level);

	return sptep && is_writable_pte(spte_read(sptep));
}

/* Entries come out in the order the vCPU dirtied the pages; re-protection waits for reset. */
static void test_order_and_reset(void **state)
{
	static const uint64_t order[] = { 70, 3, 900, 4, 5, 1000, 64, 63, 2 };
	struct seen *s = calloc(1, sizeof(*s));
	struct rfx f;
	size_t i;

	rfx_init(&f, 1024, false, 1024);
	vcpu_load(f.vcpu);
	for (i = 0; i < ARRAY_SIZE(order); i++) {
		assert_int_equal(vcpu_write_u64(f.vcpu, order[i] * PAGE_SIZE, i), 0);
		assert_int_equal(vcpu_write_u64(f.vcpu, order[i] * PAGE_SIZE + 8, i), 0); /* no new entry */
	}
	vcpu_put(f.vcpu);
	assert_int_equal(dirty_ring_used(f.vm, 0), ARRAY_SIZE(order));
	assert_int_equal(dirty_ring_harvest(f.vm, 0, seen_fn, s), ARRAY_SIZE(order));
	assert_int_equal(s->bad_slot, 0);
	for (i = 0; i < ARRAY_SIZE(order); i++)
		assert_int_equal(s->offs[i], order[i]);
	/* Harvested but not reset: still writable, still counted as used. */
	assert_true(writable(&f, 70));
	assert_int_equal(dirty_ring_harvest(f.vm, 0, seen_fn, s), 0);
	/* Two more entries, not harvested: reset stops at them. */
	vcpu_load(f.vcpu);
	assert_int_equal(vcpu_write_u64(f.vcpu, 500 * PAGE_SIZE, 1), 0);
	assert_int_equal(vcpu_write_u64(f.vcpu, 501 * PAGE_SIZE, 1), 0);
	vcpu_put(f.vcpu);
	assert_int_equal(dirty_ring_reset(f.vm), ARRAY_SIZE(order));
	assert_int_equal(dirty_ring_used(f.vm, 0), 2);
	for (i = 0; i < ARRAY_SIZE(order); i++)
		assert_false(writable(&f, order[i]));
	assert_true(writable(&f, 500));
	assert_int_equal(dirty_ring_reset(f.vm), 0);
	s->n = 0;
	assert_int_equal(dirty_ring_harvest(f.vm, 0, seen_fn, s), 2);
	assert_int_equal(s->offs[0], 500);
	assert_int_equal(s->offs[1], 501);
	assert_int_equal(dirty_ring_reset(f.vm), 2);
	assert_false(writable(&f, 501));
	/* Wrong vCPU, wrong mode. */
	assert_int_equal(dirty_ring_harvest(f.vm, 3, seen_fn, s), -EINVAL);
	{
		uint64_t bm[16];

		assert_int_equal(dirty_log_get(f.vm, SLOT_ID, bm), -ENXIO);
	}
	rfx_fini(&f);
	free(s);
}

/* Reset coalesces entries into 64-page masks, including entries slightly below the base. */
static void test_reset_coalesces(void **state)
{
	struct seen *s = calloc(1, sizeof(*s));
	struct dirty_log_stats st0, st1;
	struct rfx f;
	uint64_t p;

	rfx_init(&f, 1024, false, 1024);
	vcpu_load(f.vcpu);
	for (p = 128; p < 192; p++) /* one 64-page mask */
		assert_int_equal(vcpu_write_u64(f.vcpu, p * PAGE_SIZE, p), 0);
	for (p = 300; p > 260; p--) /* descending: shifts the base down, still one mask */
		assert_int_equal(vcpu_write_u64(f.vcpu, p * PAGE_SIZE, p), 0);
	for (p = 400; p < 1000; p += 100) /* far apart: one mask each */
		assert_int_equal(vcpu_write_u64(f.vcpu, p * PAGE_SIZE, p), 0);
	vcpu_put(f.vcpu);
	dirty_log_get_stats(f.vm, &st0);
	assert_int_equal(dirty_ring_harvest(f.vm, 0, seen_fn, s), 64 + 40 + 6);
	assert_int_equal(dirty_ring_reset(f.vm), 64 + 40 + 6);
	dirty_log_get_stats(f.vm, &st1);
	assert_int_equal(st1.ring_masks - st0.ring_masks, 1 + 1 + 6);
	assert_int_equal(st1.reprotected - st0.reprotected, 64 + 40 + 6);
	assert_int_equal(st1.flushes - st0.flushes, 1);
	for (p = 128; p < 192; p++)
		assert_false(writable(&f, p));
	rfx_fini(&f);
	free(s);
}

struct full_arg {
	struct rfx *f;
	uint64_t pages;
	bool done;
};

static void *full_writer(void *arg)
{
	struct full_arg *a = arg;
	uint64_t p;

	vcpu_load(a->f->vcpu);
	for (p = 0; p < a->pages; p++)
		if (vcpu_write_u64(a->f->vcpu, p * PAGE_SIZE, p))
			abort();
	vcpu_put(a->f->vcpu);
	__atomic_store_n(&a->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void wait_used_stable(struct rfx *f, int *used)
{
	int prev = -1, same = 0;

	/* The vCPU stops at the soft limit: the count stays put. */
	while (same < 20) {
		struct timespec ts = { 0, 1000000 };
		int u = dirty_ring_used(f->vm, 0);

		same = u && u == prev ? same + 1 : 0;
		prev = u;
		nanosleep(&ts, NULL);
	}
	*used = prev;
}

/* A soft-full ring stops the vCPU (a ring-full exit) until a reset; nothing is lost. */
static void run_full(bool dbit)
{
	struct seen *s = calloc(1, sizeof(*s));
	struct full_arg a = { 0 };
	struct dirty_log_stats st;
	uint32_t soft = 1024 - 64 - (dbit ? 512 : 0);
	uint64_t *got;
	pthread_t th;
	struct rfx f;
	int used, i;

	rfx_init(&f, 1024, dbit, 4096);
	a.f = &f;
	a.pages = 3000;
	pthread_create(&th, NULL, full_writer, &a);
	wait_used_stable(&f, &used);
	assert_false(__atomic_load_n(&a.done, __ATOMIC_ACQUIRE));
	assert_true(used >= (int)soft && used <= 1024);
	dirty_log_get_stats(f.vm, &st);
	assert_int_equal(st.ring_full_exits, 1);
	while (!__atomic_load_n(&a.done, __ATOMIC_ACQUIRE)) {
		int h = dirty_ring_harvest(f.vm, 0, seen_fn, s);

		assert_true(h >= 0);
		assert_int_equal(dirty_ring_reset(f.vm), h);
		sched_yield();
	}
	pthread_join(th, NULL);
	assert_true(dirty_ring_harvest(f.vm, 0, seen_fn, s) >= 0);
	dirty_ring_reset(f.vm);
	/*
	 * Every page at least once. A write whose fault pushed an entry retries
	 * its access; if a reset re-protected the page in between (the host
	 * resets all the time here, and while the vCPU waits on a full ring),
	 * the retry faults and pushes a second entry, as in KVM.
	 */
	dirty_log_get_stats(f.vm, &st);
	got = calloc(a.pages, sizeof(*got));
	assert_true(s->n >= (int)a.pages && s->n <= 2 * (int)a.pages);
	for (i = 0; i < s->n; i++) {
		assert_true(s->offs[i] < a.pages);
		got[s->offs[i]]++;
		if (!dbit && i)
			assert_true(s->offs[i] >= s->offs[i - 1]); /* program order */
	}
	for (i = 0; i < (int)a.pages; i++)
		assert_true(got[i] >= 1);
	assert_true(st.ring_full_exits >= 1);
	assert_int_equal(st.ring_overflows, 0);
	rfx_fini(&f);
	free(got);
	free(s);
}

static void test_full_blocks_vcpu(void **state)
{
	run_full(false);
}

/* D-bit mode: PML buffers drain into the ring (512 entries reserved for that). */
static void test_full_blocks_vcpu_dbit(void **state)
{
	run_full(true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_and_reset),
		cmocka_unit_test(test_reset_coalesces),
		cmocka_unit_test(test_full_blocks_vcpu),
		cmocka_unit_test(test_full_blocks_vcpu_dbit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
