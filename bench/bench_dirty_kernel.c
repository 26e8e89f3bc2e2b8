/* bench_dirty_kernel.c: `rmapvm bench dirty-kernel`: the talk's harvest-time figure for the soft MMU (walk, rmap, tdp) beside the kernel's GET/CLEAR_DIRTY_LOG and dirty rings, one run, equal slot size. */
#include <errno.h>
#include <getopt.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

/* The soft MMU's memslot.h defines the same flags with the same values. */
#undef KVM_MEM_LOG_DIRTY_PAGES
#undef KVM_MEM_READONLY

#include "bench.h"
#include "rmapvm/backing.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/mmu.h"
#include "rmapvm/util.h"

/*
 * One slot of the same size on both sides (default 4 GiB). Soft: page
 * tables built by prefault at 4 KiB, pages dirtied as the write fast path
 * does (dirty_log_inject_writes), spread evenly. Kernel: a 1-vCPU guest in
 * host-command mode (GUEST_F_HOST_CMDS) writes exactly the same pages, the
 * vCPU is paused, and the ioctls are timed on the RAM slot. Only the pages
 * a point needs are ever touched, and one VM serves every point of a mode.
 * Each point is run several times; the median and the spread ((max - min)
 * / median) are printed. Ratios at the end come from this one run.
 */

#define MAX_POINTS  16
#define MAX_RESULTS 64
#define MAX_RUNS    16
#define BIG_POINT   262144ull	/* from here on, at most 3 runs (guest writes cost ~7 us/page) */
#define CMD_TIMEOUT 300.0
#define WF_PAGES    65536ull	/* pages per write-fault measurement */

static const uint64_t default_counts[] = { 1, 16, 256, 4096, 65536, 262144, 1048576 };
static const uint64_t ring_counts[] = { 256, 4096, 32768 };

struct dk_result {
	const char *algo;
	uint64_t dirty;
	double med;
};

struct dk {
	uint64_t slot_bytes, npages;
	int runs;
	bool json;
	uint64_t counts[MAX_POINTS];
	int nr_counts;
	uint64_t *bitmap;
	struct dk_result res[MAX_RESULTS];
	int nr_res;
};

static int runs_for(const struct dk *d, uint64_t count)
{
	return count >= BIG_POINT && d->runs > 3 ? 3 : d->runs;
}

static uint64_t stride_for(const struct dk *d, uint64_t count)
{
	return count ? MAX(d->npages / count, 1) : 1;
}

static uint64_t popcount(const uint64_t *bm, uint64_t npages)
{
	uint64_t n = 0, i;

	for (i = 0; i < DIV_ROUND_UP(npages, 64); i++)
		n += (uint64_t)__builtin_popcountll(bm[i]);
	return n;
}

static void emit_header(const struct dk *d, const char *what)
{
	if (!d->json)
		printf("\n# %s\n%-16s %11s %14s %11s %7s %4s\n", what, "algo", "dirty pages",
		       "harvest ns", "ns/page", "spread", "runs");
}

/* A harvest point: median and spread of @n samples (ns). */
static void emit_point(struct dk *d, const char *algo, const char *side, uint64_t dirty,
		       double *v, int n)
{
	double med = bench_median(v, n), spread = bench_spread(v, n);

	if (d->nr_res < MAX_RESULTS)
		d->res[d->nr_res++] = (struct dk_result){ algo, dirty, med };
	if (d->json)
		printf("{\"bench\":\"dirty-kernel\",\"side\":\"%s\",\"algo\":\"%s\",\"dirty_pages\":%llu,"
		       "\"harvest_ns\":%.0f,\"ns_per_page\":%.3f,\"slot_bytes\":%llu,\"spread\":%.3f,"
		       "\"runs\":%d}\n",
		       side, algo, (unsigned long long)dirty, med, dirty ? med / (double)dirty : 0.0,
		       (unsigned long long)d->slot_bytes, spread, n);
	else
		printf("%-16s %11llu %14.0f %11.3f %7.2f %4d\n", algo, (unsigned long long)dirty, med,
		       dirty ? med / (double)dirty : 0.0, spread, n);
	fflush(stdout);
}

