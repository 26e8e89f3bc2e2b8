/* vcpu.c: VM and vCPU lifecycle, the soft TLB, the page walker, remote TLB flushes, pause/resume. */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"

void vm_config_default(struct vm_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->nr_vcpus = 1;
	cfg->tlb_entries = 512;
	cfg->lock_mode = MMU_LOCK_EXCLUSIVE;
	cfg->max_level = PG_LEVEL_1G;
}

static void vcpu_free(struct vm *vm, struct vcpu *vcpu)
{
	if (!vcpu)
		return;
	mmu_caches_free(vm, &vcpu->caches);
	free(vcpu->tlb);
	free(vcpu);
}

static struct vcpu *vcpu_create(struct vm *vm, int id)
{
	struct vcpu *vcpu = aligned_alloc(64, ALIGN_UP(sizeof(*vcpu), 64));

	if (!vcpu)
		return NULL;
	memset(vcpu, 0, sizeof(*vcpu));
	vcpu->vm = vm;
	vcpu->id = id;
	vcpu->mode = OUTSIDE_GUEST_MODE;
	vcpu->tlb_mask = vm->cfg.tlb_entries - 1;
	vcpu->tlb = calloc(vm->cfg.tlb_entries, sizeof(struct tlb_entry));
	mmu_caches_init(&vcpu->caches);
	if (!vcpu->tlb) {
		free(vcpu);
		return NULL;
	}
	return vcpu;
}

int vm_create(const struct vm_config *cfg, struct vm **vmp)
{
	struct vm *vm;
	int i, r;

	if (!cfg || cfg->nr_vcpus < 1 || cfg->nr_vcpus > VM_MAX_VCPUS || !cfg->tlb_entries ||
	    (cfg->tlb_entries & (cfg->tlb_entries - 1)) || cfg->tlb_entries > (1u << 20) ||
	    cfg->max_level < PG_LEVEL_4K || cfg->max_level > PG_LEVEL_1G ||
	    (cfg->lock_mode != MMU_LOCK_EXCLUSIVE && cfg->lock_mode != MMU_LOCK_SHARED))
		return -EINVAL;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->cfg = *cfg;
	{
		pthread_rwlockattr_t attr;

		pthread_rwlockattr_init(&attr);
		/* Writers (harvest, invalidation) must not starve behind faults. */
		pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&vm->mmu_lock, &attr);
		pthread_rwlockattr_destroy(&attr);
	}
	pthread_mutex_init(&vm->slots_lock, NULL);
	pthread_mutex_init(&vm->mn_lock, NULL);
	pthread_cond_init(&vm->mn_cond, NULL);
	pthread_mutex_init(&vm->pause_lock, NULL);
	pthread_cond_init(&vm->pause_cond, NULL);

	r = memslots_init(vm);
	if (!r)
		r = mmu_init(vm);
	if (r)
		goto fail;
	vm->vcpus = calloc(cfg->nr_vcpus, sizeof(*vm->vcpus));
	if (!vm->vcpus) {
		r = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < cfg->nr_vcpus; i++) {
		vm->vcpus[i] = vcpu_create(vm, i);
		if (!vm->vcpus[i]) {
			r = -ENOMEM;
			goto fail;
		}
		vm->nr_vcpus++;
	}
	*vmp = vm;
	return 0;
fail:
	vm_destroy(vm);
	return r;
}

void vm_destroy(struct vm *vm)
{
	int i;

	if (!vm)
		return;
	for (i = 0; i < vm->nr_vcpus; i++)
		vcpu_free(vm, vm->vcpus[i]);
	vm->nr_vcpus = 0;
	free(vm->vcpus);
	memslots_destroy(vm);
	dirty_log_destroy(vm);
	mmu_destroy(vm);
	pthread_rwlock_destroy(&vm->mmu_lock);
	pthread_mutex_destroy(&vm->slots_lock);
	pthread_mutex_destroy(&vm->mn_lock);
	pthread_cond_destroy(&vm->mn_cond);
	pthread_mutex_destroy(&vm->pause_lock);
	pthread_cond_destroy(&vm->pause_cond);
	free(vm);
}

struct vcpu *vm_get_vcpu(struct vm *vm, int idx)
{
	return idx >= 0 && idx < vm->nr_vcpus ? vm->vcpus[idx] : NULL;
}

