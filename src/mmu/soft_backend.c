/* soft_backend.c: the dirty-tracking backend interface (backend.h) over a soft-MMU VM. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"
#include "rmapvm/backend.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/soft_vm.h"

struct soft_backend {
	struct backend be;
	struct soft_vm *svm;
	bool logging;		/* dirty_start() done */
	enum dirty_mode mode;
};

static struct soft_backend *to_sb(struct backend *be)
{
	return container_of(be, struct soft_backend, be);
}

static int sb_get_regions(struct backend *be, struct backend_region *regions, int max)
{
	struct vm *vm = soft_vm_vm(to_sb(be)->svm);
	struct memslots *slots;
	struct memslot *slot;
	int i, n;

	pthread_mutex_lock(&vm->slots_lock);
	slots = vm_memslots(vm, 0);
	n = slots->nr;
	for_each_memslot(slot, i, slots) {
		if (i >= max)
			break;
		regions[i].slot = slot->id;
		regions[i].gpa = gfn_to_gpa(slot->base_gfn);
		regions[i].size = slot->npages << PAGE_SHIFT;
		regions[i].hva = (uint8_t *)slot->userspace_addr;
	}
	pthread_mutex_unlock(&vm->slots_lock);
	return n;
}

static int sb_nr_vcpus(struct backend *be)
{
	return soft_vm_config(to_sb(be)->svm)->vcpus;
}

static int sb_pause(struct backend *be)
{
	vm_pause(soft_vm_vm(to_sb(be)->svm));
	return 0;
}

static int sb_resume(struct backend *be)
{
	vm_resume(soft_vm_vm(to_sb(be)->svm));
	return 0;
}

/* Turn KVM_MEM_LOG_DIRTY_PAGES on or off on every RAM slot. */
static int sb_set_logging(struct soft_backend *sb, bool on)
{
	struct vm *vm = soft_vm_vm(sb->svm);
	struct backend_region regions[64], *r;
	int n, i, err = 0;

	n = sb_get_regions(&sb->be, regions, (int)ARRAY_SIZE(regions));
	if (n > (int)ARRAY_SIZE(regions))
		return -E2BIG;
	for (i = 0; i < n; i++) {
		struct vm_memory_region mr;

		r = &regions[i];
		mr.slot = r->slot;
		mr.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0;
		mr.guest_phys_addr = r->gpa;
		mr.memory_size = r->size;
		mr.userspace_addr = (hva_t)r->hva;
		err = vm_set_user_memory_region(vm, &mr);
		if (err)
			break;
	}
	return err;
}

static int sb_dirty_start(struct backend *be, const struct dirty_config *cfg)
{
	struct soft_backend *sb = to_sb(be);
	struct vm *vm = soft_vm_vm(sb->svm);
	struct dirty_log_config dcfg;
	int r;

	if (sb->logging)
		return -EBUSY;
	vm_get_dirty_log_config(vm, &dcfg);
	dcfg.mode = cfg->mode == DIRTY_MODE_DBIT ? DIRTY_MODE_BITMAP : cfg->mode;
	dcfg.dbit = cfg->mode == DIRTY_MODE_DBIT;
	dcfg.initially_set = cfg->mode == DIRTY_MODE_MANUAL && cfg->initially_set;
	if (cfg->mode == DIRTY_MODE_RING)
		dcfg.ring_entries = cfg->ring_entries;
	r = vm_configure_dirty_log(vm, &dcfg);
	if (r)
		return r;
	r = sb_set_logging(sb, true);
	if (r) {
		sb_set_logging(sb, false);
		return r;
	}
	sb->logging = true;
	sb->mode = cfg->mode;
	return 0;
}

static int sb_dirty_stop(struct backend *be)
{
	struct soft_backend *sb = to_sb(be);
	int r;

	if (!sb->logging)
		return 0;
	r = sb_set_logging(sb, false);
	if (!r)
		sb->logging = false;
	return r;
}

static int sb_harvest_range(struct backend *be, uint32_t slot, uint64_t first_page,
			    uint64_t npages, uint64_t *bitmap)
{
	struct soft_backend *sb = to_sb(be);

	if (!sb->logging)
		return -ENOENT;
	return dirty_log_get_and_clear_range(soft_vm_vm(sb->svm), slot, first_page, npages,
					     bitmap);
}

static int sb_harvest_rings(struct backend *be, ring_entry_fn fn, void *opaque)
{
	struct soft_backend *sb = to_sb(be);
	struct vm *vm = soft_vm_vm(sb->svm);
	int i, r, total = 0;

	if (!sb->logging || sb->mode != DIRTY_MODE_RING)
		return -ENXIO;
	for (i = 0; i < vm_nr_vcpus(vm); i++) {
		r = dirty_ring_harvest(vm, i, fn, opaque);
		if (r < 0)
			return r;
		total += r;
	}
	r = dirty_ring_reset(vm);
	return r < 0 ? r : total;
}

static int sb_save_vcpu(struct backend *be, int vcpu, void *buf, size_t len, size_t *used)
{
	return soft_vm_save_vcpu(to_sb(be)->svm, vcpu, buf, len, used);
}

static int sb_load_vcpu(struct backend *be, int vcpu, const void *buf, size_t len)
{
	return soft_vm_load_vcpu(to_sb(be)->svm, vcpu, buf, len);
}

static int sb_throttle(struct backend *be, int pct)
{
	if (pct < 0 || pct > 99)
		return -EINVAL;
	soft_vm_set_throttle(to_sb(be)->svm, (uint32_t)pct);
	return 0;
}

static void sb_destroy(struct backend *be)
{
	free(to_sb(be));
}

static const struct backend_ops soft_backend_ops = {
	.name = "soft",
	.get_regions = sb_get_regions,
	.nr_vcpus = sb_nr_vcpus,
	.pause = sb_pause,
	.resume = sb_resume,
	.dirty_start = sb_dirty_start,
	.dirty_stop = sb_dirty_stop,
	.harvest_range = sb_harvest_range,
	.harvest_rings = sb_harvest_rings,
	.save_vcpu = sb_save_vcpu,
	.load_vcpu = sb_load_vcpu,
	.throttle = sb_throttle,
	.destroy = sb_destroy,
};

int soft_backend_create(struct soft_vm *svm, struct backend **out)
{
	struct soft_backend *sb = calloc(1, sizeof(*sb));

	if (!sb)
		return -ENOMEM;
	sb->svm = svm;
	sb->be.ops = &soft_backend_ops;
	sb->be.priv = svm;
	*out = &sb->be;
	return 0;
}
