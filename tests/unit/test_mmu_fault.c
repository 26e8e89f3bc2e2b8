/* test_mmu_fault.c: faults map at the right level for each backing and alignment; fast path; prefault. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "mmu/mmu_internal.h"

struct fixture {
	struct vm *vm;
	struct mem_backing b;
};

static struct vm *new_vm(int nr_vcpus)
{
	struct vm_config cfg;
	struct vm *vm;

	vm_config_default(&cfg);
	cfg.nr_vcpus = nr_vcpus;
	assert_int_equal(vm_create(&cfg, &vm), 0);
	return vm;
}

static int add_slot(struct vm *vm, int id, gpa_t gpa, uint64_t size, hva_t hva, uint32_t flags)
{
	struct vm_memory_region r = {
		.slot = (uint32_t)id, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = hva,
	};
	return vm_set_user_memory_region(vm, &r);
}

static int leaf_level(struct vm *vm, gpa_t gpa)
{
	int level = 0;

	if (!mmu_lookup_leaf(vm, 0, gpa >> PAGE_SHIFT, &level))
		return 0;
	return level;
}

static void test_4k_backing_maps_4k(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	uint64_t val;

	assert_int_equal(backing_alloc(&b, BACKING_ANON_4K, 8 * SZ_2M), 0);
	assert_int_equal(add_slot(vm, 0, 0, b.size, b.hva, 0), 0);
	vcpu_load(v);
	assert_int_equal(vcpu_write_u64(v, 0x1000, 0xabcd), 0);
	assert_int_equal(vcpu_read_u64(v, 0x1000, &val), 0);
	assert_int_equal(val, 0xabcd);
	assert_int_equal(*(uint64_t *)(b.hva + 0x1000), 0xabcd);
	assert_int_equal(leaf_level(vm, 0x1000), PG_LEVEL_4K);
	/* No slot: an MMIO exit. */
	assert_int_equal(vcpu_write_u64(v, 1ull << 40, 1), -EFAULT);
	vcpu_put(v);
	vm_destroy(vm);
	backing_free(&b);
}

static void test_thp_backing_maps_2m(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	int level;

	assert_int_equal(backing_alloc(&b, BACKING_THP, 8 * SZ_2M), 0);
	assert_int_equal(add_slot(vm, 0, 0, b.size, b.hva, 0), 0);
	vcpu_load(v);
	assert_int_equal(vcpu_write_u64(v, SZ_2M + 0x5000, 7), 0);
	vcpu_put(v);
	level = leaf_level(vm, SZ_2M + 0x5000);
	if (host_mapping_level(&b, b.hva + SZ_2M) < PG_LEVEL_2M) {
		assert_int_equal(level, PG_LEVEL_4K);
		vm_destroy(vm);
		backing_free(&b);
		TEST_SKIP("host did not back the range with a THP (THP off or no permission)");
	}
	assert_int_equal(level, PG_LEVEL_2M);
	vm_destroy(vm);
	backing_free(&b);
}

static void hugetlb_maps_level(enum backing_type type, int level, uint64_t size)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	int r = backing_alloc(&b, type, size);

	if (r == -EOPNOTSUPP) {
		vm_destroy(vm);
		TEST_SKIP("no hugetlbfs pages of %s on this host (see /proc/meminfo)",
			  backing_name(type));
	}
	assert_int_equal(r, 0);
	assert_int_equal(vm_register_backing(vm, &b), 0);
	assert_int_equal(add_slot(vm, 0, 0, b.size, b.hva, 0), 0);
	vcpu_load(v);
	r = vcpu_write_u64(v, 0x3000, 9);
	vcpu_put(v);
	if (r == -EFAULT) { /* reserved pages ran out between mmap and fault */
		vm_destroy(vm);
		backing_free(&b);
		TEST_SKIP("hugetlbfs pages of %s could not be populated", backing_name(type));
	}
	assert_int_equal(r, 0);
	assert_int_equal(leaf_level(vm, 0x3000), level);
	vm_destroy(vm);
	backing_free(&b);
}

static void test_hugetlb_2m(void **state)
{
	hugetlb_maps_level(BACKING_HUGETLB_2M, PG_LEVEL_2M, 2 * SZ_2M);
}

static void test_hugetlb_1g(void **state)
{
	hugetlb_maps_level(BACKING_HUGETLB_1G, PG_LEVEL_1G, SZ_1G);
}

