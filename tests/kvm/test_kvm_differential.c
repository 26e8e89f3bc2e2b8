/* test_kvm_differential.c: the soft and KVM backends run the same seeded write trace; the pages each reports dirty per round must be identical and equal the trace's. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rmapvm/backend.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/mmu.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

/*
 * A trace is, per round, a list of (vCPU, RAM page) writes generated from a
 * seed: a hot set rewritten every round, a sequential run that crosses
 * 64-page words and the memslot boundary, the slots' last (unaligned tail)
 * pages, random pages, and now and then an empty round. Page numbers count
 * over all RAM; each belongs to the vCPU whose region holds it in the KVM
 * guest's split.
 *
 * The KVM guest (GUEST_F_HOST_CMDS) stamps the listed pages itself
 * (kvm_vm_guest_write_list), then the host pauses it. The soft VM's vCPU
 * threads are never started: the test thread loads each vCPU in turn and
 * stores the same stamps with vcpu_write_u64(). Then both are harvested
 * (KVM: KVM_GET_DIRTY_LOG, GET + ranged CLEAR, or rings; soft: the raw
 * dirty_log_get() with each algorithm, get + clear, the backend's ranged
 * harvest, or rings), every slot, as a set of RAM page numbers. The two
 * sets and the trace's must be equal, round after round; at the end the
 * two RAMs must hold the same stamps and the guest's own verification must
 * pass. The check is shown to fail: with one page dropped from one side's
 * set, and with the soft MMU told to leave one word of pages writable
 * (MMU_DEBUG_SKIP_REPROTECT_WORD) so that later writes there go unlogged.
 */

#define NR_VCPUS  2
#define NR_SLOTS  2
#define MEM_BYTES ((16ull << 20) + 3 * 4096) /* slots do not end on a 64-page boundary */
#define NR_ROUNDS 24
#define MAX_REGIONS 8
#define RING_ENTRIES 4096
#define HOT_PAGES 32
#define TIMEOUT_S 60.0

struct diff {
	enum dirty_mode mode;
	bool initially_set;
	uint64_t seed;

	struct kvm_vm *kvm;
	struct kvm_region_info kr[MAX_REGIONS];
	int nkr;

	struct soft_vm *svm;
	struct vm *vm;
	struct backend *sbe;
	struct backend_region sr[MAX_REGIONS];
	int nsr;

	uint64_t ram_pages, words;
	uint64_t vfirst[NR_VCPUS], vn[NR_VCPUS];
	uint64_t *want, *got_kvm, *got_soft, *scratch;
	uint32_t *list;		/* this round's trace: RAM page numbers, in order */
	uint64_t nlist;
	uint32_t round;
	uint64_t rng;
	uint64_t total_pages;	/* dirty pages compared, all rounds */
};

static void set_bit64(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ull << (i % 64);
}

static bool test_bit64(const uint64_t *bm, uint64_t i)
{
	return bm[i / 64] >> (i % 64) & 1;
}

