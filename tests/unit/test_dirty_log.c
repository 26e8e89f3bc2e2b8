/* test_dirty_log.c: enable/disable, get/clear rules, INITIALLY_SET, ranges, D bits, eager split, per algorithm. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mmu/dirty_internal.h"
#include "rmapvm/dirty_log.h"

struct fx {
	struct vm *vm;
	struct vcpu *vcpu;
	struct mem_backing b;
	struct vm_memory_region mr;
	uint64_t npages;
};

/* A VM with one slot of @bytes at gpa 0 (mapped huge by prefault if @huge), logging off. */
static void fx_init(struct fx *f, const struct dirty_log_config *dcfg, uint64_t bytes, bool huge)
{
	struct vm_config cfg;

	memset(f, 0, sizeof(*f));
	vm_config_default(&cfg);
	assert_int_equal(vm_create(&cfg, &f->vm), 0);
	f->vcpu = vm_get_vcpu(f->vm, 0);
	assert_int_equal(backing_alloc(&f->b, BACKING_ANON_4K, bytes), 0);
	if (dcfg)
		assert_int_equal(vm_configure_dirty_log(f->vm, dcfg), 0);
	f->mr.memory_size = bytes;
	f->mr.userspace_addr = f->b.hva;
	f->npages = bytes / PAGE_SIZE;
	assert_int_equal(vm_set_user_memory_region(f->vm, &f->mr), 0);
	assert_true(vm_prefault_memory(f->vm, 0, 0, bytes, huge ? PG_LEVEL_2M : PG_LEVEL_4K) > 0);
}

static void fx_log(struct fx *f, bool on)
{
	f->mr.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0;
	assert_int_equal(vm_set_user_memory_region(f->vm, &f->mr), 0);
}

static void fx_fini(struct fx *f)
{
	vm_destroy(f->vm);
	backing_free(&f->b);
}

/* Guest writes from the test thread (loaded only around the access). */
static void guest_write(struct fx *f, uint64_t page, uint64_t val)
{
	vcpu_load(f->vcpu);
	assert_int_equal(vcpu_write_u64(f->vcpu, page * PAGE_SIZE, val), 0);
	vcpu_put(f->vcpu);
}

static uint64_t leaf(struct fx *f, uint64_t page, int *level)
{
	uint64_t *sptep = mmu_lookup_leaf(f->vm, 0, page, level);

	return sptep ? spte_read(sptep) : 0;
}

static bool writable(struct fx *f, uint64_t page)
{
	int level;

	return is_writable_pte(leaf(f, page, &level));
}

static int leaf_level(struct fx *f, uint64_t page)
{
	int level = 0;

	leaf(f, page, &level);
	return level;
}

static void cfg_algo(struct dirty_log_config *c, int algo)
{
	dirty_log_config_default(c);
	c->algo = algo;
}

/* Enabling write-protects every leaf of the slot at every level, per algorithm. */
static void test_enable_protects_all_levels(void **state)
{
	int a;

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		struct dirty_log_config c;
		struct fx f;
		uint64_t p;

		cfg_algo(&c, a);
		/* 2 MiB frames plus 5 pages: huge leaves and a 4 KiB tail. */
		fx_init(&f, &c, 2 * SZ_2M + 5 * PAGE_SIZE, true);
		assert_int_equal(leaf_level(&f, 0), PG_LEVEL_2M);
		assert_int_equal(leaf_level(&f, f.npages - 1), PG_LEVEL_4K);
		assert_true(writable(&f, 0) && writable(&f, f.npages - 1));
		fx_log(&f, true);
		for (p = 0; p < f.npages; p++)
			assert_false(writable(&f, p));
		/* Huge leaves stay (lazily broken); a write maps 4 KiB and is logged. */
		assert_int_equal(leaf_level(&f, 600), PG_LEVEL_2M);
		guest_write(&f, 600, 1);
		assert_int_equal(leaf_level(&f, 600), PG_LEVEL_4K);
		{
			uint64_t bm[DIV_ROUND_UP(f.npages, 64)];

			assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
			for (p = 0; p < f.npages; p++)
				assert_int_equal((bm[p / 64] >> (p % 64)) & 1, p == 600);
			assert_false(writable(&f, 600));
			assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
			for (p = 0; p < DIV_ROUND_UP(f.npages, 64); p++)
				assert_int_equal(bm[p], 0);
		}
		fx_fini(&f);
	}
}