/* Another metric: @v are per-unit costs (ns per entry, ns per page). */
static void emit_metric(struct dk *d, const char *metric, const char *side, const char *unit,
			uint64_t count, double *v, int n)
{
	double med = bench_median(v, n), spread = bench_spread(v, n);

	if (d->json)
		printf("{\"bench\":\"dirty-kernel\",\"metric\":\"%s\",\"side\":\"%s\",\"count\":%llu,"
		       "\"%s\":%.2f,\"slot_bytes\":%llu,\"spread\":%.3f,\"runs\":%d}\n",
		       metric, side, (unsigned long long)count, unit, med,
		       (unsigned long long)d->slot_bytes, spread, n);
	else
		printf("%-5s %-18s %9llu %12.2f %-13s spread %.2f, %d runs\n", side, metric,
		       (unsigned long long)count, med, unit, spread, n);
	fflush(stdout);
}

static const struct dk_result *find_result(const struct dk *d, const char *algo, uint64_t dirty)
{
	int i;

	for (i = 0; i < d->nr_res; i++)
		if (!strcmp(d->res[i].algo, algo) && d->res[i].dirty == dirty)
			return &d->res[i];
	return NULL;
}

/* ---- soft MMU ---- */

/* A soft VM with one logged slot, mapped 4 KiB by prefault, logging as @dcfg says. */
static int soft_build(struct dk *d, const struct dirty_log_config *dcfg, struct vm **vmp,
		      struct mem_backing *b)
{
	struct vm_memory_region mr = { 0 };
	struct vm_config cfg;
	struct vm *vm;
	int64_t mapped;
	int r;

	vm_config_default(&cfg);
	r = vm_create(&cfg, &vm);
	if (r)
		return r;
	r = vm_configure_dirty_log(vm, dcfg);
	if (r)
		goto fail_vm;
	r = backing_alloc(b, BACKING_ANON_4K, d->slot_bytes);
	if (r)
		goto fail_vm;
	mr.memory_size = d->slot_bytes;
	mr.userspace_addr = b->hva;
	mr.flags = KVM_MEM_LOG_DIRTY_PAGES;
	r = vm_set_user_memory_region(vm, &mr);
	if (r)
		goto fail;
	mapped = vm_prefault_memory(vm, 0, 0, d->slot_bytes, PG_LEVEL_4K);
	if (mapped < 0) {
		r = (int)mapped;
		goto fail;
	}
	*vmp = vm;
	return 0;
fail:
	backing_free(b);
fail_vm:
	vm_destroy(vm);
	return r;
}

static void soft_destroy(struct vm *vm, struct mem_backing *b)
{
	vm_destroy(vm);
	backing_free(b);
}

static int soft_inject(struct dk *d, struct vm *vm, uint64_t count, int run)
{
	uint64_t stride = stride_for(d, count);
	int64_t n = dirty_log_inject_writes(vm, 0, (uint64_t)run % stride, count, stride);

	return n < 0 ? (int)n : (uint64_t)n == count ? 0 : -EIO;
}

/* A vCPU writes @count evenly spread pages (loaded on this thread); ns per page. */
static int soft_vcpu_writes(struct dk *d, struct vm *vm, uint64_t count, double *ns)
{
	struct vcpu *vcpu = vm_get_vcpu(vm, 0);
	uint64_t stride = stride_for(d, count), k, t0;
	int r = 0;

	vcpu_load(vcpu);
	t0 = now_ns();
	for (k = 0; k < count && !r; k++)
		r = vcpu_write_u64(vcpu, (k * stride) << PAGE_SHIFT, k + 1);
	*ns = (double)(now_ns() - t0) / (double)count;
	vcpu_put(vcpu); /* out of guest mode: harvest flushes do not wait for this thread */
	return r;
}