static void test_unaligned_slot_never_huge(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	uint64_t off;

	assert_int_equal(backing_alloc(&b, BACKING_THP, 8 * SZ_2M), 0);
	/* gpa 2 MiB aligned, hva off by 4 KiB: not congruent, never huge. */
	assert_int_equal(add_slot(vm, 0, 0, 4 * SZ_2M, b.hva + PAGE_SIZE, 0), 0);
	vcpu_load(v);
	for (off = 0; off < 4 * SZ_2M; off += SZ_2M / 4)
		assert_int_equal(vcpu_write_u64(v, off, off), 0);
	vcpu_put(v);
	for (off = 0; off < 4 * SZ_2M; off += SZ_2M / 4)
		assert_int_equal(leaf_level(vm, off), PG_LEVEL_4K);
	vm_destroy(vm);
	backing_free(&b);
}

static void test_prefault_levels(void **state)
{
	struct vm *vm = new_vm(1);
	struct mem_backing b;
	struct vm_stats st;

	assert_int_equal(backing_alloc(&b, BACKING_THP, 4 * SZ_1G), 0);
	/* Slot starts one page below a 2 MiB boundary: head and tail frames are 4K. */
	assert_int_equal(add_slot(vm, 0, SZ_1G - PAGE_SIZE, SZ_1G + 2 * PAGE_SIZE,
				  b.hva + SZ_1G - PAGE_SIZE, 0), 0);
	assert_int_equal(vm_prefault_memory(vm, 0, SZ_1G - PAGE_SIZE, SZ_1G + 2 * PAGE_SIZE,
					    PG_LEVEL_1G), (int64_t)(SZ_1G + 2 * PAGE_SIZE));
	assert_int_equal(leaf_level(vm, SZ_1G - PAGE_SIZE), PG_LEVEL_4K);
	/* 1 GiB only where gpa and hva are congruent modulo 1 GiB. */
	bool congruent = IS_ALIGNED(b.hva, SZ_1G);
	assert_int_equal(leaf_level(vm, SZ_1G), congruent ? PG_LEVEL_1G : PG_LEVEL_2M);
	assert_int_equal(leaf_level(vm, 2 * SZ_1G), PG_LEVEL_4K);
	vm_get_stats(vm, &st);
	assert_int_equal(st.leaf_sptes[0], 2);
	assert_int_equal(st.leaf_sptes[1], congruent ? 0 : 512);
	assert_int_equal(st.leaf_sptes[2], congruent ? 1 : 0);
	/* Prefault outside any slot. */
	assert_int_equal(vm_prefault_memory(vm, 0, 8 * SZ_1G, PAGE_SIZE, 1), -ENOENT);
	/* Memory was not touched. */
	assert_int_equal(host_mapping_level(NULL, b.hva + SZ_1G), PG_LEVEL_4K);
	vm_destroy(vm);
	backing_free(&b);
}

static void test_fast_path_after_write_protect(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	struct vm_stats st;
	uint64_t val;

	assert_int_equal(backing_alloc(&b, BACKING_ANON_4K, SZ_2M), 0);
	assert_int_equal(add_slot(vm, 0, 0, b.size, b.hva, 0), 0);
	vcpu_load(v);
	assert_int_equal(vcpu_read_u64(v, 0x3000, &val), 0);
	vcpu_put(v);
	/* Turn logging on: the page is write-protected (state 110). */
	assert_int_equal(add_slot(vm, 0, 0, b.size, b.hva, KVM_MEM_LOG_DIRTY_PAGES), 0);
	vcpu_load(v);
	assert_int_equal(vcpu_write_u64(v, 0x3000, 5), 0);
	vcpu_put(v);
	vm_get_stats(vm, &st);
	assert_int_equal(st.faults_fast, 1);
	assert_int_equal(st.faults_slow, 1);
	{
		struct memslot *slot = vm_id_to_memslot(vm, 0, 0);

		assert_non_null(slot->dirty_bitmap);
		assert_true(slot->dirty_bitmap[0] & (1ull << 3));
	}
	vm_destroy(vm);
	backing_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_4k_backing_maps_4k),
		cmocka_unit_test(test_thp_backing_maps_2m),
		cmocka_unit_test(test_unaligned_slot_never_huge),
		cmocka_unit_test(test_hugetlb_2m),
		cmocka_unit_test(test_hugetlb_1g),
		cmocka_unit_test(test_prefault_levels),
		cmocka_unit_test(test_fast_path_after_write_protect),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