static void test_eager_split_at_enable(void **state)
{
	struct dirty_log_config c;
	struct dirty_log_stats st;
	struct fx f;
	uint64_t p;

	dirty_log_config_default(&c);
	c.eager_split = true;
	fx_init(&f, &c, 4 * SZ_2M, true);
	fx_log(&f, true);
	for (p = 0; p < f.npages; p += 37) {
		assert_int_equal(leaf_level(&f, p), PG_LEVEL_4K);
		assert_false(writable(&f, p));
	}
	dirty_log_get_stats(f.vm, &st);
	assert_int_equal(st.huge_split, 4);
	/* The split leaves are on their rmaps: harvest re-protects through them. */
	guest_write(&f, 5, 1);
	assert_true(writable(&f, 5));
	{
		uint64_t bm[DIV_ROUND_UP(f.npages, 64)];

		assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
		assert_int_equal(bm[0], 1ull << 5);
	}
	assert_false(writable(&f, 5));
	fx_fini(&f);
}

/* KVM_CLEAR_DIRTY_LOG's validation, and "never re-protect a bit not fetched". */
static void test_clear_rules(void **state)
{
	struct dirty_log_config c;
	uint64_t bm[8] = { 0 }, *live;
	struct fx f;

	dirty_log_config_default(&c);
	c.mode = DIRTY_MODE_MANUAL;
	fx_init(&f, &c, 200 * PAGE_SIZE, false); /* 200 = 3 * 64 + 8 */
	assert_int_equal(dirty_log_clear(f.vm, 0, 0, 64, bm), -ENOENT); /* not logged */
	fx_log(&f, true);
	assert_int_equal(dirty_log_clear(f.vm, 7, 0, 64, bm), -EINVAL);	/* no such slot */
	assert_int_equal(dirty_log_clear(f.vm, 0, 1, 64, bm), -EINVAL);	/* first not aligned */
	assert_int_equal(dirty_log_clear(f.vm, 0, 63, 1, bm), -EINVAL);
	assert_int_equal(dirty_log_clear(f.vm, 0, 0, 65, bm), -EINVAL);	/* count not aligned */
	assert_int_equal(dirty_log_clear(f.vm, 0, 0, 1, bm), -EINVAL);
	assert_int_equal(dirty_log_clear(f.vm, 0, 256, 0, bm), -EINVAL);	/* past the end */
	assert_int_equal(dirty_log_clear(f.vm, 0, 128, 128, bm), -EINVAL);
	assert_int_equal(dirty_log_clear(f.vm, 0, 192, 8, bm), 0);		/* reaches the end */
	assert_int_equal(dirty_log_clear(f.vm, 0, 128, 72, bm), 0);
	assert_int_equal(dirty_log_clear(f.vm, 0, 0, 200, bm), 0);
	assert_int_equal(dirty_log_clear(f.vm, 0, 200, 0, bm), -EINVAL); /* not 64-aligned */
	assert_int_equal(dirty_log_get_and_clear_range(f.vm, 0, 64, 65, bm), -EINVAL);

	guest_write(&f, 3, 1);
	guest_write(&f, 4, 1);
	guest_write(&f, 195, 1);
	/* get copies, changes nothing */
	assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
	assert_int_equal(bm[0], (1ull << 3) | (1ull << 4));
	assert_int_equal(bm[3], 1ull << 3);
	assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
	assert_int_equal(bm[0], (1ull << 3) | (1ull << 4));
	assert_true(writable(&f, 3) && writable(&f, 4));
	/* Page 4's bit vanishes behind the host's back (as if fetched by someone else). */
	live = ((struct dirty_slot *)vm_id_to_memslot(f.vm, 0, 0)->dirty_log_priv)->live;
	__atomic_fetch_and(&live[0], ~(1ull << 4), __ATOMIC_RELAXED);
	bm[0] = (1ull << 3) | (1ull << 4);
	assert_int_equal(dirty_log_clear(f.vm, 0, 0, 64, bm), 0);
	assert_false(writable(&f, 3));
	assert_true(writable(&f, 4)); /* its bit was not set: not re-protected */
	/* Bits past num_pages at the slot's end are ignored. */
	bm[0] = ~0ull;
	assert_int_equal(dirty_log_clear(f.vm, 0, 192, 8, bm), 0);
	assert_false(writable(&f, 195));
	assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
	assert_int_equal(bm[0] | bm[1] | bm[2] | bm[3], 0);
	/* Ring-only VMs have no bitmap. */
	fx_log(&f, false);
	c.mode = DIRTY_MODE_RING;
	c.ring_entries = 1024;
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), 0);
	fx_log(&f, true);
	assert_int_equal(dirty_log_clear(f.vm, 0, 0, 64, bm), -ENXIO);
	assert_int_equal(dirty_log_get(f.vm, 0, bm), -ENXIO);
	/* Reconfiguring while a slot is logged is refused. */
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), -EBUSY);
	fx_fini(&f);
}

