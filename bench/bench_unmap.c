/* bench_unmap.c: `rmapvm bench unmap`: cost of invalidating 2 MiB of guest memory per unmap variant, slots and mapping size; 128 GiB whole-guest; real KVM. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"
#include "rmapvm/backing.h"
#include "rmapvm/invalidate.h"
#include "rmapvm/kvm.h"
#include "rmapvm/mmu.h"
#include "rmapvm/util.h"

/*
 * Each point: a VM with @slots memslots laid end to end (each at least
 * 2 MiB), all of it mapped by vm_prefault_memory() at 4 KiB or 2 MiB (the
 * memory itself is never touched), then K 2 MiB chunks spread over the
 * guest are invalidated one notifier call each (invalidate_range_start +
 * _end over the chunk, as a THP swap-out does) and timed; the chunks are
 * mapped again between runs. ns_per_2m is the median over runs.
 */

struct unmap_opts {
	bool json;
	bool quick;
	int runs;
	uint64_t mem;		/* guest bytes for the slot sweep (each slot >= 2 MiB) */
	uint64_t big;		/* whole-guest scenario bytes; 0 = skip */
	bool kernel;		/* measure real KVM where /dev/kvm exists */
	bool variant_on[UNMAP_NR_VARIANTS];
};

struct unmap_env {
	struct vm *vm;
	struct mem_backing b;
	uint64_t slot_bytes;
	int nslots;
	int level;
};

static void env_destroy(struct unmap_env *env)
{
	if (env->vm)
		vm_destroy(env->vm);
	if (env->b.hva)
		backing_free(&env->b);
	memset(env, 0, sizeof(*env));
}

/* @nslots slots of @slot_bytes at gpa 0.., hva contiguous, all prefaulted at @level. */
static int env_create(struct unmap_env *env, int nslots, uint64_t slot_bytes, int level)
{
	struct vm_config cfg;
	int64_t mapped;
	int i, r;

	memset(env, 0, sizeof(*env));
	vm_config_default(&cfg);
	r = vm_create(&cfg, &env->vm);
	if (r)
		return r;
	r = backing_alloc(&env->b, BACKING_ANON_4K, (size_t)slot_bytes * nslots);
	if (r)
		goto fail;
	for (i = 0; i < nslots; i++) {
		struct vm_memory_region mr = {
			.slot = (uint32_t)i,
			.guest_phys_addr = (gpa_t)i * slot_bytes,
			.memory_size = slot_bytes,
			.userspace_addr = env->b.hva + (hva_t)i * slot_bytes,
		};

		r = vm_set_user_memory_region(env->vm, &mr);
		if (r)
			goto fail;
	}
	env->slot_bytes = slot_bytes;
	env->nslots = nslots;
	env->level = level;
	mapped = vm_prefault_memory(env->vm, 0, 0, slot_bytes * nslots, level);
	if (mapped < 0) {
		r = (int)mapped;
		goto fail;
	}
	return 0;
fail:
	env_destroy(env);
	return r;
}

static uint64_t env_leaves(struct unmap_env *env)
{
	struct vm_stats st;

	vm_get_stats(env->vm, &st);
	return st.leaf_sptes[0] + st.leaf_sptes[1] + st.leaf_sptes[2];
}

/*
 * Invalidate @k chunks of 2 MiB spread over the guest with @variant; ns per
 * chunk, or -errno. *@zapped gets the sptes removed per chunk.
 */
static double measure_chunks(struct unmap_env *env, enum unmap_variant variant, uint64_t k,
			     double *zapped)
{
	uint64_t total = env->slot_bytes * env->nslots, nchunks = total / SZ_2M, j, t0, t1;
	uint64_t before, after;
	int r;

	invalidate_set_variant(env->vm, variant);
	before = env_leaves(env);
	t0 = now_ns();
	for (j = 0; j < k; j++) {
		hva_t h = env->b.hva + (j * nchunks / k) * SZ_2M;

		invalidate_range_start(env->vm, h, h + SZ_2M);
		invalidate_range_end(env->vm, h, h + SZ_2M);
	}
	t1 = now_ns();
	after = env_leaves(env);
	*zapped = (double)(before - after) / (double)k;
	/* Map the chunks again for the next run. */
	for (j = 0; j < k; j++) {
		int64_t m = vm_prefault_memory(env->vm, 0, (j * nchunks / k) * SZ_2M, SZ_2M,
					       env->level);

		if (m < 0)
			return m;
	}
	r = env_leaves(env) == before ? 0 : -EIO;
	return r ? r : (double)(t1 - t0) / (double)k;
}

