/* test_conc_faults.c: vCPUs faulting the same and different pages at once, both mmu_lock modes. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mmu/mmu_internal.h"

#define NR_VCPUS 4

struct conc {
	struct vm *vm;
	struct mem_backing b;
	uint64_t pages;
	bool shared_pages;	/* all vCPUs hit the same pages (else disjoint quarters) */
	int errors;
};

struct worker {
	struct conc *c;
	int id;
};

static void *worker(void *arg)
{
	struct worker *w = arg;
	struct conc *c = w->c;
	struct vcpu *vcpu = vm_get_vcpu(c->vm, w->id);
	uint64_t per = c->shared_pages ? c->pages : c->pages / NR_VCPUS;
	uint64_t base = c->shared_pages ? 0 : per * w->id, rng = w->id + 1, i, v;

	vcpu_load(vcpu);
	for (i = 0; i < per * 2; i++) {
		uint64_t page = base + test_rand(&rng) % per;
		gpa_t gpa = page * PAGE_SIZE + 8 * (uint64_t)w->id;

		if (vcpu_write_u64(vcpu, gpa, page << 8 | w->id) ||
		    vcpu_read_u64(vcpu, gpa, &v) || v != (page << 8 | w->id))
			__atomic_fetch_add(&c->errors, 1, __ATOMIC_RELAXED);
	}
	vcpu_put(vcpu);
	return NULL;
}

/* Every leaf is on exactly the rmap of its gfn and level. */
static void check_rmaps(struct vm *vm)
{
	struct memslot *slot = vm_id_to_memslot(vm, 0, 0);
	struct slot_rmap_walk_iterator it;
	uint64_t on_rmaps = 0, leaves;
	struct vm_stats st;

	for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_1G, slot->base_gfn,
				 slot->base_gfn + slot->npages - 1, &it) {
		struct rmap_iterator iter;
		uint64_t *sptep;
		int level;

		for_each_rmap_spte(it.rmap, &iter, sptep) {
			assert_ptr_equal(mmu_lookup_leaf(vm, 0, it.gfn, &level), sptep);
			assert_int_equal(level, it.level);
			on_rmaps++;
		}
	}
	vm_get_stats(vm, &st);
	leaves = st.leaf_sptes[0] + st.leaf_sptes[1] + st.leaf_sptes[2];
	assert_int_equal(on_rmaps, leaves);
}

static void run(enum mmu_lock_mode mode, enum backing_type type, bool shared_pages)
{
	struct conc c = { .shared_pages = shared_pages };
	struct worker w[NR_VCPUS];
	pthread_t th[NR_VCPUS];
	struct vm_config cfg;
	struct vm_memory_region r = { 0 };
	int i;

	vm_config_default(&cfg);
	cfg.nr_vcpus = NR_VCPUS;
	cfg.lock_mode = mode;
	assert_int_equal(vm_create(&cfg, &c.vm), 0);
	assert_int_equal(backing_alloc(&c.b, type, 16 * SZ_2M), 0);
	vm_register_backing(c.vm, &c.b);
	c.pages = c.b.size / PAGE_SIZE / test_scale();
	r.memory_size = c.b.size;
	r.userspace_addr = c.b.hva;
	assert_int_equal(vm_set_user_memory_region(c.vm, &r), 0);
	for (i = 0; i < NR_VCPUS; i++) {
		w[i].c = &c;
		w[i].id = i;
		pthread_create(&th[i], NULL, worker, &w[i]);
	}
	/* Meanwhile the host turns logging on and off (write-protect + flush). */
	for (i = 0; i < 20; i++) {
		r.flags = i % 2 ? 0 : KVM_MEM_LOG_DIRTY_PAGES;
		assert_int_equal(vm_set_user_memory_region(c.vm, &r), 0);
	}
	for (i = 0; i < NR_VCPUS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(c.errors, 0);
	check_rmaps(c.vm);
	vm_destroy(c.vm);
	backing_free(&c.b);
}

static void test_exclusive_same_pages(void **state)
{
	run(MMU_LOCK_EXCLUSIVE, BACKING_ANON_4K, true);
}

static void test_exclusive_disjoint_thp(void **state)
{
	run(MMU_LOCK_EXCLUSIVE, BACKING_THP, false);
}

static void test_shared_same_pages(void **state)
{
	run(MMU_LOCK_SHARED, BACKING_ANON_4K, true);
}

static void test_shared_same_pages_thp(void **state)
{
	run(MMU_LOCK_SHARED, BACKING_THP, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exclusive_same_pages),
		cmocka_unit_test(test_exclusive_disjoint_thp),
		cmocka_unit_test(test_shared_same_pages),
		cmocka_unit_test(test_shared_same_pages_thp),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