/* Bitmap mode, each algorithm: inject, time dirty_log_get; then the vCPU write-fault cost. */
static int soft_bitmap_series(struct dk *d)
{
	struct dirty_log_config dcfg;
	struct mem_backing b;
	struct vm *vm;
	double v[MAX_RUNS];
	uint64_t t0, wf = MIN(WF_PAGES, d->npages);
	int a, c, k, r;

	dirty_log_config_default(&dcfg);
	t0 = now_ns();
	r = soft_build(d, &dcfg, &vm, &b);
	if (r)
		return r;
	if (!d->json)
		printf("# soft: %llu pages mapped 4 KiB by prefault in %.2f s\n",
		       (unsigned long long)d->npages, (double)(now_ns() - t0) / 1e9);
	emit_header(d, "soft MMU, bitmap mode: GET_DIRTY_LOG (get + re-protect + flush)");
	for (a = 0; a < DIRTY_ALGO_NR; a++) {
		r = dirty_log_set_harvest(vm, a, DIRTY_LOCK_WHOLE);
		if (!r)
			r = dirty_log_get(vm, 0, d->bitmap); /* start clean */
		for (c = 0; c < d->nr_counts && !r; c++) {
			uint64_t count = d->counts[c];
			int runs = d->runs;

			for (k = 0; k < runs && !r; k++) {
				r = soft_inject(d, vm, count, k);
				t0 = now_ns();
				if (!r)
					r = dirty_log_get(vm, 0, d->bitmap);
				v[k] = (double)(now_ns() - t0);
				if (!r && popcount(d->bitmap, d->npages) != count)
					r = -EIO;
			}
			if (!r)
				emit_point(d, dirty_log_algo_name(a), "soft", count, v, runs);
		}
		if (r)
			goto out;
	}
	/* Write-fault cost: protected 4 KiB pages, host pages present (warm-up pass). */
	r = dirty_log_set_harvest(vm, DIRTY_ALGO_RMAP, DIRTY_LOCK_WHOLE);
	for (k = -1; k < d->runs && !r; k++) {
		r = soft_vcpu_writes(d, vm, wf, &v[k < 0 ? 0 : k]);
		if (!r)
			r = dirty_log_get(vm, 0, d->bitmap);
	}
	if (!r)
		emit_metric(d, "write_fault_ns", "soft", "ns_per_page", wf, v, d->runs);
out:
	soft_destroy(vm, &b);
	return r;
}

/* Manual protect (rmap): GET copies, CLEAR re-protects the fetched bits of the whole slot. */
static int soft_manual_series(struct dk *d)
{
	struct dirty_log_config dcfg;
	struct mem_backing b;
	struct vm *vm;
	double vg[MAX_RUNS], vc[MAX_RUNS];
	int c, k, r;

	dirty_log_config_default(&dcfg);
	dcfg.mode = DIRTY_MODE_MANUAL;
	r = soft_build(d, &dcfg, &vm, &b);
	if (r)
		return r;
	emit_header(d, "soft MMU, manual protect (rmap): GET copies, CLEAR re-protects");
	for (c = 0; c < d->nr_counts && !r; c++) {
		uint64_t count = d->counts[c];

		for (k = 0; k < d->runs && !r; k++) {
			uint64_t t0, t1;

			r = soft_inject(d, vm, count, k);
			t0 = now_ns();
			if (!r)
				r = dirty_log_get(vm, 0, d->bitmap);
			t1 = now_ns();
			if (!r)
				r = dirty_log_clear(vm, 0, 0, d->npages, d->bitmap);
			vg[k] = (double)(t1 - t0);
			vc[k] = (double)(now_ns() - t1);
			if (!r && popcount(d->bitmap, d->npages) != count)
				r = -EIO;
		}
		if (!r) {
			emit_point(d, "rmap_manual_get", "soft", count, vg, d->runs);
			emit_point(d, "rmap_clear", "soft", count, vc, d->runs);
		}
	}
	soft_destroy(vm, &b);
	return r;
}

static void count_entry(void *opaque, uint32_t slot, uint64_t offset)
{
	(*(uint64_t *)opaque)++;
}