static const char *mapping_name(int level)
{
	return level == PG_LEVEL_2M ? "2m" : "4k";
}

/* One (slots, mapping) VM, every selected variant measured on it. */
static int run_point(const struct unmap_opts *o, int nslots, int level,
		     double ns_out[UNMAP_NR_VARIANTS])
{
	uint64_t slot_bytes = MAX((uint64_t)SZ_2M, ALIGN_DOWN(o->mem / nslots, SZ_2M));
	uint64_t nchunks = slot_bytes * nslots / SZ_2M;
	uint64_t k = MIN(nchunks, o->quick ? 32 : 256);
	struct unmap_env env;
	int v, run, r;

	r = env_create(&env, nslots, slot_bytes, level);
	if (r)
		return r;
	for (v = 0; v < UNMAP_NR_VARIANTS; v++) {
		double samples[32], zapped = 0;
		uint64_t kk = k;
		int got = 0;

		ns_out[v] = -1;
		if (!o->variant_on[v])
			continue;
		/* per_page over thousands of slots costs ms per chunk: fewer chunks. */
		if (v == UNMAP_PER_PAGE && nslots >= 1024)
			kk = MIN(k, o->quick ? 4 : 32);
		for (run = 0; run < o->runs; run++) {
			double ns = measure_chunks(&env, v, kk, &zapped);

			if (ns < 0) {
				env_destroy(&env);
				return (int)ns;
			}
			samples[got++] = ns;
		}
		ns_out[v] = bench_median(samples, got); /* sorts: samples[0] is the best run */
		if (o->json)
			printf("{\"bench\":\"unmap\",\"variant\":\"%s\",\"mapping\":\"%s\","
			       "\"slots\":%d,\"ns_per_2m\":%.1f,\"ns_per_2m_min\":%.1f,"
			       "\"spread\":%.3f,\"runs\":%d,\"chunks\":%llu,\"sptes_per_2m\":%.0f,"
			       "\"guest_bytes\":%llu}\n",
			       unmap_variant_name(v), mapping_name(level), nslots, ns_out[v],
			       samples[0], bench_spread(samples, got), got, (unsigned long long)kk,
			       zapped, (unsigned long long)(slot_bytes * nslots));
		else
			printf("  %-11s %s mappings, %5d slots: %12.1f ns per 2 MiB (best %.1f; "
			       "%3.0f sptes, spread %.0f%%)\n",
			       unmap_variant_name(v), mapping_name(level), nslots, ns_out[v],
			       samples[0], zapped, bench_spread(samples, got) * 100);
		fflush(stdout);
	}
	env_destroy(&env);
	return 0;
}

/* The 2012 report: the whole guest mapped with 4 KiB sptes, invalidated in one call. */
static int run_whole_guest(const struct unmap_opts *o)
{
	struct unmap_env env;
	uint64_t t0, t1;
	char buf[32];
	int v, r;

	for (v = 0; v < UNMAP_NR_VARIANTS; v++) {
		double secs, prefault_s;

		if (!o->variant_on[v])
			continue;
		t0 = now_ns();
		r = env_create(&env, 1, o->big, PG_LEVEL_4K);
		if (r)
			return r;
		t1 = now_ns();
		prefault_s = (double)(t1 - t0) / 1e9;
		invalidate_set_variant(env.vm, v);
		t0 = now_ns();
		invalidate_range_start(env.vm, env.b.hva, env.b.hva + o->big);
		invalidate_range_end(env.vm, env.b.hva, env.b.hva + o->big);
		t1 = now_ns();
		secs = (double)(t1 - t0) / 1e9;
		r = env_leaves(&env) ? -EIO : 0;
		env_destroy(&env);
		if (r)
			return r;
		if (o->json)
			printf("{\"bench\":\"unmap\",\"scenario\":\"whole_guest\",\"variant\":\"%s\","
			       "\"mapping\":\"4k\",\"slots\":1,\"guest_bytes\":%llu,\"seconds\":%.3f,"
			       "\"ns_per_2m\":%.1f,\"prefault_seconds\":%.3f}\n",
			       unmap_variant_name(v), (unsigned long long)o->big, secs,
			       secs * 1e9 / (double)(o->big / SZ_2M), prefault_s);
		else
			printf("  %-11s whole %s guest, 4k mappings: %.3f s (%.1f ns per 2 MiB; "
			       "prefault %.1f s)\n",
			       unmap_variant_name(v), fmt_bytes(o->big, buf, sizeof(buf)), secs,
			       secs * 1e9 / (double)(o->big / SZ_2M), prefault_s);
		fflush(stdout);
	}
	return 0;
}

