/* kvm_backend.c: the dirty-tracking backend interface (backend.h) over a real KVM VM. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvm_internal.h"

static struct kvm_vm *to_vm(struct backend *be)
{
	return be->priv;
}

static int kb_get_regions(struct backend *be, struct backend_region *regions, int max)
{
	struct kvm_vm *vm = to_vm(be);
	int i;

	for (i = 0; i < vm->nr_slots && i < max; i++) {
		struct kvm_memslot *s = vm->slots[i];

		regions[i].slot = s->id;
		regions[i].gpa = s->gpa;
		regions[i].size = s->npages << PAGE_SHIFT;
		regions[i].hva = s->hva;
	}
	return vm->nr_slots;
}

static int kb_nr_vcpus(struct backend *be)
{
	return to_vm(be)->nr_vcpus;
}

static int kb_pause(struct backend *be)
{
	return kvm_vm_pause(to_vm(be));
}

static int kb_resume(struct backend *be)
{
	return kvm_vm_resume(to_vm(be));
}

static int kb_dirty_start(struct backend *be, const struct dirty_config *cfg)
{
	return kvm_vm_dirty_start(to_vm(be), cfg);
}

static int kb_dirty_stop(struct backend *be)
{
	return kvm_vm_dirty_stop(to_vm(be));
}

static int kb_harvest_range(struct backend *be, uint32_t slot, uint64_t first_page,
			    uint64_t npages, uint64_t *bitmap)
{
	return kvm_vm_harvest_range(to_vm(be), slot, first_page, npages, bitmap);
}

static int kb_harvest_rings(struct backend *be, ring_entry_fn fn, void *opaque)
{
	int r = kvm_vm_harvest_rings(to_vm(be), fn, opaque);

	return r < 0 ? r : 0;
}

static int kb_save_vcpu(struct backend *be, int vcpu, void *buf, size_t len, size_t *used)
{
	struct kvm_vcpu_state *st;
	int r;

	if (len < sizeof(*st))
		return -ENOSPC;
	st = malloc(sizeof(*st));
	if (!st)
		return -ENOMEM;
	r = kvm_vcpu_save_state(to_vm(be), vcpu, st);
	if (!r) {
		memcpy(buf, st, sizeof(*st));
		*used = sizeof(*st);
	}
	free(st);
	return r;
}

static int kb_load_vcpu(struct backend *be, int vcpu, const void *buf, size_t len)
{
	struct kvm_vcpu_state *st;
	int r;

	if (len != sizeof(*st))
		return -EINVAL;
	st = malloc(sizeof(*st));
	if (!st)
		return -ENOMEM;
	memcpy(st, buf, sizeof(*st));
	r = kvm_vcpu_load_state(to_vm(be), vcpu, st);
	free(st);
	return r;
}

static int kb_throttle(struct backend *be, int pct)
{
	return kvm_vm_throttle(to_vm(be), pct);
}

static void kb_destroy(struct backend *be)
{
	kvm_vm_destroy(to_vm(be));
	be->priv = NULL;
}

static const struct backend_ops kvm_backend_ops = {
	.name = "kvm",
	.get_regions = kb_get_regions,
	.nr_vcpus = kb_nr_vcpus,
	.pause = kb_pause,
	.resume = kb_resume,
	.dirty_start = kb_dirty_start,
	.dirty_stop = kb_dirty_stop,
	.harvest_range = kb_harvest_range,
	.harvest_rings = kb_harvest_rings,
	.save_vcpu = kb_save_vcpu,
	.load_vcpu = kb_load_vcpu,
	.throttle = kb_throttle,
	.destroy = kb_destroy,
};

void kvm_backend_init(struct backend *be, struct kvm_vm *vm)
{
	be->ops = &kvm_backend_ops;
	be->priv = vm;
}