static void test_config_validation(void **state)
{
	struct dirty_log_config c;
	struct fx f;

	fx_init(&f, NULL, 64 * PAGE_SIZE, false);
	dirty_log_config_default(&c);
	c.initially_set = true; /* needs manual mode */
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), -EINVAL);
	dirty_log_config_default(&c);
	c.mode = DIRTY_MODE_RING;
	c.ring_entries = 1000;
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), -EINVAL);
	c.ring_entries = 512;
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), -EINVAL);
	c.ring_entries = 131072;
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), -EINVAL);
	c.ring_entries = 65536;
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), 0);
	dirty_log_config_default(&c);
	c.chunk_pages = 100;
	assert_int_equal(vm_configure_dirty_log(f.vm, &c), -EINVAL);
	assert_int_equal(dirty_log_set_harvest(f.vm, DIRTY_ALGO_NR, DIRTY_LOCK_WHOLE), -EINVAL);
	{
		struct dirty_log_config p;
		enum dirty_log_algo a;

		assert_int_equal(dirty_log_mode_parse("dbit", &p), 0);
		assert_true(p.dbit && p.mode == DIRTY_MODE_BITMAP);
		assert_int_equal(dirty_log_mode_parse("nope", &p), -EINVAL);
		assert_int_equal(dirty_log_algo_parse("TDP", &a), 0);
		assert_int_equal(a, DIRTY_ALGO_TDP);
		assert_string_equal(dirty_log_algo_name(DIRTY_ALGO_WALK), "walk");
	}
	fx_fini(&f);
}

/* INITIALLY_SET: enabling is O(1); clearing a chunk protects it, huge frames included. */
static void test_initially_set(void **state)
{
	int a, split;

	for (split = 0; split < 2; split++) {
		for (a = 0; a < DIRTY_ALGO_NR; a++) {
			struct dirty_log_config c;
			struct dirty_log_stats st;
			struct fx f;
			uint64_t bm[DIV_ROUND_UP(2 * 512 + 7, 64)], w;

			cfg_algo(&c, a);
			c.mode = DIRTY_MODE_MANUAL;
			c.initially_set = true;
			c.eager_split = split;
			fx_init(&f, &c, 2 * SZ_2M + 7 * PAGE_SIZE, true);
			fx_log(&f, true);
			dirty_log_get_stats(f.vm, &st);
			assert_int_equal(st.enable_wp, 0);
			assert_int_equal(st.huge_split, 0);
			assert_true(writable(&f, 0) && writable(&f, 700) && writable(&f, 1030));
			assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
			for (w = 0; w < 16; w++)
				assert_int_equal(bm[w], ~0ull);
			assert_int_equal(bm[16], (1ull << 7) - 1); /* 1031 pages */
			/* Clear pages [512, 576): the second 2 MiB frame gets protected. */
			assert_int_equal(dirty_log_clear(f.vm, 0, 512, 64, &bm[8]), 0);
			assert_false(writable(&f, 512));
			assert_false(writable(&f, 575));
			assert_true(writable(&f, 0));	 /* first frame untouched */
			assert_true(writable(&f, 1030)); /* 4 KiB tail untouched */
			assert_int_equal(leaf_level(&f, 512), split ? PG_LEVEL_4K : PG_LEVEL_2M);
			if (split)
				assert_true(writable(&f, 600)); /* split children not in the mask keep W... */
			assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
			assert_int_equal(bm[8], 0);
			assert_int_equal(bm[9], ~0ull);
			/* ...and their bits, so nothing is lost. A write to a cleared page is logged. */
			guest_write(&f, 520, 9);
			assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
			assert_int_equal(bm[8], 1ull << 8);
			fx_fini(&f);
		}
	}
}

