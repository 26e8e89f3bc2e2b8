/* test_invalidate.c: each unmap variant removes exactly the sptes of an hva range; notifier state, discard, replace, THP levels, aging. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "mmu/mmu_internal.h"
#include "rmapvm/invalidate.h"

static struct vm *new_vm(int nr_vcpus)
{
	struct vm_config cfg;
	struct vm *vm;

	vm_config_default(&cfg);
	cfg.nr_vcpus = nr_vcpus;
	assert_int_equal(vm_create(&cfg, &vm), 0);
	return vm;
}

static int add_slot(struct vm *vm, int as, int id, gpa_t gpa, uint64_t size, hva_t hva)
{
	struct vm_memory_region r = {
		.slot = (uint32_t)(as << 16 | id), .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = hva,
	};
	return vm_set_user_memory_region(vm, &r);
}

/* ---- the exact-set test ---- */

/* A 3 GiB hva window, 1 GiB aligned, never touched (prefault maps without touching). */
static hva_t reserve_window(void **raw, size_t *len)
{
	*len = 4 * SZ_1G;
	*raw = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		    -1, 0);
	assert_true(*raw != MAP_FAILED);
	return ALIGN_UP((hva_t)*raw, SZ_1G);
}

struct leaf {
	int as;
	gfn_t gfn; /* frame base */
	int level;
	uint64_t *sptep;
	hva_t hva; /* first byte mapped */
};

#define MAX_LEAVES 8192

/*
 * The layout (H = 1 GiB aligned hva):
 *  as0 slot0: gpa 0,          1 GiB + 8 MiB at H: a 1 GiB leaf, 2 MiB leaves, 4 KiB leaves
 *  as0 slot1: gpa 2G + 4K,    6 MiB at H + 1G + 16M + 4K: 4 KiB head/tail, 2 MiB middle
 *  as0 slot2: gpa 3G,         4 MiB at H + 1G + 32M + 8K: not congruent, all 4 KiB
 *  as0 slot4: gpa 5G,         4 MiB at the same hva as slot2 (hva alias in one address space)
 *  as1 slot3: gpa 16M,        12 MiB at H + 1G - 4M: aliases slot0's hva, 2 MiB leaves
 */
static void build_layout(struct vm *vm, hva_t H)
{
	hva_t h1 = H + SZ_1G + 16 * (1ull << 20) + PAGE_SIZE;
	hva_t h2 = H + SZ_1G + 32 * (1ull << 20) + 2 * PAGE_SIZE;

	assert_int_equal(add_slot(vm, 0, 0, 0, SZ_1G + 8 * (1ull << 20), H), 0);
	assert_int_equal(add_slot(vm, 0, 1, 2 * SZ_1G + PAGE_SIZE, 6 * (1ull << 20), h1), 0);
	assert_int_equal(add_slot(vm, 0, 2, 3 * SZ_1G, 4 * (1ull << 20), h2), 0);
	assert_int_equal(add_slot(vm, 0, 4, 5 * SZ_1G, 4 * (1ull << 20), h2), 0);
	assert_int_equal(add_slot(vm, 1, 3, 16 * (1ull << 20), 12 * (1ull << 20),
				  H + SZ_1G - 4 * (1ull << 20)), 0);

	assert_int_equal(vm_prefault_memory(vm, 0, 0, SZ_1G, PG_LEVEL_1G), (int64_t)SZ_1G);
	assert_int_equal(vm_prefault_memory(vm, 0, SZ_1G, 4 << 20, PG_LEVEL_2M), 4 << 20);
	assert_int_equal(vm_prefault_memory(vm, 0, SZ_1G + (4 << 20), 4 << 20, PG_LEVEL_4K),
			 4 << 20);
	assert_int_equal(vm_prefault_memory(vm, 0, 2 * SZ_1G + PAGE_SIZE, 6 << 20, PG_LEVEL_2M),
			 6 << 20);
	assert_int_equal(vm_prefault_memory(vm, 0, 3 * SZ_1G, 4 << 20, PG_LEVEL_2M), 4 << 20);
	assert_int_equal(vm_prefault_memory(vm, 0, 5 * SZ_1G, 4 << 20, PG_LEVEL_4K), 4 << 20);
	assert_int_equal(vm_prefault_memory(vm, 1, 16 << 20, 12 << 20, PG_LEVEL_2M), 12 << 20);
}

