/* test_memslot.c: memslot validation, lookups, 32764 slots, lpage rules and the slot rmap iterator. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "harness.h"
#include "mmu/mmu_internal.h"

static struct vm *new_vm(void)
{
	struct vm_config cfg;
	struct vm *vm;

	vm_config_default(&cfg);
	assert_int_equal(vm_create(&cfg, &vm), 0);
	return vm;
}

static int set_region(struct vm *vm, uint32_t slot, uint32_t flags, gpa_t gpa, uint64_t size,
		      hva_t hva)
{
	struct vm_memory_region r = { slot, flags, gpa, size, hva };

	return vm_set_user_memory_region(vm, &r);
}

static void test_validation(void **state)
{
	struct vm *vm = new_vm();
	hva_t hva = 0x7f0000000000ull;

	/* Alignment of gpa, size and hva. */
	assert_int_equal(set_region(vm, 0, 0, 0x1001, 0x1000, hva), -EINVAL);
	assert_int_equal(set_region(vm, 0, 0, 0x1000, 0x1001, hva), -EINVAL);
	assert_int_equal(set_region(vm, 0, 0, 0x1000, 0x1000, hva + 8), -EINVAL);
	/* Flags, ids and address spaces. */
	assert_int_equal(set_region(vm, 0, 1u << 5, 0, 0x1000, hva), -EINVAL);
	assert_int_equal(set_region(vm, KVM_USER_MEM_SLOTS, 0, 0, 0x1000, hva), -EINVAL);
	assert_int_equal(set_region(vm, 2u << 16, 0, 0, 0x1000, hva), -EINVAL);
	/* Size limit and gpa width. */
	assert_int_equal(set_region(vm, 0, 0, 0, (KVM_MEM_MAX_NR_PAGES + 1) << PAGE_SHIFT, hva),
			 -EINVAL);
	assert_int_equal(set_region(vm, 0, 0, 1ull << 52, 0x1000, hva), -EINVAL);
	/* hva range must not wrap. */
	assert_int_equal(set_region(vm, 0, 0, 0, 0x2000, ~0ull & PAGE_MASK), -EINVAL);
	/* Deleting a slot that does not exist. */
	assert_int_equal(set_region(vm, 3, 0, 0, 0, 0), -EINVAL);

	assert_int_equal(set_region(vm, 0, 0, 0x100000, 0x10000, hva), 0);
	/* Overlap in the same address space, partial and total. */
	assert_int_equal(set_region(vm, 1, 0, 0x10f000, 0x2000, hva), -EEXIST);
	assert_int_equal(set_region(vm, 1, 0, 0x0, 0x200000, hva), -EEXIST);
	/* Adjacent is fine; the other address space is independent. */
	assert_int_equal(set_region(vm, 1, 0, 0x110000, 0x1000, hva), 0);
	assert_int_equal(set_region(vm, (1u << 16) | 0, 0, 0x100000, 0x10000, hva), 0);
	/* Changing gpa and size at once, hva, or READONLY: -EINVAL. */
	assert_int_equal(set_region(vm, 0, 0, 0x200000, 0x20000, hva), -EINVAL);
	assert_int_equal(set_region(vm, 0, 0, 0x100000, 0x10000, hva + 0x1000), -EINVAL);
	assert_int_equal(set_region(vm, 0, KVM_MEM_READONLY, 0x100000, 0x10000, hva), -EINVAL);
	/* Move onto another slot: -EEXIST; elsewhere: fine. */
	assert_int_equal(set_region(vm, 0, 0, 0x108000, 0x10000, hva), -EEXIST);
	assert_int_equal(set_region(vm, 0, 0, 0x400000, 0x10000, hva), 0);
	assert_null(memslots_find_gfn(vm_memslots(vm, 0), 0x100));
	assert_non_null(memslots_find_gfn(vm_memslots(vm, 0), 0x400));
	/* Flags-only change keeps the slot. */
	assert_int_equal(set_region(vm, 0, KVM_MEM_LOG_DIRTY_PAGES, 0x400000, 0x10000, hva), 0);
	assert_int_equal(vm_id_to_memslot(vm, 0, 0)->flags, KVM_MEM_LOG_DIRTY_PAGES);
	/* Delete. */
	assert_int_equal(set_region(vm, 0, 0, 0x400000, 0, hva), 0);
	assert_null(vm_id_to_memslot(vm, 0, 0));
	vm_destroy(vm);
}

