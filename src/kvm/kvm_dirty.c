/* kvm_dirty.c: the kernel's dirty-logging modes: classic GET_DIRTY_LOG, manual protect + ranged CLEAR, dirty rings. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm_internal.h"

/*
 * Harvest contract (backend.h): the caller gets the dirty bits of a range
 * and those pages are write-protected again before the call returns, so
 * any later guest write is reported by a later harvest. How each mode keeps
 * it (KVM-MMU.md 3.4-3.6):
 *
 *  bitmap  KVM_GET_DIRTY_LOG gets and clears (xchg + re-protect) the whole
 *          slot. A ranged harvest therefore parks the bits outside its range
 *          in slot->pending and hands them to whoever asks for that range
 *          next: a fetched bit is never dropped.
 *  manual  KVM_GET_DIRTY_LOG only copies; KVM_CLEAR_DIRTY_LOG then clears and
 *          re-protects exactly the bits we fetched in [first, first + n)
 *          (first a multiple of 64; n too unless the range ends the slot).
 *          We never clear a bit we did not fetch: a bit set between GET and
 *          CLEAR stays set for the next harvest.
 *  ring    entries are read in ring order (flags with acquire), marked RESET
 *          (release), then KVM_RESET_DIRTY_RINGS re-protects them.
 *
 * Pages the VMM wrote itself (kvm_vm_write_guest) are not seen by KVM; they
 * sit in slot->host_dirty and every mode reports them too.
 */

static uint64_t *bitmap_alloc(uint64_t npages)
{
	return calloc(bitmap_words(npages), sizeof(uint64_t));
}

void kvm_dirty_mark_host(struct kvm_vm *vm, gpa_t gpa, size_t len)
{
	gfn_t gfn, end = gpa_to_gfn(gpa + len - 1);
	int i;

	if (!len)
		return;
	for (i = 0; i < vm->nr_slots; i++) {
		struct kvm_memslot *s = vm->slots[i];

		for (gfn = gpa_to_gfn(gpa); gfn <= end; gfn++) {
			uint64_t off = gfn - gpa_to_gfn(s->gpa);

			if (gfn < gpa_to_gfn(s->gpa) || off >= s->npages)
				continue;
			pthread_mutex_lock(&s->lock);
			if (!s->host_dirty)
				s->host_dirty = bitmap_alloc(s->npages);
			if (s->host_dirty)
				__atomic_fetch_or(&s->host_dirty[off / 64], 1ull << (off % 64),
						  __ATOMIC_RELAXED);
			pthread_mutex_unlock(&s->lock);
		}
	}
}

void kvm_dirty_free(struct kvm_vm *vm)
{
	int i;

	for (i = 0; i < vm->nr_slots; i++) {
		free(vm->slots[i]->pending);
		free(vm->slots[i]->host_dirty);
		vm->slots[i]->pending = vm->slots[i]->host_dirty = NULL;
	}
}

/* Move host-dirty bits of [first, first + n) into @out (OR); caller holds s->lock. */
static void take_host_dirty(struct kvm_memslot *s, uint64_t first, uint64_t n, uint64_t *out)
{
	uint64_t w, words = bitmap_words(n);

	if (!s->host_dirty)
		return;
	for (w = 0; w < words; w++) {
		out[w] |= s->host_dirty[first / 64 + w];
		s->host_dirty[first / 64 + w] = 0;
	}
}

/* Zero the bits of the last word past @n. */
static void mask_tail(uint64_t *bm, uint64_t n)
{
	if (n % 64)
		bm[n / 64] &= (1ull << (n % 64)) - 1;
}

static int get_dirty_log(struct kvm_vm *vm, struct kvm_memslot *s, uint64_t *bm)
{
	struct kvm_dirty_log log = { .slot = s->id, .dirty_bitmap = bm };

	if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log)) {
		int r = -errno;

		kvm_vm_set_error(vm, "KVM_GET_DIRTY_LOG(slot %u): %s", s->id, strerror(-r));
		return r;
	}
	return 0;
}