/* Every leaf of every slot, found by walking the page tables gfn by gfn. */
static int collect_leaves(struct vm *vm, struct leaf *out)
{
	int as, i, n = 0;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslots *slots = vm_memslots(vm, as);
		struct memslot *slot;

		for_each_memslot(slot, i, slots) {
			gfn_t gfn = slot->base_gfn, end = slot->base_gfn + slot->npages;

			while (gfn < end) {
				int level;
				uint64_t *sptep = mmu_lookup_leaf(vm, as, gfn, &level);
				gfn_t frame;

				if (!sptep) {
					gfn++;
					continue;
				}
				frame = ALIGN_DOWN(gfn, KVM_PAGES_PER_HPAGE(level));
				assert_true(n < MAX_LEAVES);
				out[n].as = as;
				out[n].gfn = frame;
				out[n].level = level;
				out[n].sptep = sptep;
				out[n].hva = gfn_to_hva_memslot(slot, frame);
				assert_int_equal(spte_to_addr(spte_read(sptep)), out[n].hva);
				n++;
				gfn = frame + KVM_PAGES_PER_HPAGE(level);
			}
		}
	}
	return n;
}

/* Leaves on rmaps == leaves counted; each rmap entry is the leaf of its gfn. */
static void check_rmaps(struct vm *vm)
{
	uint64_t on_rmaps = 0;
	struct vm_stats st;
	int as, i;

	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslot *slot;

		for_each_memslot(slot, i, vm_memslots(vm, as)) {
			struct slot_rmap_walk_iterator it;

			for_each_slot_rmap_range(slot, PG_LEVEL_4K, PG_LEVEL_1G, slot->base_gfn,
						 slot->base_gfn + slot->npages - 1, &it) {
				struct rmap_iterator iter;
				uint64_t *sptep;
				int level;

				for_each_rmap_spte(it.rmap, &iter, sptep) {
					assert_ptr_equal(mmu_lookup_leaf(vm, as, it.gfn, &level),
							 sptep);
					assert_int_equal(level, it.level);
					on_rmaps++;
				}
			}
		}
	}
	vm_get_stats(vm, &st);
	assert_int_equal(on_rmaps, st.leaf_sptes[0] + st.leaf_sptes[1] + st.leaf_sptes[2]);
}

/* Invalidate [s, e) with @variant on a fresh layout; check exactly the right leaves went. */
static void check_range(hva_t H, enum unmap_variant variant, hva_t s, hva_t e)
{
	static struct leaf before[MAX_LEAVES];
	struct vm *vm = new_vm(1);
	hva_t ps = ALIGN_DOWN(s, PAGE_SIZE), pe = ALIGN_UP(e, PAGE_SIZE);
	uint64_t flushes0, seq0;
	int n, i, expected = 0, overlap = 0, as;
	struct vm_stats st;

	build_layout(vm, H);
	assert_int_equal(invalidate_set_variant(vm, variant), 0);
	n = collect_leaves(vm, before);
	for (i = 0; i < n; i++) {
		uint64_t size = KVM_HPAGE_SIZE(before[i].level);

		if (before[i].hva < pe && before[i].hva + size > ps)
			expected++;
	}
	for (as = 0; as < KVM_ADDRESS_SPACE_NUM; as++) {
		struct memslot *slot;

		for_each_memslot(slot, i, vm_memslots(vm, as))
			if (slot->userspace_addr < pe &&
			    slot->userspace_addr + (slot->npages << PAGE_SHIFT) > ps)
				overlap++;
	}
	vm_get_stats(vm, &st);
	flushes0 = st.remote_tlb_flushes;
	seq0 = vm->mmu_invalidate_seq;

	assert_int_equal(invalidate_range_start(vm, s, e), 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, overlap ? 1 : 0);
	for (i = 0; i < n; i++) {
		uint64_t size = KVM_HPAGE_SIZE(before[i].level);
		bool hit = before[i].hva < pe && before[i].hva + size > ps;
		bool present = is_shadow_present_pte(spte_read(before[i].sptep));

		if (hit == present)
			fail_msg("%s [%#lx, %#lx): as%d gfn %#lx level %d %s", unmap_variant_name(variant),
				 (unsigned long)(s - H), (unsigned long)(e - H), before[i].as,
				 (unsigned long)before[i].gfn, before[i].level,
				 hit ? "survived" : "was zapped");
		/* A zapped gfn is inside the in-progress range: its faults retry. */
		if (hit)
			assert_true(mmu_invalidate_retry_gfn(vm, vm->mmu_invalidate_seq,
							     before[i].gfn +
								     (ps > before[i].hva
									      ? (ps - before[i].hva) >> PAGE_SHIFT
									      : 0)));
	}
	vm_get_stats(vm, &st);
	/* Exactly one remote flush per call, and only when something was zapped. */
	assert_int_equal(st.remote_tlb_flushes - flushes0, expected ? 1 : 0);
	assert_int_equal(st.leaf_sptes[0] + st.leaf_sptes[1] + st.leaf_sptes[2], n - expected);
	check_rmaps(vm);
	assert_int_equal(invalidate_range_end(vm, s, e), 0);
	vm_get_stats(vm, &st);
	assert_int_equal(st.remote_tlb_flushes - flushes0, expected ? 1 : 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, 0);
	assert_int_equal(vm->mmu_invalidate_seq, seq0 + (overlap ? 1 : 0));
	vm_destroy(vm);
}