static void test_lookup_edges_and_many_slots(void **state)
{
	struct vm *vm = new_vm();
	int nr = KVM_USER_MEM_SLOTS, i;
	hva_t hva = 0x7e0000000000ull;
	struct memslots *slots;

	/* 32764 slots of 2 pages each with a 1-page hole between them. */
	for (i = 0; i < nr; i++)
		assert_int_equal(set_region(vm, i, 0, (gpa_t)i * 3 * PAGE_SIZE, 2 * PAGE_SIZE,
					    hva + (hva_t)i * 2 * PAGE_SIZE), 0);
	assert_int_equal(set_region(vm, nr, 0, (gpa_t)nr * 3 * PAGE_SIZE, PAGE_SIZE, hva), -EINVAL);
	slots = vm_memslots(vm, 0);
	assert_int_equal(slots->nr, nr);
	for (i = 0; i < nr; i += 97) {
		gfn_t base = (gfn_t)i * 3;

		assert_int_equal(memslots_find_gfn(slots, base)->id, i);
		assert_int_equal(memslots_find_gfn(slots, base + 1)->id, i);
		assert_null(memslots_find_gfn(slots, base + 2));
	}
	assert_null(memslots_find_gfn(slots, (gfn_t)nr * 3));
	/* hva interval: two slots' worth starting mid-slot 100 hits slots 100..101. */
	{
		struct memslot_hva_iter it;
		struct memslot *s;
		int seen = 0;

		for_each_memslot_in_hva_range(s, &it, slots, hva + 201 * PAGE_SIZE,
					      hva + 203 * PAGE_SIZE) {
			assert_true(s->id == 100 || s->id == 101);
			seen++;
		}
		assert_int_equal(seen, 2);
	}
	/* Delete every other slot, then look up again. */
	for (i = 0; i < nr; i += 2)
		assert_int_equal(set_region(vm, i, 0, (gpa_t)i * 3 * PAGE_SIZE, 0, 0), 0);
	slots = vm_memslots(vm, 0);
	assert_int_equal(slots->nr, nr / 2);
	assert_null(memslots_find_gfn(slots, 0));
	assert_int_equal(memslots_find_gfn(slots, 3)->id, 1);
	vm_destroy(vm);
}

static void test_hva_aliases(void **state)
{
	struct vm *vm = new_vm();
	hva_t hva = 0x7d0000000000ull;
	struct memslot_hva_iter it;
	struct memslot *s;
	int seen = 0;

	/* A big slot first in hva order, and small ones after: max-end search finds it. */
	assert_int_equal(set_region(vm, 0, 0, 0, 0x100000, hva), 0);
	assert_int_equal(set_region(vm, 1, 0, 0x100000, 0x1000, hva + 0x10000), 0);
	assert_int_equal(set_region(vm, 2, 0, 0x200000, 0x1000, hva + 0x20000), 0);
	for_each_memslot_in_hva_range(s, &it, vm_memslots(vm, 0), hva + 0x20000, hva + 0x20001)
		seen |= 1 << s->id;
	assert_int_equal(seen, 0x5);
	seen = 0;
	for_each_memslot_in_hva_range(s, &it, vm_memslots(vm, 0), hva + 0x100000, hva + 0x200000)
		seen |= 1 << s->id;
	assert_int_equal(seen, 0);
	vm_destroy(vm);
}

