/* rmap.c: rmap heads and pte_list_desc chains (add, remove, count, iterate) and the object caches. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rmapvm/rmap.h"

void mmu_memory_cache_init(struct mmu_memory_cache *mc, size_t obj_size)
{
	mc->obj_size = obj_size;
	mc->nobjs = 0;
}

int mmu_memory_cache_topup(struct mmu_memory_cache *mc, int min)
{
	if (min > MMU_CACHE_CAPACITY)
		min = MMU_CACHE_CAPACITY;
	while (mc->nobjs < min) {
		void *obj = aligned_alloc(64, mc->obj_size);

		if (!obj)
			return -ENOMEM;
		memset(obj, 0, mc->obj_size);
		mc->objects[mc->nobjs++] = obj;
	}
	return 0;
}

void *mmu_memory_cache_alloc(struct mmu_memory_cache *mc)
{
	assert(mc->nobjs > 0 && "mmu_memory_cache used without topup");
	return mc->objects[--mc->nobjs];
}

void mmu_memory_cache_put(struct mmu_memory_cache *mc, void *obj)
{
	if (mc->nobjs < MMU_CACHE_CAPACITY) {
		memset(obj, 0, mc->obj_size);
		mc->objects[mc->nobjs++] = obj;
	} else {
		free(obj);
	}
}

void mmu_memory_cache_free(struct mmu_memory_cache *mc)
{
	while (mc->nobjs)
		free(mc->objects[--mc->nobjs]);
}

static inline struct pte_list_desc *rmap_desc(uintptr_t val)
{
	return (struct pte_list_desc *)(val & ~RMAP_MANY);
}

unsigned int pte_list_add(struct mmu_memory_cache *mc, uint64_t *sptep, struct rmap_head *head)
{
	struct pte_list_desc *desc;
	unsigned int count;

	if (!head->val) {
		head->val = (uintptr_t)sptep;
		return 0;
	}
	if (!(head->val & RMAP_MANY)) {
		desc = mmu_memory_cache_alloc(mc);
		desc->sptes[0] = (uint64_t *)head->val;
		desc->sptes[1] = sptep;
		desc->spte_count = 2;
		desc->tail_count = 0;
		desc->more = NULL;
		head->val = (uintptr_t)desc | RMAP_MANY;
		return 1;
	}
	desc = rmap_desc(head->val);
	count = desc->spte_count + desc->tail_count;
	if (desc->spte_count == PTE_LIST_EXT) {
		struct pte_list_desc *n = mmu_memory_cache_alloc(mc);

		n->more = desc;
		n->tail_count = count;
		n->spte_count = 0;
		desc = n;
		head->val = (uintptr_t)desc | RMAP_MANY;
	}
	desc->sptes[desc->spte_count++] = sptep;
	return count;
}

int pte_list_remove(struct mmu_memory_cache *mc, uint64_t *sptep, struct rmap_head *head)
{
	struct pte_list_desc *head_desc, *desc;
	int i;

	if (!head->val)
		return -ENOENT;
	if (!(head->val & RMAP_MANY)) {
		if ((uint64_t *)head->val != sptep)
			return -ENOENT;
		head->val = 0;
		return 0;
	}
	head_desc = rmap_desc(head->val);
	for (desc = head_desc; desc; desc = desc->more) {
		for (i = 0; i < (int)desc->spte_count; i++) {
			if (desc->sptes[i] != sptep)
				continue;
			/* The head descriptor's last entry fills the hole. */
			desc->sptes[i] = head_desc->sptes[head_desc->spte_count - 1];
			head_desc->sptes[--head_desc->spte_count] = NULL;
			if (!head_desc->spte_count) {
				struct pte_list_desc *next = head_desc->more;

				head->val = next ? (uintptr_t)next | RMAP_MANY : 0;
				mmu_memory_cache_put(mc, head_desc);
			}
			return 0;
		}
	}
	return -ENOENT;
}

void pte_list_destroy(struct mmu_memory_cache *mc, struct rmap_head *head)
{
	struct pte_list_desc *desc, *next;

	if (head->val & RMAP_MANY) {
		for (desc = rmap_desc(head->val); desc; desc = next) {
			next = desc->more;
			mmu_memory_cache_put(mc, desc);
		}
	}
	head->val = 0;
}

unsigned int pte_list_count(const struct rmap_head *head)
{
	struct pte_list_desc *desc;

	if (!head->val)
		return 0;
	if (!(head->val & RMAP_MANY))
		return 1;
	desc = rmap_desc(head->val);
	return desc->spte_count + desc->tail_count;
}

unsigned int pte_list_desc_count(const struct rmap_head *head)
{
	unsigned int n = 0;
	struct pte_list_desc *desc;

	if (!(head->val & RMAP_MANY))
		return 0;
	for (desc = rmap_desc(head->val); desc; desc = desc->more)
		n++;
	return n;
}

uint64_t *rmap_get_first(const struct rmap_head *head, struct rmap_iterator *iter)
{
	if (!head->val)
		return NULL;
	if (!(head->val & RMAP_MANY)) {
		iter->desc = NULL;
		return (uint64_t *)head->val;
	}
	iter->desc = rmap_desc(head->val);
	iter->pos = 0;
	return iter->desc->sptes[0];
}

uint64_t *rmap_get_next(struct rmap_iterator *iter)
{
	if (!iter->desc)
		return NULL;
	if (++iter->pos < (int)iter->desc->spte_count)
		return iter->desc->sptes[iter->pos];
	iter->desc = iter->desc->more;
	if (!iter->desc)
		return NULL;
	iter->pos = 0;
	return iter->desc->sptes[0];
}