static void test_exact_set_per_variant(void **state)
{
	void *raw;
	size_t len;
	hva_t H = reserve_window(&raw, &len);
	const hva_t M = 1ull << 20;
	/* Named cases: each end inside a page, huge leaves straddling the ends. */
	const struct {
		hva_t s, e;
	} cases[] = {
		{ H + SZ_1G - 5 * M + 123, H + SZ_1G + 3 * M + 77 }, /* 1G leaf, as1 alias, 2M leaf at end */
		{ H + SZ_1G + 16 * M + 3 * PAGE_SIZE + 5, H + SZ_1G + 19 * M + 1 }, /* slot1 head 4K + 2M */
		{ H + SZ_1G + 33 * M + 17, H + SZ_1G + 34 * M + PAGE_SIZE + 1 }, /* slot2+slot4 alias */
		{ H + SZ_1G + 40 * M, H + SZ_1G + 48 * M },		      /* no slot: no flush */
		{ H + 5 * PAGE_SIZE, H + 5 * PAGE_SIZE + 1 },		      /* one byte of the 1G leaf */
		{ H + SZ_1G + 4 * M + PAGE_SIZE - 1, H + SZ_1G + 4 * M + PAGE_SIZE + 1 }, /* 2 pages */
		{ H, H + 2 * SZ_1G },					      /* everything */
	};
	uint64_t rng = 42;
	unsigned int i;
	int v, k, nrand = 12 / test_scale() + 2;

	for (v = 0; v < UNMAP_NR_VARIANTS; v++) {
		for (i = 0; i < ARRAY_SIZE(cases); i++)
			check_range(H, v, cases[i].s, cases[i].e);
		for (k = 0; k < nrand; k++) {
			/* Random ranges near the interesting part (the last 8 MiB of slot0 onwards). */
			hva_t base = H + SZ_1G - 8 * M;
			hva_t s = base + test_rand(&rng) % (48 * M);
			hva_t e = s + 1 + test_rand(&rng) % (k & 1 ? 6 * M : 64 * PAGE_SIZE);

			check_range(H, v, s, e);
		}
	}
	munmap(raw, len);
}

/* ---- protocol state ---- */