/* Ring mode: inject (pushes to vCPU 0's ring), time harvest + reset, per entry. */
static int soft_ring_series(struct dk *d)
{
	struct dirty_log_config dcfg;
	struct mem_backing b;
	struct vm *vm;
	double v[MAX_RUNS];
	uint64_t got;
	size_t c;
	int k, r;

	dirty_log_config_default(&dcfg);
	dcfg.mode = DIRTY_MODE_RING;
	dcfg.ring_entries = DIRTY_RING_MAX_ENTRIES;
	r = soft_build(d, &dcfg, &vm, &b);
	if (r)
		return r;
	if (!d->json)
		printf("\n# dirty ring harvest + reset (%u entries per vCPU)\n",
		       DIRTY_RING_MAX_ENTRIES);
	for (c = 0; c < ARRAY_SIZE(ring_counts) && !r; c++) {
		uint64_t count = MIN(ring_counts[c], d->npages);

		for (k = 0; k < d->runs && !r; k++) {
			uint64_t t0;
			int n;

			r = soft_inject(d, vm, count, k);
			got = 0;
			t0 = now_ns();
			if (!r) {
				n = dirty_ring_harvest(vm, 0, count_entry, &got);
				r = n < 0 ? n : 0;
			}
			if (!r) {
				n = dirty_ring_reset(vm);
				r = n < 0 ? n : 0;
			}
			v[k] = got ? (double)(now_ns() - t0) / (double)got : 0;
			if (!r && got != count)
				r = -EIO;
		}
		if (!r)
			emit_metric(d, "ring_ns_per_entry", "soft", "ns_per_entry", count, v, d->runs);
		if (count == d->npages)
			break;
	}
	soft_destroy(vm, &b);
	return r;
}

/* ---- the kernel ---- */

struct kvm_side {
	struct kvm_vm *vm;
	struct kvm_region_info ri; /* the RAM slot */
};

static int kvm_build(struct dk *d, struct kvm_side *k, uint32_t ring_entries, char *err,
		     size_t errlen)
{
	struct kvm_vm_config cfg = {
		.mem_bytes = d->slot_bytes,
		.nr_vcpus = 1,
		.nr_slots = 1,
		.backing = BACKING_THP,
		.workload = { .pattern = WL_SWEEP, .write_pct = 100 },
		.guest_flags = GUEST_F_HOST_CMDS,
		.ring_entries = ring_entries,
	};
	int r;

	r = kvm_vm_create(&cfg, &k->vm, err, errlen);
	if (r)
		return r;
	r = kvm_vm_region(k->vm, 1, &k->ri);
	if (!r)
		r = kvm_vm_start(k->vm);
	if (!r)
		r = kvm_vm_pause(k->vm);
	if (r) {
		snprintf(err, errlen, "%s", kvm_vm_error(k->vm));
		kvm_vm_destroy(k->vm);
	}
	return r;
}

/* The guest writes @count evenly spread pages; the vCPU is paused after. ns per page. */
static int kvm_guest_dirty(struct dk *d, struct kvm_side *k, uint64_t count, double *ns)
{
	uint64_t t0;
	int r;

	r = kvm_vm_resume(k->vm);
	t0 = now_ns();
	if (!r)
		r = kvm_vm_guest_write_range(k->vm, 0, count, stride_for(d, count), CMD_TIMEOUT);
	if (ns)
		*ns = (double)(now_ns() - t0) / (double)(count ? count : 1);
	kvm_vm_pause(k->vm);
	return r;
}

static int kvm_get(struct kvm_side *k, uint64_t *bitmap)
{
	struct kvm_dirty_log log = { .slot = k->ri.slot, .dirty_bitmap = bitmap };

	return ioctl(kvm_vm_fd(k->vm), KVM_GET_DIRTY_LOG, &log) ? -errno : 0;
}

static int kvm_clear(struct kvm_side *k, uint64_t *bitmap)
{
	struct kvm_clear_dirty_log clr = {
		.slot = k->ri.slot,
		.num_pages = (uint32_t)k->ri.npages,
		.first_page = 0,
		.dirty_bitmap = bitmap,
	};

	return ioctl(kvm_vm_fd(k->vm), KVM_CLEAR_DIRTY_LOG, &clr) ? -errno : 0;
}

