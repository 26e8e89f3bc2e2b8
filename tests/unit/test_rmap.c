/* test_rmap.c: rmap heads and pte_list_desc chains against a model; rmap iterators. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rmapvm/rmap.h"

#define NSPTES 200

/* Model: the set of sptes on the head, as a presence array. */
static void check_against_model(const struct rmap_head *head, const bool *model, uint64_t *sptes)
{
	struct rmap_iterator iter;
	bool seen[NSPTES] = { false };
	unsigned int count = 0, expected = 0;
	uint64_t *sptep;
	int i;

	for_each_rmap_spte(head, &iter, sptep) {
		int idx = (int)(sptep - sptes);

		assert_true(idx >= 0 && idx < NSPTES);
		assert_false(seen[idx]);	/* each entry once */
		assert_true(model[idx]);	/* only entries that were added */
		seen[idx] = true;
		count++;
	}
	for (i = 0; i < NSPTES; i++)
		expected += model[i];
	assert_int_equal(count, expected);
	assert_int_equal(pte_list_count(head), expected);
	/* Encoding: empty, single pointer, or a chain whose tails are full. */
	if (expected == 0)
		assert_int_equal(head->val, 0);
	if (head->val & RMAP_MANY) {
		struct pte_list_desc *d = (struct pte_list_desc *)(head->val & ~RMAP_MANY);
		unsigned int tail = d->tail_count;

		assert_true(d->spte_count >= 1 && d->spte_count <= PTE_LIST_EXT);
		for (d = d->more; d; d = d->more) {
			assert_int_equal(d->spte_count, PTE_LIST_EXT);
			assert_int_equal(d->tail_count + PTE_LIST_EXT, tail);
			tail = d->tail_count;
		}
		assert_int_equal(tail, 0);
	}
}

static void test_rmap_random_against_model(void **state)
{
	static uint64_t sptes[NSPTES];
	struct mmu_memory_cache mc;
	struct rmap_head head = { 0 };
	bool model[NSPTES] = { false };
	uint64_t rng = 42;
	int step, i, steps = 20000 / test_scale();

	mmu_memory_cache_init(&mc, sizeof(struct pte_list_desc));
	for (step = 0; step < steps; step++) {
		int idx = (int)(test_rand(&rng) % NSPTES);
		/* Bias towards growing, then shrinking, to pass every transition many times. */
		bool grow = (step / 2000) % 2 == 0 ? test_rand(&rng) % 4 != 0 : test_rand(&rng) % 4 == 0;

		assert_int_equal(mmu_memory_cache_topup(&mc, 4), 0);
		if (grow && !model[idx]) {
			unsigned int before = pte_list_count(&head);

			assert_int_equal(pte_list_add(&mc, &sptes[idx], &head), before);
			model[idx] = true;
		} else if (!grow && model[idx]) {
			assert_int_equal(pte_list_remove(&mc, &sptes[idx], &head), 0);
			model[idx] = false;
		} else if (!grow) {
			assert_int_equal(pte_list_remove(&mc, &sptes[idx], &head), -ENOENT);
		}
		check_against_model(&head, model, sptes);
	}
	pte_list_destroy(&mc, &head);
	assert_int_equal(pte_list_count(&head), 0);
	for (i = 0; i < NSPTES; i++)
		model[i] = false;
	check_against_model(&head, model, sptes);
	mmu_memory_cache_free(&mc);
}

static void test_rmap_transitions(void **state)
{
	static uint64_t sptes[40];
	struct mmu_memory_cache mc;
	struct rmap_head head = { 0 };
	int i;

	mmu_memory_cache_init(&mc, sizeof(struct pte_list_desc));
	assert_int_equal(mmu_memory_cache_topup(&mc, 8), 0);
	pte_list_add(&mc, &sptes[0], &head);
	assert_int_equal(head.val, (uintptr_t)&sptes[0]); /* single: the pointer itself */
	pte_list_add(&mc, &sptes[1], &head);
	assert_true(head.val & RMAP_MANY);
	for (i = 2; i < 29; i++)
		pte_list_add(&mc, &sptes[i], &head);
	assert_int_equal(pte_list_count(&head), 29);
	assert_int_equal(pte_list_desc_count(&head), 3); /* 14 + 14 + 1 */
	/* Removing from a tail descriptor moves the head's last entry into the hole. */
	assert_int_equal(pte_list_remove(&mc, &sptes[0], &head), 0);
	assert_int_equal(pte_list_desc_count(&head), 2); /* the 1-entry head emptied */
	assert_int_equal(pte_list_count(&head), 28);
	/* Down to one entry: stays a chain (no fall back to single). */
	for (i = 1; i < 28; i++)
		assert_int_equal(pte_list_remove(&mc, &sptes[i], &head), 0);
	assert_int_equal(pte_list_count(&head), 1);
	assert_true(head.val & RMAP_MANY);
	assert_int_equal(pte_list_remove(&mc, &sptes[28], &head), 0);
	assert_int_equal(head.val, 0);
	/* Single-entry mismatch. */
	pte_list_add(&mc, &sptes[5], &head);
	assert_int_equal(pte_list_remove(&mc, &sptes[6], &head), -ENOENT);
	assert_int_equal(pte_list_remove(&mc, &sptes[5], &head), 0);
	mmu_memory_cache_free(&mc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rmap_transitions),
		cmocka_unit_test(test_rmap_random_against_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