static void test_protocol_state(void **state)
{
	struct vm *vm = new_vm(1);
	struct mem_backing b;
	hva_t h;
	gfn_t g;
	uint64_t seq;

	assert_int_equal(backing_alloc(&b, BACKING_ANON_4K, 8 * SZ_2M), 0);
	h = b.hva;
	assert_int_equal(add_slot(vm, 0, 0, 0x100000000ull, b.size, h), 0);
	g = 0x100000000ull >> PAGE_SHIFT;
	seq = vm->mmu_invalidate_seq;

	assert_int_equal(invalidate_range_start(vm, h, h), -EINVAL);
	assert_int_equal(invalidate_range_end(vm, h, h + 1), -EINVAL); /* none in progress */

	/* One byte: exactly one page in progress (end rounded up). */
	assert_int_equal(invalidate_range_start(vm, h + 5 * PAGE_SIZE + 7, h + 5 * PAGE_SIZE + 8), 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, 1);
	assert_int_equal(vm->mmu_invalidate_range_start, g + 5);
	assert_int_equal(vm->mmu_invalidate_range_end, g + 6);
	assert_true(mmu_invalidate_retry_gfn(vm, seq, g + 5));
	assert_false(mmu_invalidate_retry_gfn(vm, seq, g + 4));
	assert_false(mmu_invalidate_retry_gfn(vm, seq, g + 6));

	/* A second, disjoint invalidation: the in-progress range is the union. */
	assert_int_equal(invalidate_range_start(vm, h + 100 * PAGE_SIZE, h + 102 * PAGE_SIZE - 1), 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, 2);
	assert_int_equal(vm->mmu_invalidate_range_start, g + 5);
	assert_int_equal(vm->mmu_invalidate_range_end, g + 102);
	assert_true(mmu_invalidate_retry_gfn(vm, seq, g + 50)); /* inside the union */

	assert_int_equal(invalidate_range_end(vm, h + 5 * PAGE_SIZE + 7, h + 5 * PAGE_SIZE + 8), 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, 1);
	assert_int_equal(vm->mmu_invalidate_seq, seq + 1);
	/* The union stays until no invalidation is in progress. */
	assert_true(mmu_invalidate_retry_gfn(vm, seq + 1, g + 5));
	assert_int_equal(invalidate_range_end(vm, h + 100 * PAGE_SIZE, h + 102 * PAGE_SIZE - 1), 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, 0);
	assert_int_equal(vm->mmu_invalidate_seq, seq + 2);
	/* A fault that read the sequence before must retry; one that read it after must not. */
	assert_true(mmu_invalidate_retry_gfn(vm, seq + 1, g + 500));
	assert_false(mmu_invalidate_retry_gfn(vm, seq + 2, g + 5));

	/* A range no slot maps changes nothing. */
	assert_int_equal(invalidate_range_start(vm, h + b.size, h + b.size + SZ_2M), 0);
	assert_int_equal(vm->mmu_invalidate_in_progress, 0);
	assert_int_equal(invalidate_range_end(vm, h + b.size, h + b.size + SZ_2M), 0);
	assert_int_equal(vm->mmu_invalidate_seq, seq + 2);
	assert_int_equal(vm->mn_active_invalidate_count, 0);

	for (int v = 0; v < UNMAP_NR_VARIANTS; v++) {
		enum unmap_variant parsed;

		assert_int_equal(unmap_variant_parse(unmap_variant_name(v), &parsed), 0);
		assert_int_equal(parsed, v);
	}
	assert_int_equal(invalidate_set_variant(vm, UNMAP_NR_VARIANTS), -EINVAL);
	vm_destroy(vm);
	backing_free(&b);
}

/* ---- memslot updates wait for active invalidations ---- */

struct slot_thread {
	struct vm *vm;
	hva_t hva;
	int done;
	int r;
};