/* ---- the real kernel: madvise(MADV_DONTNEED) of THPs a KVM guest touched ---- */

/*
 * The KVM backend (src/kvm) is referenced weakly: the benchmark uses it when
 * the rmapvm binary links it in, and says so when it does not.
 */
#pragma weak kvm_vm_create
#pragma weak kvm_vm_start
#pragma weak kvm_vm_wait
#pragma weak kvm_vm_error
#pragma weak kvm_vm_nr_regions
#pragma weak kvm_vm_region
#pragma weak kvm_vm_destroy

static bool kvm_backend_linked(void)
{
	return kvm_vm_create && kvm_vm_start && kvm_vm_wait && kvm_vm_error && kvm_vm_nr_regions &&
	       kvm_vm_region && kvm_vm_destroy;
}

struct unmap_kvm_result {
	const char *mapping;	/* "thp" when the host backed the memory with THPs */
	double vm_ns;		/* madvise per 2 MiB, memory in a KVM memslot, touched by the guest */
	double novm_ns;		/* the same on memory no VM maps */
	uint64_t nr_thp;	/* 2 MiB chunks measured */
	int runs;
};

static bool range_is_thp(hva_t hva, uint64_t bytes)
{
	struct mem_backing b = { .type = BACKING_THP };
	uint64_t off;

	for (off = 0; off < bytes; off += SZ_2M)
		if (host_mapping_level(&b, hva + off) < PG_LEVEL_2M)
			return false;
	return true;
}

/* madvise(MADV_DONTNEED) every 2 MiB of [hva, hva + bytes); ns per call. */
static double time_dontneed(hva_t hva, uint64_t bytes)
{
	uint64_t off, t0 = now_ns();

	for (off = 0; off < bytes; off += SZ_2M)
		madvise((void *)(hva + off), SZ_2M, MADV_DONTNEED);
	return (double)(now_ns() - t0) / (double)(bytes / SZ_2M);
}

/*
 * One run: a KVM guest (the KVM backend's CPL3 workload, one sweep writing
 * every RAM page once) populates KVM's MMU for a THP-backed memslot; then
 * every 2 MiB of it is dropped with madvise, which runs KVM's notifier. The
 * same on equally touched THP memory that no VM maps gives the baseline.
 */
static int kvm_run_once(uint64_t bytes, double *vm_ns, double *novm_ns, bool *thp, char *why,
			size_t whylen)
{
	struct kvm_vm_config cfg = { 0 };
	struct kvm_region_info ri = { 0 };
	struct kvm_vm *kvm = NULL;
	struct mem_backing plain;
	uint64_t off;
	int i, r;

	cfg.mem_bytes = bytes;
	cfg.nr_vcpus = 1;
	cfg.nr_slots = 1;
	cfg.backing = BACKING_THP;
	cfg.workload.pattern = WL_SWEEP;
	cfg.workload.write_pct = 100;
	cfg.batch = bytes / PAGE_SIZE;
	cfg.max_rounds = 1;
	r = kvm_vm_create(&cfg, &kvm, why, whylen);
	if (r)
		return r;
	r = kvm_vm_start(kvm);
	if (!r)
		r = kvm_vm_wait(kvm, 120);
	if (r) {
		snprintf(why, whylen, "guest run: %s (%s)", strerror(-r), kvm_vm_error(kvm));
		goto out;
	}
	for (i = 0; i < kvm_vm_nr_regions(kvm); i++)
		if (!kvm_vm_region(kvm, i, &ri) && ri.ram)
			break;
	if (!ri.ram || ri.npages * PAGE_SIZE < bytes || !IS_ALIGNED((hva_t)ri.hva, SZ_2M)) {
		snprintf(why, whylen, "no 2 MiB-aligned RAM region in the KVM VM");
		r = -ENOENT;
		goto out;
	}
	*thp = range_is_thp((hva_t)ri.hva, bytes);
	*vm_ns = time_dontneed((hva_t)ri.hva, bytes);

	r = backing_alloc(&plain, BACKING_THP, bytes);
	if (r) {
		snprintf(why, whylen, "baseline memory: %s", strerror(-r));
		goto out;
	}
	for (off = 0; off < bytes; off += PAGE_SIZE)
		*(volatile uint64_t *)(plain.hva + off) = off;
	*thp = *thp && range_is_thp(plain.hva, bytes);
	*novm_ns = time_dontneed(plain.hva, bytes);
	backing_free(&plain);
out:
	kvm_vm_destroy(kvm);
	return r;
}