/* Classic KVM_GET_DIRTY_LOG, then the guest's write-fault cost, then manual protect. */
static int kvm_bitmap_series(struct dk *d, const struct kvm_caps *caps)
{
	struct dirty_config dc = { .mode = DIRTY_MODE_BITMAP };
	struct kvm_side k;
	double v[MAX_RUNS], vc[MAX_RUNS], wr[MAX_RUNS];
	uint64_t wf = MIN(WF_PAGES, d->npages), t0;
	char err[512];
	int c, i, r;

	t0 = now_ns();
	r = kvm_build(d, &k, 0, err, sizeof(err));
	if (r) {
		fprintf(stderr, "rmapvm: dirty-kernel: KVM VM: %s\n", err);
		return r;
	}
	if (!d->json)
		printf("\n# kernel (%s): VM with a %llu-page RAM slot, 1 vCPU, in %.2f s; the guest "
		       "writes each point's pages, is paused, the ioctls are timed\n",
		       caps->pvm ? "kvm_pvm, nested" : "kvm", (unsigned long long)k.ri.npages,
		       (double)(now_ns() - t0) / 1e9);
	r = kvm_vm_dirty_start(k.vm, &dc);
	if (!r)
		r = kvm_get(&k, d->bitmap);
	emit_header(d, "kernel, classic KVM_GET_DIRTY_LOG (get + re-protect)");
	for (c = 0; c < d->nr_counts && !r; c++) {
		uint64_t count = d->counts[c];
		int runs = runs_for(d, count);

		for (i = 0; i < runs && !r; i++) {
			r = kvm_guest_dirty(d, &k, count, NULL);
			t0 = now_ns();
			if (!r)
				r = kvm_get(&k, d->bitmap);
			v[i] = (double)(now_ns() - t0);
			if (!r && popcount(d->bitmap, d->npages) != count) {
				fprintf(stderr, "rmapvm: dirty-kernel: the guest dirtied %llu pages, "
						"KVM_GET_DIRTY_LOG reports %llu\n",
					(unsigned long long)count,
					(unsigned long long)popcount(d->bitmap, d->npages));
				r = -EIO;
			}
		}
		if (!r)
			emit_point(d, "kvm_get", "kvm", count, v, runs);
	}
	/* Write-fault cost: the same pages as the soft measurement, all mapped and protected. */
	for (i = -1; i < d->runs && !r; i++) {
		r = kvm_guest_dirty(d, &k, wf, &wr[i < 0 ? 0 : i]);
		if (!r)
			r = kvm_get(&k, d->bitmap);
	}
	if (!r)
		emit_metric(d, "write_fault_ns", "kvm", "ns_per_page", wf, wr, d->runs);
	if (!r)
		r = kvm_vm_dirty_stop(k.vm);
	if (r)
		goto out;

	if (!(caps->manual_protect & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
		printf("# kernel manual protect skipped: no KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2\n");
		goto out;
	}
	dc.mode = DIRTY_MODE_MANUAL;
	r = kvm_vm_dirty_start(k.vm, &dc);
	if (!r)
		r = kvm_get(&k, d->bitmap);
	if (!r)
		r = kvm_clear(&k, d->bitmap);
	emit_header(d, "kernel, manual protect: KVM_GET_DIRTY_LOG copies, KVM_CLEAR_DIRTY_LOG "
		       "re-protects the whole slot's fetched bits");
	for (c = 0; c < d->nr_counts && !r; c++) {
		uint64_t count = d->counts[c];
		int runs = runs_for(d, count);

		for (i = 0; i < runs && !r; i++) {
			uint64_t t1;

			r = kvm_guest_dirty(d, &k, count, NULL);
			t0 = now_ns();
			if (!r)
				r = kvm_get(&k, d->bitmap);
			t1 = now_ns();
			if (!r)
				r = kvm_clear(&k, d->bitmap);
			v[i] = (double)(t1 - t0);
			vc[i] = (double)(now_ns() - t1);
			if (!r && popcount(d->bitmap, d->npages) != count)
				r = -EIO;
		}
		if (!r) {
			emit_point(d, "kvm_manual_get", "kvm", count, v, runs);
			emit_point(d, "kvm_clear", "kvm", count, vc, runs);
		}
	}
	if (!r)
		r = kvm_vm_dirty_stop(k.vm);
out:
	if (r)
		fprintf(stderr, "rmapvm: dirty-kernel: kernel series: %s (%s)\n", strerror(-r),
			kvm_vm_error(k.vm));
	kvm_vm_destroy(k.vm);
	return r;
}

/* Dirty ring: the guest dirties N pages, the vCPU is paused, harvest + KVM_RESET_DIRTY_RINGS. */
static int kvm_ring_series(struct dk *d, const struct kvm_caps *caps)
{
	struct dirty_config dc = { .mode = DIRTY_MODE_RING };
	uint32_t entries = MIN(caps->ring_max_bytes / 16, 65536u);
	struct kvm_side k;
	double v[MAX_RUNS];
	char err[512];
	uint64_t got;
	size_t c;
	int i, r;

	if (!entries) {
		printf("# kernel dirty ring skipped: no KVM_CAP_DIRTY_LOG_RING\n");
		return 0;
	}
	r = kvm_build(d, &k, entries, err, sizeof(err));
	if (r) {
		fprintf(stderr, "rmapvm: dirty-kernel: KVM ring VM: %s\n", err);
		return r;
	}
	if (!d->json)
		printf("\n# kernel dirty ring harvest + KVM_RESET_DIRTY_RINGS (%u entries per vCPU)\n",
		       entries);
	r = kvm_vm_dirty_start(k.vm, &dc);
	got = 0;
	if (!r && kvm_vm_harvest_rings(k.vm, count_entry, &got) < 0)
		r = -EIO;
	for (c = 0; c < ARRAY_SIZE(ring_counts) && !r; c++) {
		uint64_t count = MIN(ring_counts[c], d->npages);

		if (count > entries / 2)
			break;
		for (i = 0; i < d->runs && !r; i++) {
			uint64_t t0;
			int n;

			r = kvm_guest_dirty(d, &k, count, NULL);
			got = 0;
			t0 = now_ns();
			if (!r) {
				n = kvm_vm_harvest_rings(k.vm, count_entry, &got);
				r = n < 0 ? n : 0;
			}
			/* Entries also cover the guest's own bookkeeping pages (system slot). */
			v[i] = got ? (double)(now_ns() - t0) / (double)got : 0;
			if (!r && got < count)
				r = -EIO;
		}
		if (!r)
			emit_metric(d, "ring_ns_per_entry", "kvm", "ns_per_entry", count, v, d->runs);
		if (count == d->npages)
			break;
	}
	if (r)
		fprintf(stderr, "rmapvm: dirty-kernel: kernel ring series: %s (%s)\n", strerror(-r),
			kvm_vm_error(k.vm));
	kvm_vm_destroy(k.vm);
	return r;
}

/* ---- summary ---- */

static void ratio(struct dk *d, const char *num, const char *den, uint64_t dirty)
{
	const struct dk_result *a = find_result(d, num, dirty), *b = find_result(d, den, dirty);

	if (!a || !b || b->med <= 0)
		return;
	if (d->json)
		printf("{\"bench\":\"dirty-kernel\",\"metric\":\"ratio\",\"num\":\"%s\",\"den\":\"%s\","
		       "\"dirty_pages\":%llu,\"slot_bytes\":%llu,\"value\":%.3f}\n",
		       num, den, (unsigned long long)dirty, (unsigned long long)d->slot_bytes,
		       a->med / b->med);
	else
		printf("%-16s / %-16s %9.2fx  (%.3f vs %.3f ns per dirty page)\n", num, den,
		       a->med / b->med, a->med / (double)dirty, b->med / (double)dirty);
}

static void summary(struct dk *d)
{
	uint64_t top = d->counts[d->nr_counts - 1], small = MIN(4096ull, top);
	char sz[32];

	if (!d->json)
		printf("\n# same run, %s slot, at %llu dirty pages:\n",
		       fmt_bytes(d->slot_bytes, sz, sizeof(sz)), (unsigned long long)top);
	ratio(d, "kvm_get", "rmap", top);
	ratio(d, "kvm_get", "tdp", top);
	ratio(d, "walk", "rmap", top);
	ratio(d, "kvm_clear", "rmap_clear", top);
	ratio(d, "kvm_manual_get", "rmap_manual_get", top);
	if (!d->json)
		printf("# at %llu dirty pages:\n", (unsigned long long)small);
	ratio(d, "kvm_get", "rmap", small);
	ratio(d, "walk", "rmap", small);
}

static int bench_dirty_kernel_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "slot-size", required_argument, NULL, 's' },
		{ "runs", required_argument, NULL, 'r' },
		{ "no-kvm", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct dk *d = calloc(1, sizeof(*d));
	bool quick = false, no_kvm = false, size_set = false, runs_set = false;
	struct kvm_caps caps;
	uint64_t v, t0 = now_ns();
	size_t i;
	int c, r = 0, kr;

	if (!d)
		return 1;
	d->slot_bytes = 4ull << 30;
	d->runs = 5;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			d->json = true;
			break;
		case 'q':
			quick = true;
			break;
		case 's':
			if (parse_size(optarg, &v) || v < (1ull << 20) || v % (2ull << 20) ||
			    v > (64ull << 30)) {
				fprintf(stderr, "rmapvm: --slot-size: '%s' is not a multiple of 2 MiB in "
						"[2M, 64G]\n",
					optarg);
				free(d);
				return 2;
			}
			d->slot_bytes = v;
			size_set = true;
			break;
		case 'r':
			if (parse_u64(optarg, &v) || !v || v > MAX_RUNS) {
				fprintf(stderr, "rmapvm: --runs: '%s' is not in 1..%d\n", optarg,
					MAX_RUNS);
				free(d);
				return 2;
			}
			d->runs = (int)v;
			runs_set = true;
			break;
		case 'n':
			no_kvm = true;
			break;
		case 'h':
			printf("usage: rmapvm bench dirty-kernel [--json] [--quick] [--slot-size SIZE] "
			       "[--runs N] [--no-kvm]\n"
			       "Harvest time against dirty pages (1 .. 1M, clipped to the slot) at equal\n"
			       "slot size, in one run: the soft MMU's walk, rmap and tdp GET_DIRTY_LOG and\n"
			       "rmap manual GET/CLEAR, beside the kernel's KVM_GET_DIRTY_LOG (kvm_get) and\n"
			       "manual protect (kvm_manual_get, kvm_clear); dirty-ring harvest + reset per\n"
			       "entry and the vCPU write-fault cost under logging, soft and kernel. The\n"
			       "kernel guest writes exactly the pages of each point. Default slot 4 GiB and\n"
			       "5 runs per point (3 from 256K dirty pages); --quick: 256 MiB, 3 runs.\n"
			       "--json: one object per point (side, algo, dirty_pages, harvest_ns,\n"
			       "ns_per_page, slot_bytes, spread, runs); other figures carry \"metric\".\n"
			       "Without /dev/kvm (or with --no-kvm) the kernel series are skipped.\n");
			free(d);
			return 0;
		default:
			free(d);
			return 2;
		}
	}
	if (quick && !size_set)
		d->slot_bytes = 256ull << 20;
	if (quick && !runs_set)
		d->runs = 3;
	d->npages = d->slot_bytes >> PAGE_SHIFT;
	for (i = 0; i < ARRAY_SIZE(default_counts); i++) {
		uint64_t n = MIN(default_counts[i], d->npages);

		if (!d->nr_counts || d->counts[d->nr_counts - 1] != n)
			d->counts[d->nr_counts++] = n;
	}
	d->bitmap = calloc(DIV_ROUND_UP(d->npages, 64), sizeof(uint64_t));
	if (!d->bitmap) {
		free(d);
		return 1;
	}

	kr = no_kvm ? -ENOENT : kvm_probe(&caps);
	if (kr) {
		char why[128];

		snprintf(why, sizeof(why), "%s%s", no_kvm ? "--no-kvm" : "/dev/kvm: ",
			 no_kvm ? "" : strerror(-kr));
		if (d->json)
			printf("{\"bench\":\"dirty-kernel\",\"skipped\":\"kernel series\",\"reason\":"
			       "\"%s\"}\n",
			       why);
		else
			printf("# kernel series skipped (%s); soft series only\n", why);
	}
	r = soft_bitmap_series(d);
	if (!r)
		r = soft_manual_series(d);
	if (!r)
		r = soft_ring_series(d);
	if (r)
		fprintf(stderr, "rmapvm: dirty-kernel: soft series: %s\n", strerror(-r));
	if (!r && !kr) {
		r = kvm_bitmap_series(d, &caps);
		if (!r)
			r = kvm_ring_series(d, &caps);
	}
	if (!r)
		summary(d);
	if (!d->json)
		printf("# total %.1f s\n", (double)(now_ns() - t0) / 1e9);
	free(d->bitmap);
	free(d);
	return r ? 1 : 0;
}

BENCH_REGISTER("dirty-kernel", bench_dirty_kernel_main,
	       "harvest time vs dirty pages, soft walk/rmap/tdp beside the kernel's GET/CLEAR, rings")