/* The talk's ranged GET_DIRTY_LOG: only the range is fetched and re-protected. */
static void test_range_get_and_clear(void **state)
{
	int a;

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		struct dirty_log_config c;
		struct fx f;
		uint64_t bm[4], p;

		cfg_algo(&c, a);
		fx_init(&f, &c, 256 * PAGE_SIZE, false);
		fx_log(&f, true);
		for (p = 0; p < 256; p += 10)
			guest_write(&f, p, p);
		assert_int_equal(dirty_log_get_and_clear_range(f.vm, 0, 64, 128, bm), 0);
		for (p = 64; p < 192; p++) {
			assert_int_equal((bm[(p - 64) / 64] >> (p % 64)) & 1, p % 10 == 0);
			assert_false(writable(&f, p));
		}
		assert_true(writable(&f, 0) && writable(&f, 250)); /* outside: untouched */
		assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
		assert_int_equal(bm[1] | bm[2], 0);
		assert_true(bm[0] == 0x1004010040100401ull && bm[3] != 0);
		fx_fini(&f);
	}
}

/* D-bit mode: leaves stay writable, D is cleared; the walker logs through PML. */
static void test_dbit(void **state)
{
	int a;

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		struct dirty_log_config c;
		struct dirty_log_stats st;
		struct fx f;
		uint64_t bm[DIV_ROUND_UP(SZ_2M / PAGE_SIZE + 1024, 64)], p;
		int level;

		cfg_algo(&c, a);
		c.dbit = true;
		/* A huge frame, then 1024 pages mapped 4 KiB. */
		fx_init(&f, &c, SZ_2M, true);
		f.mr.slot = 1;
		f.mr.guest_phys_addr = SZ_2M;
		f.mr.memory_size = 4 * 1024 * 1024;
		{
			struct mem_backing b2;

			assert_int_equal(backing_alloc(&b2, BACKING_ANON_4K, 4 * 1024 * 1024), 0);
			f.mr.userspace_addr = b2.hva;
			f.mr.memory_size = 1024 * PAGE_SIZE;
			assert_int_equal(vm_set_user_memory_region(f.vm, &f.mr), 0);
			assert_true(vm_prefault_memory(f.vm, 0, SZ_2M, 1024 * PAGE_SIZE, PG_LEVEL_4K) > 0);
			for (p = 0; p < 3; p++)
				guest_write(&f, 512 + p, 1); /* D set before logging */
			fx_log(&f, true);
			assert_true(writable(&f, 512));
			assert_false(is_dirty_spte(leaf(&f, 512, &level)));
			guest_write(&f, 512 + 7, 7);
			assert_true(is_dirty_spte(leaf(&f, 519, &level)));
			/* 600 first writes: the 512-entry buffer fills and drains once. */
			vcpu_load(f.vcpu);
			for (p = 0; p < 600; p++)
				assert_int_equal(vcpu_write_u64(f.vcpu, (SZ_2M / PAGE_SIZE + 100 + p) * PAGE_SIZE, p), 0);
			dirty_log_get_stats(f.vm, &st);
			assert_int_equal(st.pml_flushes, 2); /* vcpu_put after page 519, then full */
			vcpu_put(f.vcpu);
			assert_int_equal(dirty_log_get(f.vm, 1, bm), 0);
			assert_int_equal(bm[0], 1ull << 7);
			for (p = 100; p < 700; p++)
				assert_true((bm[p / 64] >> (p % 64)) & 1);
			assert_true(writable(&f, 519));
			assert_false(is_dirty_spte(leaf(&f, 519, &level)));
			/* Huge mappings are still write-protected at enable, so they split. */
			f.mr.slot = 0;
			f.mr.guest_phys_addr = 0;
			f.mr.userspace_addr = f.b.hva;
			f.mr.memory_size = SZ_2M;
			fx_log(&f, true);
			assert_false(writable(&f, 3));
			guest_write(&f, 3, 3);
			assert_int_equal(leaf_level(&f, 3), PG_LEVEL_4K);
			assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
			assert_int_equal(bm[0], 1ull << 3);
			fx_fini(&f);
			backing_free(&b2);
		}
	}
}