static void test_lpage_info_and_sizes(void **state)
{
	struct vm *vm = new_vm();
	struct memslot *slot;

	/* base gfn 0x3ff, 2 pages: two partial 2M frames, one 1G frame. */
	assert_int_equal(set_region(vm, 0, 0, 0x3ffull << PAGE_SHIFT, 2 * PAGE_SIZE,
				    0x7c0000000000ull + (0x3ffull << PAGE_SHIFT)), 0);
	slot = vm_id_to_memslot(vm, 0, 0);
	assert_int_equal(memslot_level_entries(slot, 1), 2);
	assert_int_equal(memslot_level_entries(slot, 2), 2);
	assert_int_equal(memslot_level_entries(slot, 3), 1);
	assert_int_equal(*lpage_disallowed(0x3ff, 2, slot), 1);
	assert_int_equal(*lpage_disallowed(0x400, 2, slot), 1);
	assert_int_equal(*lpage_disallowed(0x3ff, 3, slot), 1);

	/* Aligned slot of 4 MiB + 1 page with congruent hva: frames 0,1 allowed, 2 not. */
	assert_int_equal(set_region(vm, 1, 0, SZ_1G, 2 * SZ_2M + PAGE_SIZE,
				    0x7c0000000000ull + SZ_1G), 0);
	slot = vm_id_to_memslot(vm, 0, 1);
	assert_int_equal(*lpage_disallowed(slot->base_gfn, 2, slot), 0);
	assert_int_equal(*lpage_disallowed(slot->base_gfn + 512, 2, slot), 0);
	assert_int_equal(*lpage_disallowed(slot->base_gfn + 1024, 2, slot), 1);
	assert_int_equal(*lpage_disallowed(slot->base_gfn, 3, slot), 1);

	/* gpa/hva not congruent mod 2M: every frame disallowed. */
	assert_int_equal(set_region(vm, 2, 0, 2 * SZ_1G, 4 * SZ_2M,
				    0x7c0000000000ull + 2 * SZ_1G + PAGE_SIZE), 0);
	slot = vm_id_to_memslot(vm, 0, 2);
	for (int i = 0; i < 4; i++)
		assert_int_equal(*lpage_disallowed(slot->base_gfn + i * 512, 2, slot), 1);
	vm_destroy(vm);
}

/* The iterator visits exactly the (gfn, level, spte) triples that are mapped. */
static void test_slot_rmap_walk(void **state)
{
	struct vm *vm = new_vm();
	struct mem_backing b;
	struct memslot *slot;
	struct slot_rmap_walk_iterator it;
	int n4k = 0, n2m = 0;
	gfn_t base;

	assert_int_equal(backing_alloc(&b, BACKING_THP, 8 * SZ_2M), 0);
	/* Slot from 1 page below a 2M boundary: frame 0 partial (4K), frames 1-2 huge, tail 4K. */
	base = 512 - 1;
	assert_int_equal(set_region(vm, 0, 0, base << PAGE_SHIFT, 2 * SZ_2M + 2 * PAGE_SIZE,
				    b.hva + (base << PAGE_SHIFT)), 0);
	slot = vm_id_to_memslot(vm, 0, 0);
	assert_int_equal(vm_prefault_memory(vm, 0, base << PAGE_SHIFT, 2 * SZ_2M + 2 * PAGE_SIZE,
					    PG_LEVEL_2M), 2 * SZ_2M + 2 * PAGE_SIZE);
	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_1G, slot->base_gfn,
				 slot->base_gfn + slot->npages - 1, &it) {
		struct rmap_iterator iter;
		uint64_t *sptep;
		int level;

		for_each_rmap_spte(it.rmap, &iter, sptep) {
			assert_ptr_equal(mmu_lookup_leaf(vm, 0, it.gfn, &level), sptep);
			assert_int_equal(level, it.level);
			if (it.level == 1) {
				/* head page 511 and tail page 1536 */
				assert_true(it.gfn == base || it.gfn == base + 1025);
				n4k++;
			} else {
				assert_int_equal(it.level, 2);
				assert_true(it.gfn == 512 || it.gfn == 1024);
				n2m++;
			}
		}
	}
	assert_int_equal(n4k, 2);
	assert_int_equal(n2m, 2);

	/* A sub-range: gfns [600, 1100] touch frames 1 and 2 at 2M, nothing at 4K. */
	n2m = 0;
	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_1G, 600, 1100, &it) {
		assert_int_equal(it.level, 2);
		assert_true(it.gfn == 600 || it.gfn == 1024);
		n2m++;
	}
	assert_int_equal(n2m, 2);

	/* Delete zaps every mapping. */
	assert_int_equal(set_region(vm, 0, 0, base << PAGE_SHIFT, 0, 0), 0);
	{
		struct vm_stats st;
		int level;

		vm_get_stats(vm, &st);
		assert_int_equal(st.leaf_sptes[0] + st.leaf_sptes[1] + st.leaf_sptes[2], 0);
		assert_null(mmu_lookup_leaf(vm, 0, 600, &level));
		assert_int_equal(st.mmu_pages, 2); /* just the two roots */
	}
	vm_destroy(vm);
	backing_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_validation),
		cmocka_unit_test(test_lookup_edges_and_many_slots),
		cmocka_unit_test(test_hva_aliases),
		cmocka_unit_test(test_lpage_info_and_sizes),
		cmocka_unit_test(test_slot_rmap_walk),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