static void *slot_thread_fn(void *arg)
{
	struct slot_thread *t = arg;

	t->r = add_slot(t->vm, 0, 7, 1ull << 40, SZ_2M, t->hva);
	__atomic_store_n(&t->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void test_memslot_update_waits(void **state)
{
	struct vm *vm = new_vm(1);
	struct mem_backing b;
	struct slot_thread t = { .vm = vm };
	pthread_t th;

	assert_int_equal(backing_alloc(&b, BACKING_ANON_4K, 4 * SZ_2M), 0);
	assert_int_equal(add_slot(vm, 0, 0, 0, 2 * SZ_2M, b.hva), 0);
	t.hva = b.hva + 2 * SZ_2M;
	assert_int_equal(invalidate_range_start(vm, b.hva, b.hva + SZ_2M), 0);
	assert_int_equal(pthread_create(&th, NULL, slot_thread_fn, &t), 0);
	usleep(150 * 1000);
	assert_int_equal(__atomic_load_n(&t.done, __ATOMIC_ACQUIRE), 0);
	assert_int_equal(invalidate_range_end(vm, b.hva, b.hva + SZ_2M), 0);
	pthread_join(th, NULL);
	assert_int_equal(t.r, 0);
	assert_non_null(vm_id_to_memslot(vm, 0, 7));
	vm_destroy(vm);
	backing_free(&b);
}

/* ---- discard ---- */

static void discard_case(bool use_host_mem, enum unmap_variant variant)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct host_mem *hm = NULL;
	struct mem_backing anon;
	const struct mem_backing *b;
	uint64_t i, val, npages = 4 * SZ_2M / PAGE_SIZE;
	/* Bytes [3 pages + 100, 700 pages + 5) discarded: pages 3..700 read zero. */
	uint64_t ds = 3 * PAGE_SIZE + 100, de = 700 * PAGE_SIZE + 5;
	struct vm_stats st;

	if (use_host_mem) {
		assert_int_equal(host_mem_create(&hm, 4 * SZ_2M, 8 * SZ_2M, true), 0);
		b = host_mem_backing(hm);
	} else {
		assert_int_equal(backing_alloc(&anon, BACKING_ANON_4K, 4 * SZ_2M), 0);
		b = &anon;
	}
	assert_int_equal(vm_register_backing(vm, b), 0);
	assert_int_equal(add_slot(vm, 0, 0, 0, b->size, b->hva), 0);
	assert_int_equal(invalidate_set_variant(vm, variant), 0);
	vcpu_load(v);
	for (i = 0; i < npages; i++)
		assert_int_equal(vcpu_write_u64(v, i * PAGE_SIZE + 8, i + 1), 0);
	vcpu_put(v);

	assert_int_equal(host_mem_discard(vm, b->hva + ds, de - ds), 0);
	vm_get_stats(vm, &st);
	for (i = 3; i <= 700; i++) {
		int level;

		assert_null(mmu_lookup_leaf(vm, 0, i, &level));
	}

	vcpu_load(v);
	for (i = 0; i < npages; i++) {
		assert_int_equal(vcpu_read_u64(v, i * PAGE_SIZE + 8, &val), 0);
		if (i >= 3 && i <= 700)
			assert_int_equal(val, 0);
		else
			assert_int_equal(val, i + 1);
	}
	vcpu_put(v);
	vm_destroy(vm);
	if (hm)
		host_mem_destroy(hm);
	else
		backing_free(&anon);
}

static void test_discard_reads_zeros(void **state)
{
	int variant;

	for (variant = 0; variant < UNMAP_NR_VARIANTS; variant++) {
		discard_case(false, variant);
		discard_case(true, variant);
	}
}

/* ---- replace: new contents seen, and a missing flush is caught ---- */

static void fill_stamp(void *opaque, hva_t hva, void *page, size_t len)
{
	uint64_t stamp = *(uint64_t *)opaque;
	size_t off;

	for (off = 0; off < len; off += PAGE_SIZE)
		__atomic_store_n((uint64_t *)((uint8_t *)page + off), stamp + (hva + off) / PAGE_SIZE,
				 __ATOMIC_RELAXED);
}

/* Returns how many of the pages read back the new stamp. */
static int replace_case(unsigned int debug_faults)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct host_mem *hm;
	const struct mem_backing *b;
	uint64_t i, val, stamp = 1ull << 40, npages = 64;
	int fresh = 0;

	assert_int_equal(host_mem_create(&hm, SZ_2M, 4 * SZ_2M, false), 0);
	b = host_mem_backing(hm);
	assert_int_equal(vm_register_backing(vm, b), 0);
	assert_int_equal(add_slot(vm, 0, 0, 0, b->size, b->hva), 0);
	vcpu_load(v);
	for (i = 0; i < npages; i++)
		assert_int_equal(vcpu_write_u64(v, i * PAGE_SIZE, 7), 0);
	vcpu_put(v);

	mmu_debug_set_faults(vm, debug_faults);
	assert_int_equal(host_mem_replace(vm, b->hva, npages * PAGE_SIZE, 0, fill_stamp, &stamp), 0);
	mmu_debug_set_faults(vm, 0);
	/* The host sees the new pages at the same hva. */
	assert_int_equal(*(uint64_t *)b->hva, stamp + b->hva / PAGE_SIZE);

	vcpu_load(v);
	for (i = 0; i < npages; i++) {
		assert_int_equal(vcpu_read_u64(v, i * PAGE_SIZE, &val), 0);
		if (val == stamp + (b->hva + i * PAGE_SIZE) / PAGE_SIZE)
			fresh++;
		else
			assert_int_equal(val, 7); /* the old page, through a stale TLB entry */
	}
	vcpu_put(v);
	vm_destroy(vm);
	host_mem_destroy(hm);
	return fresh;
}