int vm_nr_vcpus(const struct vm *vm)
{
	return vm->nr_vcpus;
}

int vcpu_id(const struct vcpu *vcpu)
{
	return vcpu->id;
}

void mmu_debug_set_faults(struct vm *vm, unsigned int faults)
{
	vm->debug_faults = faults;
}

/* ---- TLB ---- */

void vcpu_flush_tlb(struct vcpu *vcpu)
{
	memset(vcpu->tlb, 0, (size_t)(vcpu->tlb_mask + 1) * sizeof(struct tlb_entry));
	stat_inc(vcpu->stats.tlb_flushes);
}

/* ---- requests, kicks, remote flush, pause ---- */

static void vcpu_park(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;

	__atomic_store_n(&vcpu->mode, OUTSIDE_GUEST_MODE, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&vm->pause_lock);
	vcpu->parked = true;
	pthread_cond_broadcast(&vm->pause_cond);
	while (vm->pause_requested)
		pthread_cond_wait(&vm->pause_cond, &vm->pause_lock);
	vcpu->parked = false;
	pthread_mutex_unlock(&vm->pause_lock);
}

/* Enter guest mode: requests raised while we were outside are seen here. */
static void vcpu_enter_guest_mode(struct vcpu *vcpu)
{
	__atomic_store_n(&vcpu->mode, IN_GUEST_MODE, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&vcpu->requests, __ATOMIC_SEQ_CST))
		vcpu_handle_requests(vcpu);
}

void vcpu_handle_requests(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	uint32_t req;

	while ((req = __atomic_exchange_n(&vcpu->requests, 0, __ATOMIC_SEQ_CST))) {
		if (req & KVM_REQ_TLB_FLUSH) {
			uint64_t gen = __atomic_load_n(&vm->tlb_flush_gen, __ATOMIC_SEQ_CST);

			vcpu_flush_tlb(vcpu);
			__atomic_store_n(&vcpu->tlb_gen_acked, gen, __ATOMIC_RELEASE);
		}
		if (req & KVM_REQ_PAUSE) {
			vcpu_park(vcpu);
			__atomic_store_n(&vcpu->mode, IN_GUEST_MODE, __ATOMIC_SEQ_CST);
		}
		if (req & KVM_REQ_KICK) {
			/* A kick makes the vCPU leave guest mode: PML buffers drain there. */
			__atomic_store_n(&vcpu->mode, OUTSIDE_GUEST_MODE, __ATOMIC_SEQ_CST);
			if (vcpu->pml)
				vcpu_pml_log(vcpu, ~(gfn_t)0);
			__atomic_store_n(&vcpu->mode, IN_GUEST_MODE, __ATOMIC_SEQ_CST);
		}
		if (req & KVM_REQ_RING_FULL)
			dirty_ring_wait_for_reset(vcpu);
	}
}

void vm_make_all_vcpus_request(struct vm *vm, uint32_t req)
{
	struct vcpu *vcpu;
	int i;

	for_each_vcpu(i, vcpu, vm)
		__atomic_fetch_or(&vcpu->requests, req, __ATOMIC_SEQ_CST);
}

void vm_flush_remote_tlbs(struct vm *vm)
{
	struct vcpu *vcpu;
	uint64_t gen;
	int i;

	__atomic_fetch_add(&vm->remote_tlb_flushes, 1, __ATOMIC_RELAXED);
	if (vm->debug_faults & MMU_DEBUG_SKIP_REMOTE_FLUSH)
		return;
	gen = __atomic_add_fetch(&vm->tlb_flush_gen, 1, __ATOMIC_SEQ_CST);
	vm_make_all_vcpus_request(vm, KVM_REQ_TLB_FLUSH);
	/* Wait for each vCPU that may hold translations: in guest mode or walking. */
	for_each_vcpu(i, vcpu, vm) {
		int spins = 0;

		while (__atomic_load_n(&vcpu->mode, __ATOMIC_SEQ_CST) != OUTSIDE_GUEST_MODE &&
		       __atomic_load_n(&vcpu->tlb_gen_acked, __ATOMIC_ACQUIRE) < gen) {
			if (++spins < 64)
				cpu_relax();
			else
				sched_yield();
		}
	}
}