int kvm_vm_dirty_start(struct kvm_vm *vm, const struct dirty_config *cfg)
{
	int i, r = 0;

	pthread_mutex_lock(&vm->dirty_lock);
	if (vm->logging) {
		kvm_vm_set_error(vm, "dirty logging is already on");
		r = -EBUSY;
		goto out;
	}
	switch (cfg->mode) {
	case DIRTY_MODE_BITMAP:
	case DIRTY_MODE_MANUAL:
		if (vm->cfg.ring_entries && !vm->caps.ring_with_bitmap) {
			kvm_vm_set_error(vm, "%s mode: this VM has a dirty ring and the kernel lacks "
					     "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP",
					 dirty_mode_name(cfg->mode));
			r = -EOPNOTSUPP;
			goto out;
		}
		if (cfg->mode == DIRTY_MODE_BITMAP)
			break;
		if (!(vm->caps.manual_protect & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) ||
		    (cfg->initially_set &&
		     !(vm->caps.manual_protect & KVM_DIRTY_LOG_INITIALLY_SET))) {
			kvm_vm_set_error(vm, "manual mode%s: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 offers "
					     "flags 0x%x",
					 cfg->initially_set ? " with INITIALLY_SET" : "",
					 vm->caps.manual_protect);
			r = -EOPNOTSUPP;
			goto out;
		}
		r = kvm_vm_enable_cap(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
				      KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
					      (cfg->initially_set ? KVM_DIRTY_LOG_INITIALLY_SET : 0));
		if (r)
			goto out;
		vm->manual_enabled = true;
		break;
	case DIRTY_MODE_RING:
		if (!vm->cfg.ring_entries) {
			kvm_vm_set_error(vm, "ring mode: the VM was created without a dirty ring "
					     "(ring_entries = 0); KVM only enables rings before the "
					     "first vCPU exists");
			r = -EINVAL;
			goto out;
		}
		if (cfg->ring_entries && cfg->ring_entries != vm->cfg.ring_entries) {
			kvm_vm_set_error(vm, "ring mode: %u entries asked, the VM has %u",
					 cfg->ring_entries, vm->cfg.ring_entries);
			r = -EINVAL;
			goto out;
		}
		break;
	default:
		kvm_vm_set_error(vm, "%s mode is not a kernel dirty-logging mode (soft MMU only)",
				 dirty_mode_name(cfg->mode));
		r = -EOPNOTSUPP;
		goto out;
	}
	for (i = 0; i < vm->nr_slots; i++) {
		struct kvm_memslot *s = vm->slots[i];

		if (cfg->mode == DIRTY_MODE_BITMAP) {
			free(s->pending);
			s->pending = bitmap_alloc(s->npages);
			if (!s->pending) {
				r = -ENOMEM;
				break;
			}
		}
		r = kvm_memslot_set_flags(vm, s, s->flags | KVM_MEM_LOG_DIRTY_PAGES);
		if (r)
			break;
	}
	if (r) {
		while (--i >= 0)
			kvm_memslot_set_flags(vm, vm->slots[i],
					      vm->slots[i]->flags & ~KVM_MEM_LOG_DIRTY_PAGES);
		if (vm->manual_enabled)
			kvm_vm_enable_cap(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 0);
		vm->manual_enabled = false;
		goto out;
	}
	vm->dirty = *cfg;
	vm->dirty.ring_entries = vm->cfg.ring_entries;
	vm->logging = true;
out:
	pthread_mutex_unlock(&vm->dirty_lock);
	return r;
}

int kvm_vm_dirty_stop(struct kvm_vm *vm)
{
	int i, r = 0;

	pthread_mutex_lock(&vm->dirty_lock);
	if (!vm->logging)
		goto out;
	for (i = 0; i < vm->nr_slots; i++) {
		struct kvm_memslot *s = vm->slots[i];
		int e = kvm_memslot_set_flags(vm, s, s->flags & ~KVM_MEM_LOG_DIRTY_PAGES);

		r = r ? r : e;
		pthread_mutex_lock(&s->lock);
		free(s->pending);
		s->pending = NULL;
		pthread_mutex_unlock(&s->lock);
	}
	if (vm->manual_enabled) {
		int e = kvm_vm_enable_cap(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 0);

		r = r ? r : e;
		vm->manual_enabled = false;
	}
	vm->logging = false;
out:
	pthread_mutex_unlock(&vm->dirty_lock);
	return r;
}

static int harvest_bitmap(struct kvm_vm *vm, struct kvm_memslot *s, uint64_t first, uint64_t n,
			  uint64_t *out)
{
	uint64_t *bm, w, words = bitmap_words(s->npages);
	int r;

	bm = bitmap_alloc(s->npages);
	if (!bm)
		return -ENOMEM;
	pthread_mutex_lock(&s->lock);
	r = get_dirty_log(vm, s, bm);
	if (!r) {
		if (!s->pending)
			s->pending = bitmap_alloc(s->npages);
		if (!s->pending) {
			r = -ENOMEM;
		} else {
			for (w = 0; w < words; w++)
				s->pending[w] |= bm[w];
			for (w = 0; w < bitmap_words(n); w++) {
				out[w] = s->pending[first / 64 + w];
				s->pending[first / 64 + w] = 0;
			}
			/* A tail past n in the last word belongs to no range: n ends the slot. */
			take_host_dirty(s, first, n, out);
		}
	}
	pthread_mutex_unlock(&s->lock);
	free(bm);
	return r;
}

static int harvest_manual(struct kvm_vm *vm, struct kvm_memslot *s, uint64_t first, uint64_t n,
			  uint64_t *out)
{
	uint64_t *bm, w, words = bitmap_words(n);
	bool any = false;
	int r;

	bm = bitmap_alloc(s->npages);
	if (!bm)
		return -ENOMEM;
	r = get_dirty_log(vm, s, bm);
	if (!r) {
		for (w = 0; w < words; w++) {
			out[w] = bm[first / 64 + w];
			any |= out[w] != 0;
		}
		mask_tail(out, n);
		if (any) {
			struct kvm_clear_dirty_log clr = {
				.slot = s->id,
				.num_pages = (uint32_t)n,
				.first_page = first,
				.dirty_bitmap = out,
			};

			if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &clr)) {
				r = -errno;
				kvm_vm_set_error(vm,
						 "KVM_CLEAR_DIRTY_LOG(slot %u, first %llu, %llu pages): %s",
						 s->id, (unsigned long long)first,
						 (unsigned long long)n, strerror(-r));
			}
		}
		pthread_mutex_lock(&s->lock);
		take_host_dirty(s, first, n, out);
		pthread_mutex_unlock(&s->lock);
	}
	free(bm);
	return r;
}