static void test_replace_backing(void **state)
{
	assert_int_equal(replace_case(0), 64);
	/* The same check catches a missing remote flush: the TLB still reaches old pages. */
	assert_int_equal(replace_case(MMU_DEBUG_SKIP_REMOTE_FLUSH), 0);
}

/* ---- THP changes re-fault at the new level ---- */

static int vcpu_level_after_access(struct vm *vm, gpa_t gpa, uint64_t *val)
{
	struct vcpu *v = vm_get_vcpu(vm, 0);
	int level = 0;

	vcpu_load(v);
	assert_int_equal(vcpu_read_u64(v, gpa, val), 0);
	vcpu_put(v);
	assert_non_null(mmu_lookup_leaf(vm, 0, gpa >> PAGE_SHIFT, &level));
	return level;
}

static void test_thp_changes_host_mem(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct host_mem *hm;
	const struct mem_backing *b;
	uint64_t val, i;

	assert_int_equal(host_mem_create(&hm, 4 * SZ_2M, 16 * SZ_2M, true), 0);
	b = host_mem_backing(hm);
	assert_int_equal(vm_register_backing(vm, b), 0);
	assert_int_equal(add_slot(vm, 0, 0, 0, b->size, b->hva), 0);
	vcpu_load(v);
	for (i = 0; i < 1024; i++)
		assert_int_equal(vcpu_write_u64(v, SZ_2M + i * PAGE_SIZE / 2, i), 0);
	vcpu_put(v);
	assert_int_equal(vcpu_level_after_access(vm, SZ_2M + 0x3000, &val), PG_LEVEL_2M);

	/* Split: the frame becomes 4 KiB pages with the same contents. */
	assert_int_equal(host_mem_replace(vm, b->hva + SZ_2M, SZ_2M, HOST_MEM_COPY | HOST_MEM_SMALL,
					  NULL, NULL), 0);
	assert_int_equal(vcpu_level_after_access(vm, SZ_2M + 0x3000, &val), PG_LEVEL_4K);
	assert_int_equal(val, 6);
	/* Collapse: huge again. */
	assert_int_equal(host_mem_replace(vm, b->hva + SZ_2M, SZ_2M, HOST_MEM_COPY | HOST_MEM_HUGE,
					  NULL, NULL), 0);
	assert_int_equal(vcpu_level_after_access(vm, SZ_2M + 0x5000, &val), PG_LEVEL_2M);
	assert_int_equal(val, 10);
	vcpu_load(v);
	for (i = 0; i < 1024; i++) {
		assert_int_equal(vcpu_read_u64(v, SZ_2M + i * PAGE_SIZE / 2, &val), 0);
		assert_int_equal(val, i);
	}
	vcpu_put(v);
	vm_destroy(vm);
	host_mem_destroy(hm);
}