void vcpu_load(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;

	pthread_mutex_lock(&vm->pause_lock);
	vcpu->loaded = true;
	pthread_mutex_unlock(&vm->pause_lock);
	vcpu_enter_guest_mode(vcpu);
}

void vcpu_put(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;

	if (vcpu->pml)
		vcpu_pml_log(vcpu, ~(gfn_t)0);
	__atomic_store_n(&vcpu->mode, OUTSIDE_GUEST_MODE, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&vm->pause_lock);
	vcpu->loaded = false;
	pthread_cond_broadcast(&vm->pause_cond);
	pthread_mutex_unlock(&vm->pause_lock);
}

void vm_pause(struct vm *vm)
{
	struct vcpu *vcpu;
	int i;

	pthread_mutex_lock(&vm->pause_lock);
	vm->pause_requested = true;
	pthread_mutex_unlock(&vm->pause_lock);
	vm_make_all_vcpus_request(vm, KVM_REQ_PAUSE);
	pthread_mutex_lock(&vm->pause_lock);
	for_each_vcpu(i, vcpu, vm)
		while (vcpu->loaded && !vcpu->parked)
			pthread_cond_wait(&vm->pause_cond, &vm->pause_lock);
	pthread_mutex_unlock(&vm->pause_lock);
}

void vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->pause_lock);
	vm->pause_requested = false;
	pthread_cond_broadcast(&vm->pause_cond);
	pthread_mutex_unlock(&vm->pause_lock);
}

/* ---- guest accesses: TLB -> walk -> fault ---- */

/*
 * Walk the page table for @gfn as hardware does: set A, and D on a write
 * (logging the gfn when D-bit logging is on), then fill the TLB entry.
 * Returns the entry, or NULL when the access must fault.
 */
static struct tlb_entry *vcpu_walk(struct vcpu *vcpu, gfn_t gfn, bool write)
{
	uint64_t *sptep, spte;
	struct tlb_entry *e;
	int level;

	sptep = mmu_lookup_leaf(vcpu->vm, vcpu->as_id, gfn, &level);
	if (!sptep)
		return NULL;
	spte = spte_read(sptep);
	if (!is_shadow_present_pte(spte) || (write && !is_writable_pte(spte)))
		return NULL;
	if (!is_accessed_spte(spte))
		spte = spte_set_bits(sptep, SPTE_A_MASK) | SPTE_A_MASK;
	if (write && !is_dirty_spte(spte)) {
		uint64_t old = spte_set_bits(sptep, SPTE_D_MASK);

		spte = old | SPTE_D_MASK;
		if (!(old & SPTE_D_MASK) && vcpu->pml)
			vcpu_pml_log(vcpu, gfn);
	}
	e = &vcpu->tlb[gfn & vcpu->tlb_mask];
	e->tag = gfn + 1;
	e->hva = spte_to_addr(spte) +
		 ((gfn & (KVM_PAGES_PER_HPAGE(level) - 1)) << PAGE_SHIFT);
	e->perm = (is_writable_pte(spte) ? TLB_W : 0) | (is_dirty_spte(spte) ? TLB_D : 0);
	return e;
}

/* The slow part of an access: requests, TLB miss, walk, faults. */
static uintptr_t vcpu_translate_slow(struct vcpu *vcpu, gpa_t gpa, bool write, int *err)
{
	gfn_t gfn = gpa >> PAGE_SHIFT;
	struct tlb_entry *e;

	for (;;) {
		if (__atomic_load_n(&vcpu->requests, __ATOMIC_RELAXED))
			vcpu_handle_requests(vcpu);
		e = &vcpu->tlb[gfn & vcpu->tlb_mask];
		if (e->tag == gfn + 1 && (!write || (e->perm & (TLB_W | TLB_D)) == (TLB_W | TLB_D)))
			return e->hva;
		stat_inc(vcpu->stats.tlb_misses);
		e = vcpu_walk(vcpu, gfn, write);
		if (e)
			return e->hva;
		/* VM exit for the fault; flushes do not wait for us meanwhile. */
		__atomic_store_n(&vcpu->mode, OUTSIDE_GUEST_MODE, __ATOMIC_SEQ_CST);
		*err = kvm_mmu_page_fault(vcpu, gfn, write);
		vcpu_enter_guest_mode(vcpu);
		if (*err)
			return 0;
	}
}