static int bench_unmap_kvm(bool quick, struct unmap_kvm_result *res, char *why, size_t whylen)
{
	uint64_t bytes = (quick ? 64 : 256) * SZ_2M;
	double vm_s[5], novm_s[5];
	int runs = quick ? 1 : 3, k, r;
	bool thp = true, t;

	if (access("/dev/kvm", R_OK | W_OK)) {
		snprintf(why, whylen, "/dev/kvm is not available");
		return -ENOENT;
	}
	if (!kvm_backend_linked()) {
		snprintf(why, whylen, "the KVM backend (src/kvm) is not linked into this binary");
		return -ENOSYS;
	}
	for (k = 0; k < runs; k++) {
		r = kvm_run_once(bytes, &vm_s[k], &novm_s[k], &t, why, whylen);
		if (r)
			return r;
		thp = thp && t;
	}
	res->vm_ns = bench_median(vm_s, runs);
	res->novm_ns = bench_median(novm_s, runs);
	res->mapping = thp ? "thp" : "4k";
	res->nr_thp = bytes / SZ_2M;
	res->runs = runs;
	return 0;
}

static void usage(void)
{
	printf("usage: rmapvm bench unmap [--json] [--quick] [--runs N] [--mem SIZE] [--big SIZE]\n"
	       "                          [--variant NAME]... [--no-kernel]\n"
	       "Cost of one MMU-notifier invalidation of 2 MiB (a THP) of guest memory, for\n"
	       "each unmap variant (level_range, slot_range, per_page, tdp) x {4k, 2m}\n"
	       "mappings x {1, 64, 4096} memslots; then the whole guest (--big, default 128G;\n"
	       "0 skips) mapped with 4 KiB sptes and invalidated in one call; then, where\n"
	       "/dev/kvm exists, the kernel's own cost: madvise(MADV_DONTNEED) per 2 MiB THP\n"
	       "of guest-touched memory in a KVM memslot minus the same on memory no VM maps.\n"
	       "  --mem SIZE   guest memory of the slot sweep (default 1G; slots are >= 2 MiB)\n"
	       "  --quick      fewer chunks and runs, --big 16G\n"
	       "One JSON object per point with --json (variant, mapping, slots, ns_per_2m).\n");
}