static void test_thp_changes_anon(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	uint64_t val;
	int level;

	assert_int_equal(backing_alloc(&b, BACKING_THP, 4 * SZ_2M), 0);
	assert_int_equal(vm_register_backing(vm, &b), 0);
	assert_int_equal(add_slot(vm, 0, 0, 0, b.size, b.hva), 0);
	vcpu_load(v);
	assert_int_equal(vcpu_write_u64(v, SZ_2M + 0x1000, 99), 0);
	vcpu_put(v);
	if (host_mapping_level(&b, b.hva + SZ_2M) < PG_LEVEL_2M) {
		vm_destroy(vm);
		backing_free(&b);
		TEST_SKIP("host did not back the range with a THP (THP off or no permission)");
	}
	assert_int_equal(vcpu_level_after_access(vm, SZ_2M + 0x1000, &val), PG_LEVEL_2M);
	assert_int_equal(host_mem_replace(vm, b.hva + SZ_2M, SZ_2M, HOST_MEM_COPY | HOST_MEM_SMALL,
					  NULL, NULL), 0);
	assert_int_equal(host_mapping_level(&b, b.hva + SZ_2M), PG_LEVEL_4K);
	level = vcpu_level_after_access(vm, SZ_2M + 0x1000, &val);
	assert_int_equal(level, PG_LEVEL_4K);
	assert_int_equal(val, 99);
	assert_int_equal(host_mem_replace(vm, b.hva + SZ_2M, SZ_2M, HOST_MEM_COPY | HOST_MEM_HUGE,
					  NULL, NULL), 0);
	if (host_mapping_level(&b, b.hva + SZ_2M) == PG_LEVEL_2M) {
		assert_int_equal(vcpu_level_after_access(vm, SZ_2M + 0x1000, &val), PG_LEVEL_2M);
		assert_int_equal(val, 99);
	}
	vm_destroy(vm);
	backing_free(&b);
}

/* ---- aging ---- */

static void test_aging(void **state)
{
	struct vm *vm = new_vm(1);
	struct vcpu *v = vm_get_vcpu(vm, 0);
	struct mem_backing b;
	uint64_t val, i;

	assert_int_equal(backing_alloc(&b, BACKING_ANON_4K, 2 * SZ_2M), 0);
	assert_int_equal(add_slot(vm, 0, 0, 0, b.size, b.hva), 0);
	assert_false(invalidate_test_young(vm, b.hva, b.hva + b.size)); /* nothing mapped */
	vcpu_load(v);
	for (i = 0; i < 16; i++)
		assert_int_equal(vcpu_read_u64(v, i * PAGE_SIZE, &val), 0);
	vcpu_put(v);
	assert_true(invalidate_test_young(vm, b.hva + 15 * PAGE_SIZE, b.hva + 16 * PAGE_SIZE));
	assert_false(invalidate_test_young(vm, b.hva + 16 * PAGE_SIZE, b.hva + b.size));
	assert_true(invalidate_clear_flush_young(vm, b.hva, b.hva + b.size));
	assert_false(invalidate_test_young(vm, b.hva, b.hva + b.size));
	assert_false(invalidate_clear_young(vm, b.hva, b.hva + b.size));
	/* The sptes are still there: aging does not unmap. */
	for (i = 0; i < 16; i++) {
		int level;

		assert_non_null(mmu_lookup_leaf(vm, 0, i, &level));
	}
	/* After the flush, an access walks again and sets A on that page only. */
	vcpu_load(v);
	assert_int_equal(vcpu_read_u64(v, 5 * PAGE_SIZE, &val), 0);
	vcpu_put(v);
	assert_true(invalidate_test_young(vm, b.hva + 5 * PAGE_SIZE + 1, b.hva + 5 * PAGE_SIZE + 2));
	assert_false(invalidate_test_young(vm, b.hva, b.hva + 5 * PAGE_SIZE));
	assert_false(invalidate_test_young(vm, b.hva + 6 * PAGE_SIZE, b.hva + b.size));
	assert_true(invalidate_clear_young(vm, b.hva, b.hva + b.size));
	assert_false(invalidate_test_young(vm, b.hva, b.hva + b.size));
	vm_destroy(vm);
	backing_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_set_per_variant),
		cmocka_unit_test(test_protocol_state),
		cmocka_unit_test(test_memslot_update_waits),
		cmocka_unit_test(test_discard_reads_zeros),
		cmocka_unit_test(test_replace_backing),
		cmocka_unit_test(test_thp_changes_host_mem),
		cmocka_unit_test(test_thp_changes_anon),
		cmocka_unit_test(test_aging),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