static uint64_t popcount(const uint64_t *bm, uint64_t words)
{
	uint64_t n = 0, i;

	for (i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

/* set_diff() - pages in exactly one of @a, @b; the first of them in *@first. */
static uint64_t set_diff(const uint64_t *a, const uint64_t *b, uint64_t words, uint64_t *first)
{
	uint64_t n = 0, i;

	*first = UINT64_MAX;
	for (i = 0; i < words; i++) {
		uint64_t x = a[i] ^ b[i];

		if (x && *first == UINT64_MAX)
			*first = i * 64 + (uint64_t)__builtin_ctzll(x);
		n += (uint64_t)__builtin_popcountll(x);
	}
	return n;
}

static int owner_of(const struct diff *d, uint64_t page)
{
	int v;

	for (v = 0; v < NR_VCPUS; v++)
		if (page >= d->vfirst[v] && page - d->vfirst[v] < d->vn[v])
			return v;
	return -1;
}

/* ---- setup ---- */

static void diff_setup(struct diff *d, enum dirty_mode mode, bool initially_set, uint64_t seed)
{
	struct kvm_vm_config kcfg = {
		.mem_bytes = MEM_BYTES,
		.nr_vcpus = NR_VCPUS,
		.nr_slots = NR_SLOTS,
		.backing = BACKING_THP,
		.workload = { .pattern = WL_SWEEP, .write_pct = 100 },
		.guest_flags = GUEST_F_HOST_CMDS | GUEST_F_VERIFY_END,
		.ring_entries = mode == DIRTY_MODE_RING ? RING_ENTRIES : 0,
	};
	struct soft_vm_config scfg = {
		.mem_bytes = MEM_BYTES,
		.vcpus = NR_VCPUS,
		.slots = NR_SLOTS,
		.backing = BACKING_THP,
		.workload = { .pattern = WL_SWEEP, .write_pct = 100 },
		.lock_mode = MMU_LOCK_EXCLUSIVE,
	};
	struct dirty_config dc = {
		.mode = mode,
		.initially_set = initially_set,
		.ring_entries = RING_ENTRIES,
	};
	struct kvm_caps caps;
	char err[512];
	int i, r;

	memset(d, 0, sizeof(*d));
	d->mode = mode;
	d->initially_set = initially_set;
	d->seed = d->rng = seed;
	assert_int_equal(kvm_probe(&caps), 0);
	if (mode == DIRTY_MODE_RING && caps.ring_max_bytes < RING_ENTRIES * 16)
		TEST_SKIP("ring mode: this kernel offers %u bytes of dirty ring", caps.ring_max_bytes);
	if (mode == DIRTY_MODE_MANUAL &&
	    (!(caps.manual_protect & 1) || (initially_set && !(caps.manual_protect & 2))))
		TEST_SKIP("manual mode: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags 0x%x",
			  caps.manual_protect);

	r = kvm_vm_create(&kcfg, &d->kvm, err, sizeof(err));
	if (r)
		fail_msg("kvm_vm_create: %s", err);
	r = kvm_vm_dirty_start(d->kvm, &dc);
	if (r)
		fail_msg("kvm_vm_dirty_start(%s): %s", dirty_mode_name(mode), kvm_vm_error(d->kvm));
	d->nkr = kvm_vm_nr_regions(d->kvm);
	assert_true(d->nkr == NR_SLOTS + 1 && d->nkr <= MAX_REGIONS);
	for (i = 0; i < d->nkr; i++)
		assert_int_equal(kvm_vm_region(d->kvm, i, &d->kr[i]), 0);
	for (i = 0; i < NR_VCPUS; i++)
		assert_int_equal(kvm_vm_vcpu_region(d->kvm, i, &d->vfirst[i], &d->vn[i]), 0);
	assert_int_equal(kvm_vm_start(d->kvm), 0);
	assert_int_equal(kvm_vm_pause(d->kvm), 0);

	assert_int_equal(soft_vm_create(&scfg, &d->svm), 0);
	d->vm = soft_vm_vm(d->svm);
	assert_int_equal(soft_backend_create(d->svm, &d->sbe), 0);
	assert_int_equal(d->sbe->ops->dirty_start(d->sbe, &dc), 0);
	d->nsr = d->sbe->ops->get_regions(d->sbe, d->sr, MAX_REGIONS);
	assert_int_equal(d->nsr, NR_SLOTS);

	d->ram_pages = MEM_BYTES >> 12;
	d->words = DIV_ROUND_UP(d->ram_pages, 64);
	d->want = calloc(d->words, 8);
	d->got_kvm = calloc(d->words, 8);
	d->got_soft = calloc(d->words, 8);
	d->scratch = calloc(d->words + 1, 8);
	d->list = calloc(GUEST_LIST_MAX, sizeof(*d->list));
	assert_true(d->want && d->got_kvm && d->got_soft && d->scratch && d->list);
}

static void diff_teardown(struct diff *d)
{
	if (d->sbe)
		d->sbe->ops->destroy(d->sbe);
	soft_vm_destroy(d->svm);
	kvm_vm_destroy(d->kvm);
	free(d->want);
	free(d->got_kvm);
	free(d->got_soft);
	free(d->scratch);
	free(d->list);
}

/* ---- the trace ---- */

static void trace_add(struct diff *d, uint64_t page)
{
	if (d->nlist < GUEST_LIST_MAX && page < d->ram_pages) {
		d->list[d->nlist++] = (uint32_t)page;
		set_bit64(d->want, page);
	}
}

/* The writes of round d->round, from the seed (deterministic). */
static void trace_round(struct diff *d)
{
	uint64_t n, k, start, len;
	int v, i;

	d->nlist = 0;
	memset(d->want, 0, d->words * 8);
	if (d->round % 5 == 3)
		return; /* an empty round: nobody reports anything */
	for (v = 0; v < NR_VCPUS; v++)
		for (k = 0; k < HOT_PAGES; k++)
			trace_add(d, d->vfirst[v] + (k * 7 + d->round) % HOT_PAGES);
	/* A sequential run, wrapping, crossing words (and the slot boundary at times). */
	start = test_rand(&d->rng) % d->ram_pages;
	len = 1 + test_rand(&d->rng) % 300;
	if (d->round % 3 == 0)
		start = d->kr[1].npages - len / 2; /* straddles RAM slots 1 and 2 */
	for (k = 0; k < len; k++)
		trace_add(d, (start + k) % d->ram_pages);
	/* The last pages of the RAM slots (their bitmaps' partial last words). */
	if (d->round % 2)
		for (i = 1; i < d->nkr; i++)
			trace_add(d, (d->kr[i].gpa - GUEST_RAM_GPA) / 4096 + d->kr[i].npages - 1);
	/* Random pages, some of them twice. */
	n = test_rand(&d->rng) % 1200;
	for (k = 0; k < n; k++) {
		uint64_t p = test_rand(&d->rng) % d->ram_pages;

		trace_add(d, p);
		if (k % 97 == 0)
			trace_add(d, p);
	}
}

/* ---- running it ---- */

static void kvm_run_round(struct diff *d)
{
	assert_int_equal(kvm_vm_resume(d->kvm), 0);
	if (kvm_vm_guest_write_list(d->kvm, d->list, d->nlist, TIMEOUT_S))
		fail_msg("round %u: guest write command: %s", d->round, kvm_vm_error(d->kvm));
	assert_int_equal(kvm_vm_pause(d->kvm), 0);
}

static void soft_run_round(struct diff *d)
{
	int v;

	for (v = 0; v < NR_VCPUS; v++) {
		struct vcpu *vcpu = vm_get_vcpu(d->vm, v);
		uint64_t k;

		vcpu_load(vcpu);
		for (k = 0; k < d->nlist; k++) {
			uint64_t p = d->list[k];

			if (owner_of(d, p) != v)
				continue;
			if (vcpu_write_u64(vcpu, p << 12, stamp_make(v, d->round, p - d->vfirst[v])))
				fail_msg("soft vCPU %d: write of page %llu failed", v,
					 (unsigned long long)p);
		}
		vcpu_put(vcpu); /* outside guest mode: harvests' TLB flushes do not wait for us */
	}
}

struct ring_ctx {
	struct diff *d;
	const struct backend_region *sr;	/* soft regions, or NULL: KVM */
	uint64_t *out;
};

static void ring_entry(void *opaque, uint32_t slot, uint64_t offset)
{
	struct ring_ctx *c = opaque;
	struct diff *d = c->d;
	int i;

	if (c->sr) {
		for (i = 0; i < d->nsr; i++)
			if (c->sr[i].slot == slot) {
				assert_true(offset < c->sr[i].size / 4096);
				set_bit64(c->out, c->sr[i].gpa / 4096 + offset);
				return;
			}
		fail_msg("soft ring: entry of unknown slot %u", slot);
	}
	for (i = 0; i < d->nkr; i++)
		if (d->kr[i].slot == slot) {
			assert_true(offset < d->kr[i].npages);
			if (d->kr[i].ram)
				set_bit64(c->out, (d->kr[i].gpa - GUEST_RAM_GPA) / 4096 + offset);
			return;
		}
	fail_msg("KVM ring: entry of unknown slot %u", slot);
}

/* OR a slot bitmap of @n pages into the RAM set at page @base. */
static void merge(uint64_t *out, uint64_t base, const uint64_t *bm, uint64_t n)
{
	uint64_t i;

	for (i = 0; i < n; i++)
		if (test_bit64(bm, i))
			set_bit64(out, base + i);
}

/* Harvest [0, n) of a slot in chunks of @chunk pages (0: whole) with @fn. */
typedef int (*range_fn)(struct diff *d, uint32_t slot, uint64_t first, uint64_t n, uint64_t *bm);

static void harvest_chunks(struct diff *d, range_fn fn, uint32_t slot, uint64_t npages,
			   uint64_t chunk, uint64_t *bm, const char *what)
{
	uint64_t first;

	if (!chunk)
		chunk = ALIGN_UP(npages, 64);
	memset(bm, 0, DIV_ROUND_UP(npages, 64) * 8);
	for (first = 0; first < npages; first += chunk) {
		uint64_t len = MIN(chunk, npages - first);
		int r = fn(d, slot, first, len, bm + first / 64);

		if (r)
			fail_msg("round %u: %s harvest of slot %u [%llu,+%llu): %s", d->round, what,
				 slot, (unsigned long long)first, (unsigned long long)len,
				 strerror(-r));
	}
}

static int kvm_range(struct diff *d, uint32_t slot, uint64_t first, uint64_t n, uint64_t *bm)
{
	return kvm_vm_harvest_range(d->kvm, slot, first, n, bm);
}

static int soft_backend_range(struct diff *d, uint32_t slot, uint64_t first, uint64_t n,
			      uint64_t *bm)
{
	return d->sbe->ops->harvest_range(d->sbe, slot, first, n, bm);
}

/* Manual protect by hand: GET copies the slot, CLEAR re-protects exactly what it fetched. */
static int soft_manual_range(struct diff *d, uint32_t slot, uint64_t first, uint64_t n,
			     uint64_t *bm)
{
	int r = 0;

	if (first == 0)
		r = dirty_log_get(d->vm, slot, d->scratch);
	if (r)
		return r;
	memcpy(bm, d->scratch + first / 64, DIV_ROUND_UP(n, 64) * 8);
	if (n % 64)
		bm[n / 64] &= (1ull << (n % 64)) - 1;
	return dirty_log_clear(d->vm, slot, first, n, bm);
}

static const uint64_t chunks[] = { 0, 64, 512, 128, 0, 4096 };

static void kvm_harvest(struct diff *d, uint64_t *out)
{
	int i;

	memset(out, 0, d->words * 8);
	if (d->mode == DIRTY_MODE_RING) {
		struct ring_ctx c = { .d = d, .out = out };

		if (kvm_vm_harvest_rings(d->kvm, ring_entry, &c) < 0)
			fail_msg("round %u: KVM ring harvest: %s", d->round, kvm_vm_error(d->kvm));
		return;
	}
	for (i = 0; i < d->nkr; i++) {
		const struct kvm_region_info *ri = &d->kr[i];
		uint64_t *tmp = calloc(DIV_ROUND_UP(ri->npages, 64), 8);

		assert_non_null(tmp);
		harvest_chunks(d, kvm_range, ri->slot, ri->npages,
			       chunks[(d->round + (uint32_t)i) % ARRAY_SIZE(chunks)], tmp, "KVM");
		if (ri->ram)
			merge(out, (ri->gpa - GUEST_RAM_GPA) / 4096, tmp, ri->npages);
		free(tmp);
	}
}

static void soft_harvest(struct diff *d, uint64_t *out)
{
	int i;

	memset(out, 0, d->words * 8);
	if (d->mode == DIRTY_MODE_RING) {
		struct ring_ctx c = { .d = d, .sr = d->sr, .out = out };

		assert_true(d->sbe->ops->harvest_rings(d->sbe, ring_entry, &c) >= 0);
		return;
	}
	for (i = 0; i < d->nsr; i++) {
		const struct backend_region *sr = &d->sr[i];
		uint64_t npages = sr->size / 4096;
		uint64_t *tmp = calloc(DIV_ROUND_UP(npages, 64), 8);
		uint32_t how = (d->round + (uint32_t)i) % 4;
		int r;

		assert_non_null(tmp);
		if (d->mode == DIRTY_MODE_BITMAP && how < 3) {
			/* KVM_GET_DIRTY_LOG's analogue with each harvest algorithm in turn. */
			static const enum dirty_log_algo algos[] = { DIRTY_ALGO_RMAP, DIRTY_ALGO_TDP,
								     DIRTY_ALGO_WALK };

			assert_int_equal(dirty_log_set_harvest(d->vm, algos[how], DIRTY_LOCK_WHOLE), 0);
			r = dirty_log_get(d->vm, sr->slot, tmp);
			if (r)
				fail_msg("round %u: soft dirty_log_get(%s): %s", d->round,
					 dirty_log_algo_name(algos[how]), strerror(-r));
		} else if (d->mode == DIRTY_MODE_MANUAL && how < 2) {
			harvest_chunks(d, soft_manual_range, sr->slot, npages, how ? 64 : 0, tmp,
				       "soft get+clear");
		} else {
			harvest_chunks(d, soft_backend_range, sr->slot, npages, 128, tmp,
				       "soft backend");
		}
		merge(out, sr->gpa / 4096, tmp, npages);
		free(tmp);
	}
}

/*
 * One round: both sides write the trace and are harvested. Returns the
 * number of pages on which soft and KVM disagree, or the trace and either
 * side, and describes the first in @msg.
 */
static uint64_t diff_round(struct diff *d, bool write, char *msg, size_t len)
{
	uint64_t first, n_sk, n_ws, n_wk;

	if (write) {
		trace_round(d);
		kvm_run_round(d);
		soft_run_round(d);
	}
	kvm_harvest(d, d->got_kvm);
	soft_harvest(d, d->got_soft);
	n_sk = set_diff(d->got_soft, d->got_kvm, d->words, &first);
	if (n_sk) {
		snprintf(msg, len, "round %u (%s): soft and KVM differ on %llu pages, first page %llu "
				   "(soft %d, KVM %d, trace %d)",
			 d->round, dirty_mode_name(d->mode), (unsigned long long)n_sk,
			 (unsigned long long)first, test_bit64(d->got_soft, first),
			 test_bit64(d->got_kvm, first), test_bit64(d->want, first));
		return n_sk;
	}
	n_ws = set_diff(d->want, d->got_soft, d->words, &first);
	n_wk = set_diff(d->want, d->got_kvm, d->words, &first);
	if (n_ws || n_wk) {
		snprintf(msg, len, "round %u (%s): both sides differ from the trace on %llu pages, "
				   "first page %llu (trace %d)",
			 d->round, dirty_mode_name(d->mode), (unsigned long long)n_ws,
			 (unsigned long long)first, test_bit64(d->want, first));
		return n_ws + n_wk;
	}
	d->total_pages += popcount(d->want, d->words);
	return 0;
}

/* After the rounds: same stamps in both RAMs, and the guest verifies its own. */
static void diff_finish(struct diff *d)
{
	const uint8_t *soft_ram = (const uint8_t *)soft_vm_backing(d->svm)->hva;
	uint64_t p, written = 0;

	for (p = 0; p < d->ram_pages; p++) {
		uint64_t k = *kvm_vm_ram_page(d->kvm, p), s;

		memcpy(&s, soft_ram + p * 4096, 8);
		if (k != s)
			fail_msg("RAM page %llu: KVM holds 0x%llx, soft 0x%llx", (unsigned long long)p,
				 (unsigned long long)k, (unsigned long long)s);
		written += k != 0;
	}
	assert_int_equal(kvm_vm_resume(d->kvm), 0);
	assert_int_equal(kvm_vm_request_stop(d->kvm), 0);
	if (kvm_vm_wait(d->kvm, TIMEOUT_S))
		fail_msg("guest: %s", kvm_vm_error(d->kvm));
	printf("# %s%s: %u rounds, %llu dirty pages compared, %llu pages written, identical\n",
	       dirty_mode_name(d->mode), d->initially_set ? "+initially_set" : "", d->round,
	       (unsigned long long)d->total_pages, (unsigned long long)written);
}

static void run_differential(enum dirty_mode mode, bool initially_set, uint64_t seed)
{
	struct diff d;
	char msg[512];

	TEST_REQUIRE_KVM();
	diff_setup(&d, mode, initially_set, seed);
	if (initially_set) {
		/* Round 0: enabling set every bit; both report all RAM. */
		memset(d.want, 0, d.words * 8);
		for (uint64_t p = 0; p < d.ram_pages; p++)
			set_bit64(d.want, p);
		if (diff_round(&d, false, msg, sizeof(msg)))
			fail_msg("%s", msg);
	}
	for (d.round = 1; d.round <= NR_ROUNDS; d.round++)
		if (diff_round(&d, true, msg, sizeof(msg)))
			fail_msg("%s", msg);
	d.round--;
	diff_finish(&d);
	diff_teardown(&d);
}

static void test_bitmap(void **state)
{
	run_differential(DIRTY_MODE_BITMAP, false, 0x5eed0001);
}

static void test_manual(void **state)
{
	run_differential(DIRTY_MODE_MANUAL, false, 0x5eed0002);
}

static void test_manual_initially_set(void **state)
{
	run_differential(DIRTY_MODE_MANUAL, true, 0x5eed0003);
}

static void test_ring(void **state)
{
	run_differential(DIRTY_MODE_RING, false, 0x5eed0004);
}

/* The comparison itself: one page dropped from one side is found, and named. */
static void test_compare_detects_a_dropped_page(void **state)
{
	uint64_t a[4] = { 0 }, b[4], first;

	a[0] = 0xf0f0;
	a[2] = 1ull << 63;
	a[3] = 0x5;
	memcpy(b, a, sizeof(a));
	assert_int_equal(set_diff(a, b, 4, &first), 0);
	b[2] &= ~(1ull << 63);
	assert_int_equal(set_diff(a, b, 4, &first), 1);
	assert_int_equal(first, 2 * 64 + 63);
}

/*
 * End to end: the real rounds agree, then one page dropped from the soft
 * side's set of a round is reported; and a soft MMU that leaves one word of
 * pages writable after a harvest loses later writes there, which the
 * differential catches.
 */
static void test_differential_can_fail(void **state)
{
	struct diff d;
	char msg[512] = "";
	uint64_t bad = 0, first;
	int rounds_failed = 0;

	TEST_REQUIRE_KVM();
	diff_setup(&d, DIRTY_MODE_BITMAP, false, 0x5eed0005);
	d.round = 1;
	assert_int_equal(diff_round(&d, true, msg, sizeof(msg)), 0);
	first = d.list[0];
	assert_true(test_bit64(d.got_soft, first));
	d.got_soft[first / 64] &= ~(1ull << (first % 64));
	assert_int_equal(set_diff(d.got_soft, d.got_kvm, d.words, &bad), 1);
	assert_int_equal(bad, first);

	mmu_debug_set_faults(d.vm, MMU_DEBUG_SKIP_REPROTECT_WORD);
	for (d.round = 2; d.round <= 6; d.round++) {
		uint64_t n = diff_round(&d, true, msg, sizeof(msg));

		if (n) {
			rounds_failed++;
			printf("# sabotaged soft MMU caught: %s\n", msg);
		}
	}
	mmu_debug_set_faults(d.vm, 0);
	assert_true(rounds_failed > 0);
	diff_teardown(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_compare_detects_a_dropped_page),
		cmocka_unit_test(test_bitmap),
		cmocka_unit_test(test_manual),
		cmocka_unit_test(test_manual_initially_set),
		cmocka_unit_test(test_ring),
		cmocka_unit_test(test_differential_can_fail),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