/* Disable/enable cycles; disabling brings huge mappings back where the host has THPs. */
static void test_enable_disable_cycles(void **state)
{
	struct vm_config cfg;
	struct vm_memory_region mr = { 0 };
	struct mem_backing b;
	struct dirty_log_stats st;
	struct vm *vm;
	struct vcpu *v;
	uint64_t p, bm[DIV_ROUND_UP(4 * 512, 64)];
	int i, level;
	bool thp;

	vm_config_default(&cfg);
	assert_int_equal(vm_create(&cfg, &vm), 0);
	v = vm_get_vcpu(vm, 0);
	assert_int_equal(backing_alloc(&b, BACKING_THP, 4 * SZ_2M), 0);
	vm_register_backing(vm, &b);
	memset((void *)b.hva, 1, b.size);
	thp = host_mapping_level(&b, b.hva) == PG_LEVEL_2M;
	mr.memory_size = b.size;
	mr.userspace_addr = b.hva;
	assert_int_equal(vm_set_user_memory_region(vm, &mr), 0);
	for (i = 0; i < 6; i++) {
		mr.flags = KVM_MEM_LOG_DIRTY_PAGES;
		assert_int_equal(vm_set_user_memory_region(vm, &mr), 0);
		vcpu_load(v);
		for (p = 0; p < 4 * 512; p += 3)
			assert_int_equal(vcpu_write_u64(v, p * PAGE_SIZE, i), 0);
		vcpu_put(v);
		assert_int_equal(dirty_log_get(vm, 0, bm), 0);
		for (p = 0; p < 4 * 512; p++)
			assert_int_equal((bm[p / 64] >> (p % 64)) & 1, p % 3 == 0);
		assert_true(mmu_lookup_leaf(vm, 0, 3, &level) && level == PG_LEVEL_4K);
		mr.flags = 0;
		assert_int_equal(vm_set_user_memory_region(vm, &mr), 0);
		assert_int_equal(dirty_log_get(vm, 0, bm), -ENOENT);
		vcpu_load(v);
		assert_int_equal(vcpu_write_u64(v, 3 * PAGE_SIZE, i), 0);
		vcpu_put(v);
		if (thp)
			assert_true(mmu_lookup_leaf(vm, 0, 3, &level) && level == PG_LEVEL_2M);
	}
	dirty_log_get_stats(vm, &st);
	if (thp)
		assert_true(st.huge_recovered > 0);
	vm_destroy(vm);
	backing_free(&b);
}

/* Benchmark helper: injected writes are reported and re-protected like real ones. */
static void test_inject_and_walk(void **state)
{
	int a;

	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		struct dirty_log_config c;
		struct dirty_log_stats st;
		struct fx f;
		uint64_t bm[16], w, n = 0;

		cfg_algo(&c, a);
		fx_init(&f, NULL, 1024 * PAGE_SIZE, false);
		assert_int_equal(vm_configure_dirty_log(f.vm, &c), 0);
		fx_log(&f, true);
		assert_int_equal(dirty_log_inject_writes(f.vm, 0, 1, 100, 7), 100);
		assert_true(writable(&f, 8));
		assert_int_equal(dirty_log_get(f.vm, 0, bm), 0);
		for (w = 0; w < 16; w++)
			n += __builtin_popcountll(bm[w]);
		assert_int_equal(n, 100);
		assert_false(writable(&f, 8));
		dirty_log_get_stats(f.vm, &st);
		assert_int_equal(st.grace_periods, a == DIRTY_ALGO_WALK);
		assert_true(a != DIRTY_ALGO_WALK || st.walk_sptes >= 1024);
		assert_true(st.reprotected >= 100 && st.flushes >= 2);
		fx_fini(&f);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_enable_protects_all_levels),
		cmocka_unit_test(test_eager_split_at_enable),
		cmocka_unit_test(test_clear_rules),
		cmocka_unit_test(test_config_validation),
		cmocka_unit_test(test_initially_set),
		cmocka_unit_test(test_range_get_and_clear),
		cmocka_unit_test(test_dbit),
		cmocka_unit_test(test_enable_disable_cycles),
		cmocka_unit_test(test_inject_and_walk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