static inline uintptr_t vcpu_translate(struct vcpu *vcpu, gpa_t gpa, bool write, int *err)
{
	gfn_t gfn = gpa >> PAGE_SHIFT;
	struct tlb_entry *e = &vcpu->tlb[gfn & vcpu->tlb_mask];

	stat_inc(vcpu->stats.accesses);
	if (likely(!__atomic_load_n(&vcpu->requests, __ATOMIC_RELAXED) && e->tag == gfn + 1 &&
		   (!write || (e->perm & (TLB_W | TLB_D)) == (TLB_W | TLB_D)))) {
		stat_inc(vcpu->stats.tlb_hits);
		return e->hva;
	}
	return vcpu_translate_slow(vcpu, gpa, write, err);
}

int vcpu_write_u64(struct vcpu *vcpu, gpa_t gpa, uint64_t val)
{
	int err = 0;
	uintptr_t hva = vcpu_translate(vcpu, gpa, true, &err);

	if (unlikely(err))
		return err;
	__atomic_store_n((uint64_t *)(hva + (gpa & (PAGE_SIZE - 1) & ~7ull)), val, __ATOMIC_RELAXED);
	return 0;
}

int vcpu_read_u64(struct vcpu *vcpu, gpa_t gpa, uint64_t *val)
{
	int err = 0;
	uintptr_t hva = vcpu_translate(vcpu, gpa, false, &err);

	if (unlikely(err))
		return err;
	*val = __atomic_load_n((uint64_t *)(hva + (gpa & (PAGE_SIZE - 1) & ~7ull)), __ATOMIC_RELAXED);
	return 0;
}

/* ---- statistics ---- */

void vm_get_stats(struct vm *vm, struct vm_stats *st)
{
	struct vcpu *vcpu;
	int i, as, level;

	memset(st, 0, sizeof(*st));
	for_each_vcpu(i, vcpu, vm) {
		st->accesses += READ_ONCE(vcpu->stats.accesses);
		st->tlb_hits += READ_ONCE(vcpu->stats.tlb_hits);
		st->tlb_misses += READ_ONCE(vcpu->stats.tlb_misses);
		st->tlb_flushes += READ_ONCE(vcpu->stats.tlb_flushes);
		st->faults_slow += READ_ONCE(vcpu->stats.faults_slow);
		st->faults_fast += READ_ONCE(vcpu->stats.faults_fast);
		st->fault_retries += READ_ONCE(vcpu->stats.fault_retries);
		st->mmio_exits += READ_ONCE(vcpu->stats.mmio_exits);
	}
	st->remote_tlb_flushes = READ_ONCE(vm->remote_tlb_flushes);
	for (level = 0; level < PG_LEVEL_MAX_LEAF; level++)
		st->leaf_sptes[level] = READ_ONCE(vm->nr_leaf_sptes[level]);

	/* For write: shared-lock faults change rmaps and the page count as readers. */
	pthread_mutex_lock(&vm->slots_lock);
	mmu_write_lock(vm);
	st->mmu_pages = vm->nr_mmu_pages;
	st->page_table_bytes = vm->nr_mmu_pages * (PAGE_SIZE + sizeof(struct mmu_page));
	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslots *slots = vm_memslots(vm, as);
		struct memslot *slot;
		int s;

		for_each_memslot(slot, s, slots) {
			st->guest_pages += slot->npages;
			for (level = PG_LEVEL_4K; level <= PG_LEVEL_MAX_LEAF; level++) {
				uint64_t n = memslot_level_entries(slot, level), k;

				st->rmap_bytes += n * sizeof(struct rmap_head);
				if (level > PG_LEVEL_4K)
					st->lpage_info_bytes += n * sizeof(int);
				for (k = 0; k < n; k++)
					st->rmap_descs += pte_list_desc_count(&slot->rmap[level - 1][k]);
			}
			if (slot->dirty_bitmap)
				st->dirty_bitmap_bytes += 2 * memslot_dirty_bitmap_words(slot) * 8;
		}
	}
	st->rmap_bytes += st->rmap_descs * sizeof(struct pte_list_desc);
	mmu_write_unlock(vm);
	pthread_mutex_unlock(&vm->slots_lock);
}