int kvm_vm_harvest_range(struct kvm_vm *vm, uint32_t slot, uint64_t first_page, uint64_t npages,
			 uint64_t *bitmap)
{
	struct kvm_memslot *s = kvm_vm_find_slot(vm, slot);
	enum dirty_mode mode;

	if (!s) {
		kvm_vm_set_error(vm, "harvest: no memslot %u", slot);
		return -ENOENT;
	}
	if (first_page % 64 || first_page > s->npages || npages > s->npages - first_page ||
	    !npages || (npages % 64 && first_page + npages != s->npages)) {
		kvm_vm_set_error(vm,
				 "harvest: range [%llu, +%llu) of slot %u (%llu pages) breaks the "
				 "64-page rule",
				 (unsigned long long)first_page, (unsigned long long)npages, slot,
				 (unsigned long long)s->npages);
		return -EINVAL;
	}
	if (npages > UINT32_MAX) {
		kvm_vm_set_error(vm, "harvest: at most 2^32-1 pages per call");
		return -EINVAL;
	}
	pthread_mutex_lock(&vm->dirty_lock);
	mode = vm->logging ? vm->dirty.mode : DIRTY_MODE_NR;
	pthread_mutex_unlock(&vm->dirty_lock);
	switch (mode) {
	case DIRTY_MODE_BITMAP:
		return harvest_bitmap(vm, s, first_page, npages, bitmap);
	case DIRTY_MODE_MANUAL:
		return harvest_manual(vm, s, first_page, npages, bitmap);
	case DIRTY_MODE_RING:
		kvm_vm_set_error(vm, "harvest_range: the VM logs into dirty rings (harvest_rings)");
		return -EINVAL;
	default:
		kvm_vm_set_error(vm, "harvest_range: dirty logging is off");
		return -EINVAL;
	}
}

/* Deliver the published entries of one ring, in order; returns how many. */
static uint32_t harvest_one_ring(struct kvm_vcpu *vcpu, ring_entry_fn fn, void *opaque)
{
	uint32_t size = vcpu->vm->cfg.ring_entries, n = 0;

	for (;;) {
		struct kvm_dirty_gfn *e = &vcpu->ring[vcpu->ring_fetch & (size - 1)];
		uint32_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);

		if (!(flags & KVM_DIRTY_GFN_F_DIRTY))
			break;
		fn(opaque, e->slot, e->offset);
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		vcpu->ring_fetch++;
		n++;
	}
	return n;
}

int kvm_vm_harvest_rings(struct kvm_vm *vm, ring_entry_fn fn, void *opaque)
{
	uint64_t harvested = 0, hosts = 0;
	int i, r;

	if (!vm->cfg.ring_entries || !vm->logging || vm->dirty.mode != DIRTY_MODE_RING) {
		kvm_vm_set_error(vm, "harvest_rings: ring mode is not on");
		return -EINVAL;
	}
	pthread_mutex_lock(&vm->ring_lock);
	for (i = 0; i < vm->nr_vcpus; i++)
		harvested += harvest_one_ring(&vm->vcpus[i], fn, opaque);
	r = ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
	if (r < 0) {
		r = -errno;
		kvm_vm_set_error(vm, "KVM_RESET_DIRTY_RINGS: %s", strerror(-r));
	} else if ((uint64_t)r != harvested) {
		kvm_vm_set_error(vm, "KVM_RESET_DIRTY_RINGS reset %d entries, %llu were harvested",
				 r, (unsigned long long)harvested);
		r = -EIO;
	} else {
		r = 0;
	}
	pthread_mutex_unlock(&vm->ring_lock);

	/* Pages the host wrote itself, as if from a ring. */
	for (i = 0; i < vm->nr_slots; i++) {
		struct kvm_memslot *s = vm->slots[i];
		uint64_t w;

		pthread_mutex_lock(&s->lock);
		for (w = 0; s->host_dirty && w < bitmap_words(s->npages); w++) {
			uint64_t m = s->host_dirty[w];

			s->host_dirty[w] = 0;
			while (m) {
				fn(opaque, s->id, w * 64 + __builtin_ctzll(m));
				m &= m - 1;
				hosts++;
			}
		}
		pthread_mutex_unlock(&s->lock);
	}

	/* Wake vCPUs parked on KVM_EXIT_DIRTY_RING_FULL. */
	pthread_mutex_lock(&vm->lock);
	vm->ring_gen++;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	if (r)
		return r;
	return (int)MIN(harvested + hosts, (uint64_t)INT32_MAX);
}
