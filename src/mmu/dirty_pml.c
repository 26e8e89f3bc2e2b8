/* dirty_pml.c: D-bit logging (Intel PML's idea): per-vCPU 512-entry buffers of gfns whose D bit went 0->1. */
#include <errno.h>
#include <stdlib.h>

#include "dirty_internal.h"

int dirty_pml_alloc(struct vm *vm, struct dirty_log_vm *dl)
{
	int i;

	dl->pml = calloc(dl->nr_vcpus, sizeof(*dl->pml));
	if (!dl->pml)
		return -ENOMEM;
	for (i = 0; i < dl->nr_vcpus; i++) {
		struct pml_buffer *pml = calloc(1, sizeof(*pml));

		if (!pml)
			return -ENOMEM;
		pthread_mutex_init(&pml->lock, NULL);
		dl->pml[i] = pml;
		vm->vcpus[i]->pml = pml;
	}
	return 0;
}

void dirty_pml_free(struct vm *vm, struct dirty_log_vm *dl)
{
	int i;

	if (!dl->pml)
		return;
	for (i = 0; i < dl->nr_vcpus; i++) {
		if (vm)
			vm->vcpus[i]->pml = NULL;
		if (dl->pml[i]) {
			pthread_mutex_destroy(&dl->pml[i]->lock);
			free(dl->pml[i]);
		}
	}
	free(dl->pml);
	dl->pml = NULL;
}

/*
 * Move the buffered gfns to the bitmap or the vCPU's ring, oldest first.
 * Caller: the vCPU in a memslot read side, or a host thread holding
 * slots_lock; the buffer lock keeps the two from draining at once.
 */
void dirty_pml_drain(struct vm *vm, struct vcpu *vcpu)
{
	struct pml_buffer *pml = vcpu->pml;
	const struct memslots *slots;
	uint32_t i;

	if (!pml)
		return;
	pthread_mutex_lock(&pml->lock);
	if (pml->nr) {
		slots = vm_memslots(vm, vcpu->as_id);
		for (i = 0; i < pml->nr; i++) {
			const struct memslot *slot = memslots_find_gfn(slots, pml->gfns[i]);

			if (slot)
				mark_page_dirty_in_slot(vm, vcpu, slot, pml->gfns[i]);
		}
		dl_stat_add(vm, pml_entries, pml->nr);
		dl_stat_add(vm, pml_flushes, 1);
		pml->nr = 0;
	}
	pthread_mutex_unlock(&pml->lock);
}

void dirty_pml_sync(struct vm *vm)
{
	struct vcpu *vcpu;
	int i;

	for_each_vcpu(i, vcpu, vm)
		dirty_pml_drain(vm, vcpu);
}

/*
 * Walker hook (vCPU thread): @gfn's D bit went 0->1; ~0 means "drain now"
 * (a kick, vcpu_put). A full buffer drains at once, as a PML-full exit
 * would; draining never blocks (a full ring only raises a request).
 */
void vcpu_pml_log(struct vcpu *vcpu, gfn_t gfn)
{
	struct pml_buffer *pml = vcpu->pml;
	bool nested;

	if (!pml)
		return;
	if (gfn != ~(gfn_t)0) {
		bool full;

		pthread_mutex_lock(&pml->lock);
		pml->gfns[pml->nr++] = gfn;
		full = pml->nr == DIRTY_PML_ENTRIES;
		pthread_mutex_unlock(&pml->lock);
		if (!full)
			return;
	}
	/* Slot lookups need a memslot read side; the vCPU may already be in one. */
	nested = vcpu->srcu_seq & 1;
	if (!nested)
		vcpu_srcu_read_lock(vcpu);
	dirty_pml_drain(vcpu->vm, vcpu);
	if (!nested)
		vcpu_srcu_read_unlock(vcpu);
}
