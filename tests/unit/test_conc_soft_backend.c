/* test_conc_soft_backend.c: the backend interface over a running soft VM: ranged harvests copy every write. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#include "harness.h"
#include "rmapvm/backend.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

static struct soft_vm *new_svm(enum backing_type backing)
{
	struct soft_vm_config cfg = {
		.mem_bytes = 32ull << 20,
		.vcpus = 2,
		.slots = 3,
		.backing = backing,
	};
	struct soft_vm *svm;
	char err[64];

	assert_int_equal(workload_parse("random,write=90", &cfg.workload, err, sizeof(err)), 0);
	assert_int_equal(soft_vm_create(&cfg, &svm), 0);
	return svm;
}

struct ring_list {
	struct {
		uint32_t slot;
		uint64_t off;
	} *e;
	size_t n, cap;
};

static void collect_entry(void *opaque, uint32_t slot, uint64_t off)
{
	struct ring_list *rl = opaque;

	if (rl->n == rl->cap) {
		rl->cap = rl->cap ? 2 * rl->cap : 1024;
		rl->e = realloc(rl->e, rl->cap * sizeof(*rl->e));
	}
	rl->e[rl->n].slot = slot;
	rl->e[rl->n++].off = off;
}

/*
 * Copy a running VM into a second one with ranged harvests (pre-copy), then
 * pause, drain, move the vCPU state and compare memory: any write a harvest
 * missed leaves the copy different.
 */
static void copy_vm(enum dirty_mode mode, enum backing_type backing)
{
	struct soft_vm *src = new_svm(backing), *dst = new_svm(backing);
	struct backend *be, *dbe;
	struct backend_region reg[8], dreg[8];
	struct dirty_config dc = { .mode = mode, .ring_entries = 4096 };
	int n, i, round, v;
	uint64_t *bm;

	assert_int_equal(soft_backend_create(src, &be), 0);
	assert_int_equal(soft_backend_create(dst, &dbe), 0);
	n = be->ops->get_regions(be, reg, 8);
	assert_int_equal(n, 3);
	assert_int_equal(dbe->ops->get_regions(dbe, dreg, 8), 3);
	assert_int_equal(be->ops->dirty_start(be, &dc), 0);
	assert_int_equal(soft_vm_start(src), 0);
	/* Round 0: everything; later rounds: only what was harvested dirty. */
	for (i = 0; i < n; i++)
		guest_memcpy(dreg[i].hva, reg[i].hva, reg[i].size);
	bm = calloc(reg[0].size / PAGE_SIZE / 64 + 2, 8);
	for (round = 0; round < 6; round++) {
		if (round == 5)
			be->ops->pause(be);
		for (i = 0; i < n; i++) {
			uint64_t pages = reg[i].size / PAGE_SIZE, first, p;

			/* Four ranges per slot, harvested right before they are copied. */
			for (first = 0; first < pages; first += ALIGN_UP(pages / 4, 64)) {
				uint64_t cnt = MIN(ALIGN_UP(pages / 4, 64), pages - first);

				memset(bm, 0, (cnt / 64 + 1) * 8);
				if (mode == DIRTY_MODE_RING)
					break;
				assert_int_equal(be->ops->harvest_range(be, reg[i].slot, first, cnt, bm), 0);
				for (p = 0; p < cnt; p++)
					if (bm[p / 64] & (1ull << (p % 64)))
						guest_memcpy(dreg[i].hva + (first + p) * PAGE_SIZE,
						       reg[i].hva + (first + p) * PAGE_SIZE, PAGE_SIZE);
			}
		}
		if (mode == DIRTY_MODE_RING) {
			/* Collect, let harvest_rings reset (re-protect), then copy. */
			struct ring_list rl = { 0 };
			size_t k;

			assert_true(be->ops->harvest_rings(be, collect_entry, &rl) >= 0);
			for (k = 0; k < rl.n; k++)
				guest_memcpy(dreg[rl.e[k].slot].hva + rl.e[k].off * PAGE_SIZE,
				       reg[rl.e[k].slot].hva + rl.e[k].off * PAGE_SIZE, PAGE_SIZE);
			free(rl.e);
		}
		soft_vm_set_round(src, round + 2);
		if (round < 5) {
			struct timespec ts = { 0, 20 * 1000 * 1000 };

			nanosleep(&ts, NULL);
		}
	}
	for (v = 0; v < 2; v++) {
		uint8_t blob[512];
		size_t used;

		assert_int_equal(be->ops->save_vcpu(be, v, blob, sizeof(blob), &used), 0);
		assert_int_equal(dbe->ops->load_vcpu(dbe, v, blob, used), 0);
		blob[0] ^= 1;
		assert_int_equal(dbe->ops->load_vcpu(dbe, v, blob, used), -EINVAL);
	}
	for (i = 0; i < n; i++) {
		uint64_t p, bad = 0;

		for (p = 0; p < reg[i].size / PAGE_SIZE; p++) {
			if (!memcmp(dreg[i].hva + p * PAGE_SIZE, reg[i].hva + p * PAGE_SIZE, PAGE_SIZE))
				continue;
			if (!bad++)
				printf("# slot %d page %llu: copy %#llx, source %#llx\n", i,
				       (unsigned long long)p,
				       (unsigned long long)*(uint64_t *)(dreg[i].hva + p * PAGE_SIZE),
				       (unsigned long long)*(uint64_t *)(reg[i].hva + p * PAGE_SIZE));
		}
		if (bad)
			printf("# slot %d: %llu pages differ\n", i, (unsigned long long)bad);
		assert_int_equal(bad, 0);
	}
	soft_vm_stop(src);
	be->ops->resume(be);
	assert_int_equal(be->ops->dirty_stop(be), 0);
	/* The copy continues the workload and stays consistent. */
	assert_int_equal(soft_vm_start(dst), 0);
	{
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		char err[256];

		nanosleep(&ts, NULL);
		soft_vm_stop(dst);
		assert_int_equal(soft_vm_verify(dst, err, sizeof(err)), 0);
	}
	free(bm);
	be->ops->destroy(be);
	dbe->ops->destroy(dbe);
	soft_vm_destroy(src);
	soft_vm_destroy(dst);
}

static void test_copy_bitmap_4k(void **state)
{
	copy_vm(DIRTY_MODE_BITMAP, BACKING_ANON_4K);
}

static void test_copy_bitmap_thp(void **state)
{
	copy_vm(DIRTY_MODE_BITMAP, BACKING_THP);
}

static void test_copy_dbit(void **state)
{
	copy_vm(DIRTY_MODE_DBIT, BACKING_THP);
}

static void test_copy_dbit_4k(void **state)
{
	copy_vm(DIRTY_MODE_DBIT, BACKING_ANON_4K);
}

static void test_copy_ring(void **state)
{
	copy_vm(DIRTY_MODE_RING, BACKING_ANON_4K);
}

static void test_copy_manual(void **state)
{
	copy_vm(DIRTY_MODE_MANUAL, BACKING_THP);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_copy_bitmap_4k),
		cmocka_unit_test(test_copy_bitmap_thp),
		cmocka_unit_test(test_copy_dbit),
		cmocka_unit_test(test_copy_dbit_4k),
		cmocka_unit_test(test_copy_ring),
		cmocka_unit_test(test_copy_manual),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