static int bench_unmap_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "quick", no_argument, NULL, 'q' },
		{ "runs", required_argument, NULL, 'r' },
		{ "mem", required_argument, NULL, 'm' },
		{ "big", required_argument, NULL, 'b' },
		{ "variant", required_argument, NULL, 'v' },
		{ "no-kernel", no_argument, NULL, 'K' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const int slot_counts[] = { 1, 64, 4096 };
	static const int levels[] = { PG_LEVEL_4K, PG_LEVEL_2M };
	struct unmap_opts o = { .runs = 0, .mem = SZ_1G, .big = 128 * SZ_1G, .kernel = true };
	bool any_variant = false, big_set = false;
	double ns[UNMAP_NR_VARIANTS];
	enum unmap_variant var;
	unsigned int si, li;
	int c, v, r;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'j':
			o.json = true;
			break;
		case 'q':
			o.quick = true;
			break;
		case 'r':
			o.runs = atoi(optarg);
			if (o.runs < 1 || o.runs > 32) {
				fprintf(stderr, "rmapvm: --runs: '%s' is not in [1, 32]\n", optarg);
				return 2;
			}
			break;
		case 'm':
			if (parse_size(optarg, &o.mem) || o.mem < SZ_2M || o.mem > 64 * SZ_1G) {
				fprintf(stderr, "rmapvm: --mem: '%s' is not a size in [2M, 64G]\n",
					optarg);
				return 2;
			}
			break;
		case 'b':
			if (parse_size(optarg, &o.big) || (o.big && o.big < SZ_2M) ||
			    o.big > 1024 * SZ_1G || !IS_ALIGNED(o.big, SZ_2M)) {
				fprintf(stderr, "rmapvm: --big: '%s' is not 0 or a multiple of 2M "
						"up to 1T\n", optarg);
				return 2;
			}
			big_set = true;
			break;
		case 'v':
			if (unmap_variant_parse(optarg, &var)) {
				fprintf(stderr, "rmapvm: --variant: '%s' is not one of level_range, "
						"slot_range, per_page, tdp\n", optarg);
				return 2;
			}
			o.variant_on[var] = true;
			any_variant = true;
			break;
		case 'K':
			o.kernel = false;
			break;
		case 'h':
			usage();
			return 0;
		default:
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "rmapvm: bench unmap: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!any_variant)
		for (v = 0; v < UNMAP_NR_VARIANTS; v++)
			o.variant_on[v] = true;
	if (!o.runs)
		o.runs = o.quick ? 1 : 7;
	if (o.quick && !big_set)
		o.big = 16 * SZ_1G;

	if (!o.json)
		printf("unmap: ns per 2 MiB invalidation (one notifier call), median of %d\n",
		       o.runs);
	for (si = 0; si < ARRAY_SIZE(slot_counts); si++) {
		for (li = 0; li < ARRAY_SIZE(levels); li++) {
			r = run_point(&o, slot_counts[si], levels[li], ns);
			if (r) {
				fprintf(stderr, "rmapvm: bench unmap: %d slots, %s: %s\n",
					slot_counts[si], mapping_name(levels[li]), strerror(-r));
				return 1;
			}
			if (ns[UNMAP_PER_PAGE] > 0 && ns[UNMAP_LEVEL_RANGE] > 0) {
				double ratio = ns[UNMAP_PER_PAGE] / ns[UNMAP_LEVEL_RANGE];

				if (o.json)
					printf("{\"bench\":\"unmap\",\"ratio\":\"per_page/level_range\","
					       "\"mapping\":\"%s\",\"slots\":%d,\"value\":%.2f}\n",
					       mapping_name(levels[li]), slot_counts[si], ratio);
				else
					printf("  per_page / level_range = %.1fx\n", ratio);
			}
		}
	}
	if (o.big) {
		r = run_whole_guest(&o);
		if (r) {
			fprintf(stderr, "rmapvm: bench unmap: whole guest: %s\n", strerror(-r));
			return 1;
		}
	}
	if (o.kernel) {
		struct unmap_kvm_result kr;
		char why[256] = "";

		r = bench_unmap_kvm(o.quick, &kr, why, sizeof(why));
		if (r) {
			if (o.json)
				printf("{\"bench\":\"unmap\",\"variant\":\"kernel\",\"mapping\":\"thp\","
				       "\"slots\":1,\"skipped\":\"%s\"}\n", why);
			else
				printf("  kernel: skipped: %s\n", why);
		} else if (o.json) {
			printf("{\"bench\":\"unmap\",\"variant\":\"kernel\",\"mapping\":\"%s\","
			       "\"slots\":1,\"ns_per_2m\":%.1f,\"madvise_ns_per_2m_vm\":%.1f,"
			       "\"madvise_ns_per_2m_novm\":%.1f,\"thp\":%llu,\"runs\":%d}\n",
			       kr.mapping, kr.vm_ns - kr.novm_ns, kr.vm_ns, kr.novm_ns,
			       (unsigned long long)kr.nr_thp, kr.runs);
		} else {
			printf("  kernel (%s): %.1f ns per 2 MiB THP (madvise %.1f ns in a KVM slot, "
			       "%.1f ns unmapped; %llu THPs)\n",
			       kr.mapping, kr.vm_ns - kr.novm_ns, kr.vm_ns, kr.novm_ns,
			       (unsigned long long)kr.nr_thp);
		}
	}
	return 0;
}

BENCH_REGISTER("unmap", bench_unmap_main, "2 MiB invalidation cost per unmap variant, slots, mapping; whole guest; real KVM")
