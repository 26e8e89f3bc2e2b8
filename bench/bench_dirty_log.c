/* bench_dirty_log.c: `rmapvm bench dirty-log`: the kernel's dirty_log_perf_test on the soft MMU, plus a vCPU-stall phase. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rmapvm/backing.h"
#include "rmapvm/dirty_log.h"
#include "rmapvm/mmu.h"
#include "rmapvm/util.h"

struct dl_opts {
	int vcpus, slots, iterations, write_pct;
	uint64_t bytes_per_vcpu;
	enum backing_type backing;
	bool random, json;
	struct dirty_log_config dcfg;
	double stall_s;		/* > 0: the stall phase, seconds */
};

struct dl_bench {
	struct dl_opts o;
	struct vm *vm;
	struct mem_backing b;
	uint64_t slot_pages;
	int iteration;		/* atomic: bumped to start a pass; -1 = exit */
	int done;		/* atomic: vCPUs finished the current pass */
	bool stall_phase;	/* atomic: write continuously, time each access */
	bool stop;		/* atomic */
	uint64_t *bitmap;
	/* stall statistics, per vCPU */
	struct {
		uint64_t accesses, max_ns, stalled_ns, stalls;
	} st[VM_MAX_VCPUS];
};

struct dl_vcpu {
	struct dl_bench *d;
	int id;
};

static void dl_pass(struct dl_bench *d, struct vcpu *vcpu, int id, uint64_t *rng, bool write_all)
{
	uint64_t pages = d->o.bytes_per_vcpu >> PAGE_SHIFT, base = (uint64_t)id * pages, i;

	for (i = 0; i < pages; i++) {
		uint64_t page = d->o.random ? (*rng = *rng * 6364136223846793005ull + 1442695040888963407ull,
					       (*rng >> 17) % pages)
					    : i;
		gpa_t gpa = (base + page) << PAGE_SHIFT;
		uint64_t v;

		if (write_all || (int)((*rng >> 40) % 100) < d->o.write_pct) {
			if (vcpu_write_u64(vcpu, gpa, 0x0123456789ABCDEFull))
				abort();
		} else if (vcpu_read_u64(vcpu, gpa, &v)) {
			abort();
		}
		*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
	}
}

static void dl_stall_loop(struct dl_bench *d, struct vcpu *vcpu, int id, uint64_t *rng)
{
	uint64_t pages = d->o.bytes_per_vcpu >> PAGE_SHIFT, base = (uint64_t)id * pages;

	while (!__atomic_load_n(&d->stop, __ATOMIC_ACQUIRE)) {
		uint64_t t0, dt;

		*rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
		t0 = now_ns();
		if (vcpu_write_u64(vcpu, (base + (*rng >> 17) % pages) << PAGE_SHIFT, t0))
			abort();
		dt = now_ns() - t0;
		d->st[id].accesses++;
		d->st[id].max_ns = MAX(d->st[id].max_ns, dt);
		if (dt > 20000) { /* an access that waited (mmu_lock, flush, full ring) */
			d->st[id].stalled_ns += dt;
			d->st[id].stalls++;
		}
	}
}

static void *dl_vcpu_thread(void *arg)
{
	struct dl_vcpu *dv = arg;
	struct dl_bench *d = dv->d;
	struct vcpu *vcpu = vm_get_vcpu(d->vm, dv->id);
	uint64_t rng = 0x9E3779B97F4A7C15ull * (dv->id + 1);
	int seen = 0;

	for (;;) {
		int it;

		/* Outside guest mode while idle, so host flushes do not wait for us. */
		while ((it = __atomic_load_n(&d->iteration, __ATOMIC_ACQUIRE)) == seen)
			sched_yield();
		if (it < 0)
			return NULL;
		seen = it;
		vcpu_load(vcpu);
		if (__atomic_load_n(&d->stall_phase, __ATOMIC_ACQUIRE))
			dl_stall_loop(d, vcpu, dv->id, &rng);
		else
			dl_pass(d, vcpu, dv->id, &rng, it == 1);
		vcpu_put(vcpu);
		__atomic_fetch_add(&d->done, 1, __ATOMIC_ACQ_REL);
	}
}

static void ring_count_fn(void *opaque, uint32_t slot, uint64_t offset)
{
	(*(uint64_t *)opaque)++;
}

/* Ring mode: harvest every ring, then reset; returns entries. */
static uint64_t dl_harvest_rings(struct dl_bench *d, uint64_t *reset_ns)
{
	uint64_t n = 0, t0;
	int i;

	for (i = 0; i < d->o.vcpus; i++)
		if (dirty_ring_harvest(d->vm, i, ring_count_fn, &n) < 0)
			abort();
	t0 = now_ns();
	if (dirty_ring_reset(d->vm) < 0)
		abort();
	if (reset_ns)
		*reset_ns += now_ns() - t0;
	return n;
}

/* Start pass @it on every vCPU and wait (harvesting rings meanwhile: a full ring stops a vCPU). */
static void dl_run_pass(struct dl_bench *d, int it)
{
	__atomic_store_n(&d->done, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&d->iteration, it, __ATOMIC_RELEASE);
	while (__atomic_load_n(&d->done, __ATOMIC_ACQUIRE) < d->o.vcpus) {
		if (d->o.dcfg.mode == DIRTY_MODE_RING && it > 1)
			dl_harvest_rings(d, NULL);
		sched_yield();
	}
}

static int dl_set_logging(struct dl_bench *d, bool on)
{
	int s, r;

	for (s = 0; s < d->o.slots; s++) {
		struct vm_memory_region mr = {
			.slot = (uint32_t)s,
			.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
			.guest_phys_addr = (gpa_t)s * d->slot_pages << PAGE_SHIFT,
			.memory_size = d->slot_pages << PAGE_SHIFT,
			.userspace_addr = d->b.hva + (s * d->slot_pages << PAGE_SHIFT),
		};

		r = vm_set_user_memory_region(d->vm, &mr);
		if (r)
			return r;
	}
	return 0;
}

/* One get (and clear) over every slot; returns pages reported. */
static uint64_t dl_get_clear(struct dl_bench *d, uint64_t *get_ns, uint64_t *clear_ns)
{
	uint64_t pages = 0, t0, w, nw = DIV_ROUND_UP(d->slot_pages, 64);
	int s;

	if (d->o.dcfg.mode == DIRTY_MODE_RING) {
		t0 = now_ns();
		pages = dl_harvest_rings(d, clear_ns);
		*get_ns += now_ns() - t0 - 0;
		return pages;
	}
	for (s = 0; s < d->o.slots; s++) {
		t0 = now_ns();
		if (dirty_log_get(d->vm, (uint32_t)s, d->bitmap))
			abort();
		*get_ns += now_ns() - t0;
		for (w = 0; w < nw; w++)
			pages += __builtin_popcountll(d->bitmap[w]);
		if (d->o.dcfg.mode == DIRTY_MODE_MANUAL) {
			t0 = now_ns();
			if (dirty_log_clear(d->vm, (uint32_t)s, 0, d->slot_pages, d->bitmap))
				abort();
			*clear_ns += now_ns() - t0;
		}
	}
	return pages;
}

static void dl_print(const struct dl_bench *d, const char *what, double s)
{
	if (!d->o.json)
		printf("%-40s %.6fs\n", what, s);
}

static int dl_bench_run(struct dl_bench *d)
{
	struct dl_opts *o = &d->o;
	struct dl_vcpu dv[VM_MAX_VCPUS];
	pthread_t th[VM_MAX_VCPUS];
	struct dirty_log_stats st0, st1;
	struct vm_config cfg;
	uint64_t total = o->bytes_per_vcpu * o->vcpus, t0, get_sum = 0, clear_sum = 0, dirty_sum = 0;
	uint64_t populate_ns, enable_ns, disable_ns, hold_sum = 0, hold_max = 0, pages_sum = 0;
	char line[96];
	int i, r, it;

	vm_config_default(&cfg);
	cfg.nr_vcpus = o->vcpus;
	cfg.lock_mode = o->dcfg.lock == DIRTY_LOCK_SHARED ? MMU_LOCK_SHARED : MMU_LOCK_EXCLUSIVE;
	r = vm_create(&cfg, &d->vm);
	if (r)
		return r;
	r = backing_alloc(&d->b, o->backing, total);
	if (r)
		goto out_vm;
	vm_register_backing(d->vm, &d->b);
	d->slot_pages = (total / o->slots) >> PAGE_SHIFT;
	d->bitmap = calloc(DIV_ROUND_UP(d->slot_pages, 64), 8);
	r = vm_configure_dirty_log(d->vm, &o->dcfg);
	if (!r)
		r = dl_set_logging(d, false);
	if (r)
		goto out;
	for (i = 0; i < o->vcpus; i++) {
		dv[i].d = d;
		dv[i].id = i;
		pthread_create(&th[i], NULL, dl_vcpu_thread, &dv[i]);
	}

	t0 = now_ns();
	dl_run_pass(d, 1);
	populate_ns = now_ns() - t0;
	dl_print(d, "Populate memory time:", populate_ns / 1e9);

	t0 = now_ns();
	r = dl_set_logging(d, true);
	enable_ns = now_ns() - t0;
	if (r)
		goto out_threads;
	dl_print(d, "Enabling dirty logging time:", enable_ns / 1e9);

	for (it = 2; it <= o->iterations + 1; it++) {
		uint64_t get_ns = 0, clear_ns = 0, dirty_ns, pages;

		t0 = now_ns();
		dl_run_pass(d, it);
		dirty_ns = now_ns() - t0;
		dirty_log_get_stats(d->vm, &st0);
		pages = dl_get_clear(d, &get_ns, &clear_ns);
		dirty_log_get_stats(d->vm, &st1);
		get_sum += get_ns;
		clear_sum += clear_ns;
		dirty_sum += dirty_ns;
		pages_sum += pages;
		hold_sum += st1.lock_hold_ns - st0.lock_hold_ns;
		hold_max = MAX(hold_max, st1.lock_hold_max_ns);
		if (o->json) {
			printf("{\"bench\":\"dirty-log\",\"iteration\":%d,\"dirty_memory_s\":%.6f,"
			       "\"get_s\":%.6f,\"clear_s\":%.6f,\"dirty_pages\":%llu,\"mmu_lock_hold_s\":%.6f}\n",
			       it - 1, dirty_ns / 1e9, get_ns / 1e9, clear_ns / 1e9,
			       (unsigned long long)pages, (st1.lock_hold_ns - st0.lock_hold_ns) / 1e9);
		} else {
			snprintf(line, sizeof(line), "Iteration %d dirty memory time:", it - 1);
			dl_print(d, line, dirty_ns / 1e9);
			snprintf(line, sizeof(line), "Iteration %d get dirty log time:", it - 1);
			dl_print(d, line, get_ns / 1e9);
			if (o->dcfg.mode != DIRTY_MODE_BITMAP) {
				snprintf(line, sizeof(line), "Iteration %d clear dirty log time:", it - 1);
				dl_print(d, line, clear_ns / 1e9);
			}
		}
	}

	/* Stall phase: vCPUs write non-stop while the host harvests in a loop. */
	if (o->stall_s > 0) {
		uint64_t end, harvests = 0, hget = 0, hclear = 0, acc = 0, mx = 0, stl = 0, nst = 0;

		dirty_log_get_stats(d->vm, &st0);
		__atomic_store_n(&d->stall_phase, true, __ATOMIC_RELEASE);
		__atomic_store_n(&d->done, 0, __ATOMIC_RELEASE);
		__atomic_store_n(&d->iteration, it, __ATOMIC_RELEASE);
		end = now_ns() + (uint64_t)(o->stall_s * 1e9);
		while (now_ns() < end) {
			dl_get_clear(d, &hget, &hclear);
			harvests++;
		}
		__atomic_store_n(&d->stop, true, __ATOMIC_RELEASE);
		while (__atomic_load_n(&d->done, __ATOMIC_ACQUIRE) < o->vcpus) {
			if (o->dcfg.mode == DIRTY_MODE_RING)
				dl_harvest_rings(d, NULL);
			sched_yield();
		}
		dirty_log_get_stats(d->vm, &st1);
		for (i = 0; i < o->vcpus; i++) {
			acc += d->st[i].accesses;
			mx = MAX(mx, d->st[i].max_ns);
			stl += d->st[i].stalled_ns;
			nst += d->st[i].stalls;
		}
		if (o->json)
			printf("{\"bench\":\"dirty-log\",\"phase\":\"stall\",\"lock\":\"%s\",\"algo\":\"%s\","
			       "\"seconds\":%.3f,\"harvests\":%llu,\"harvest_avg_s\":%.6f,"
			       "\"mmu_lock_hold_avg_s\":%.6f,\"mmu_lock_hold_max_s\":%.6f,"
			       "\"vcpu_accesses_per_s\":%.0f,\"vcpu_max_access_s\":%.6f,"
			       "\"vcpu_stalls\":%llu,\"vcpu_stalled_s\":%.6f}\n",
			       dirty_log_lock_name(o->dcfg.lock), dirty_log_algo_name(o->dcfg.algo),
			       o->stall_s, (unsigned long long)harvests,
			       harvests ? (hget + hclear) / 1e9 / harvests : 0,
			       harvests ? (st1.lock_hold_ns - st0.lock_hold_ns) / 1e9 / harvests : 0,
			       st1.lock_hold_max_ns / 1e9, acc / o->stall_s, mx / 1e9,
			       (unsigned long long)nst, stl / 1e9);
		else
			printf("Stall phase (%s lock, %.1fs): %llu harvests, %.6fs avg, mmu_lock held "
			       "%.6fs avg / %.6fs max; vCPUs: %.0f writes/s, slowest write %.6fs, "
			       "%llu writes > 20us (%.6fs)\n",
			       dirty_log_lock_name(o->dcfg.lock), o->stall_s,
			       (unsigned long long)harvests,
			       harvests ? (hget + hclear) / 1e9 / harvests : 0,
			       harvests ? (st1.lock_hold_ns - st0.lock_hold_ns) / 1e9 / harvests : 0,
			       st1.lock_hold_max_ns / 1e9, acc / o->stall_s, mx / 1e9,
			       (unsigned long long)nst, stl / 1e9);
	}

	t0 = now_ns();
	r = dl_set_logging(d, false);
	disable_ns = now_ns() - t0;
	dl_print(d, "Disabling dirty logging time:", disable_ns / 1e9);
	if (o->json) {
		printf("{\"bench\":\"dirty-log\",\"vcpus\":%d,\"bytes_per_vcpu\":%llu,\"slots\":%d,"
		       "\"backing\":\"%s\",\"mode\":\"%s\",\"algo\":\"%s\",\"lock\":\"%s\","
		       "\"initially_set\":%s,\"eager_split\":%s,\"iterations\":%d,"
		       "\"populate_s\":%.6f,\"enable_s\":%.6f,\"disable_s\":%.6f,"
		       "\"get_avg_s\":%.6f,\"clear_avg_s\":%.6f,\"mmu_lock_hold_avg_s\":%.6f,"
		       "\"mmu_lock_hold_max_s\":%.6f,\"dirty_pages_avg\":%.0f,"
		       "\"dirty_memory_avg_s\":%.6f,\"dirty_ns_per_page\":%.1f}\n",
		       o->vcpus, (unsigned long long)o->bytes_per_vcpu, o->slots,
		       backing_name(o->backing),
		       o->dcfg.dbit ? (o->dcfg.mode == DIRTY_MODE_RING ? "dbit-ring" : "dbit")
				    : (const char *[]){ "bitmap", "manual", "ring", "dbit" }[o->dcfg.mode],
		       dirty_log_algo_name(o->dcfg.algo), dirty_log_lock_name(o->dcfg.lock),
		       o->dcfg.initially_set ? "true" : "false", o->dcfg.eager_split ? "true" : "false",
		       o->iterations, populate_ns / 1e9, enable_ns / 1e9, disable_ns / 1e9,
		       get_sum / 1e9 / o->iterations, clear_sum / 1e9 / o->iterations,
		       hold_sum / 1e9 / o->iterations, hold_max / 1e9,
		       (double)pages_sum / o->iterations, dirty_sum / 1e9 / o->iterations,
		       pages_sum ? (double)dirty_sum / (double)pages_sum : 0.0);
	} else {
		printf("Get dirty log over %d iterations took %.6fs. (Avg %.6fs/iteration)\n",
		       o->iterations, get_sum / 1e9, get_sum / 1e9 / o->iterations);
		if (o->dcfg.mode != DIRTY_MODE_BITMAP)
			printf("Clear dirty log over %d iterations took %.6fs. (Avg %.6fs/iteration)\n",
			       o->iterations, clear_sum / 1e9, clear_sum / 1e9 / o->iterations);
		printf("mmu_lock held by harvests: %.6fs avg per iteration, longest hold %.6fs\n",
		       hold_sum / 1e9 / o->iterations, hold_max / 1e9);
	}

out_threads:
	__atomic_store_n(&d->iteration, -1, __ATOMIC_RELEASE);
	for (i = 0; i < o->vcpus; i++)
		pthread_join(th[i], NULL);
out:
	vm_destroy(d->vm);
	backing_free(&d->b);
	free(d->bitmap);
	return r;
out_vm:
	vm_destroy(d->vm);
	return r;
}

static void dl_usage(void)
{
	printf("usage: rmapvm bench dirty-log [options]   (shaped on KVM's dirty_log_perf_test)\n"
	       "  -v, --vcpus N          vCPU threads (default 1)\n"
	       "  -b, --bytes SIZE       guest memory per vCPU (default 1G)\n"
	       "  -x, --slots N          memslots the memory is split into (default 1)\n"
	       "  -i, --iterations N     dirty/get/clear rounds, >= 2 (default 2)\n"
	       "  -s, --backing TYPE     4k | thp | hugetlb | hugetlb1g (default 4k)\n"
	       "  -w, --write-pct N      writes per 100 accesses after populate (default 100)\n"
	       "  -a, --random           random access order\n"
	       "  -m, --mode MODE        bitmap | manual | ring | dbit (default manual)\n"
	       "  -A, --algo ALGO        walk | rmap | tdp (default rmap)\n"
	       "      --lock L           whole | chunked | shared mmu_lock for harvests\n"
	       "      --chunk-pages N    pages per lock hold with --lock chunked (default 4096)\n"
	       "      --initially-set    manual mode: KVM_DIRTY_LOG_INITIALLY_SET\n"
	       "      --eager-split      split huge mappings when protection starts\n"
	       "      --ring-entries N   entries per vCPU ring (default 65536)\n"
	       "      --stall SECONDS    afterwards, harvest in a loop while vCPUs write; report\n"
	       "                         mmu_lock hold times and the stalls vCPUs saw\n"
	       "      --json             machine-readable lines\n");
}

static int bench_dirty_log_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "vcpus", required_argument, NULL, 'v' },
		{ "bytes", required_argument, NULL, 'b' },
		{ "slots", required_argument, NULL, 'x' },
		{ "iterations", required_argument, NULL, 'i' },
		{ "backing", required_argument, NULL, 's' },
		{ "write-pct", required_argument, NULL, 'w' },
		{ "random", no_argument, NULL, 'a' },
		{ "mode", required_argument, NULL, 'm' },
		{ "algo", required_argument, NULL, 'A' },
		{ "lock", required_argument, NULL, 'L' },
		{ "chunk-pages", required_argument, NULL, 'C' },
		{ "initially-set", no_argument, NULL, 'I' },
		{ "eager-split", no_argument, NULL, 'E' },
		{ "ring-entries", required_argument, NULL, 'R' },
		{ "stall", required_argument, NULL, 'S' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct dl_bench *d = calloc(1, sizeof(*d));
	struct dl_opts *o = &d->o;
	uint64_t v;
	int c, r;

	o->vcpus = 1;
	o->slots = 1;
	o->iterations = 2;
	o->write_pct = 100;
	o->bytes_per_vcpu = 1ull << 30;
	o->backing = BACKING_ANON_4K;
	dirty_log_config_default(&o->dcfg);
	o->dcfg.mode = DIRTY_MODE_MANUAL;
	o->dcfg.ring_entries = 65536;
	optind = 1;
	while ((c = getopt_long(argc, argv, "v:b:x:i:s:w:am:A:h", longopts, NULL)) != -1) {
		const char *bad = NULL;

		switch (c) {
		case 'v':
			if (parse_u64(optarg, &v) || !v || v > 64)
				bad = "--vcpus";
			o->vcpus = (int)v;
			break;
		case 'b':
			if (parse_size(optarg, &v) || v < SZ_2M || v % SZ_2M)
				bad = "--bytes (a multiple of 2M)";
			o->bytes_per_vcpu = v;
			break;
		case 'x':
			if (parse_u64(optarg, &v) || !v || v > 64)
				bad = "--slots";
			o->slots = (int)v;
			break;
		case 'i':
			if (parse_u64(optarg, &v) || v < 2 || v > 10000)
				bad = "--iterations (>= 2)";
			o->iterations = (int)v;
			break;
		case 's':
			if (backing_parse(optarg, &o->backing))
				bad = "--backing";
			break;
		case 'w':
			if (parse_u64(optarg, &v) || v > 100)
				bad = "--write-pct";
			o->write_pct = (int)v;
			break;
		case 'a':
			o->random = true;
			break;
		case 'm':
			if (dirty_log_mode_parse(optarg, &o->dcfg))
				bad = "--mode";
			break;
		case 'A':
			if (dirty_log_algo_parse(optarg, &o->dcfg.algo))
				bad = "--algo";
			break;
		case 'L':
			if (dirty_log_lock_parse(optarg, &o->dcfg.lock))
				bad = "--lock";
			break;
		case 'C':
			if (parse_u64(optarg, &v) || !v || v % 64 || v > (1u << 30))
				bad = "--chunk-pages (a multiple of 64)";
			o->dcfg.chunk_pages = (uint32_t)v;
			break;
		case 'I':
			o->dcfg.initially_set = true;
			break;
		case 'E':
			o->dcfg.eager_split = true;
			break;
		case 'R':
			if (parse_u64(optarg, &v) || v > DIRTY_RING_MAX_ENTRIES)
				bad = "--ring-entries";
			o->dcfg.ring_entries = (uint32_t)v;
			break;
		case 'S': {
			double s;

			if (parse_duration(optarg, &s) || s <= 0)
				bad = "--stall";
			o->stall_s = s;
			break;
		}
		case 'j':
			o->json = true;
			break;
		case 'h':
			dl_usage();
			free(d);
			return 0;
		default:
			free(d);
			return 2;
		}
		if (bad) {
			fprintf(stderr, "rmapvm: bench dirty-log: bad %s: '%s'\n", bad, optarg);
			free(d);
			return 2;
		}
	}
	if ((o->bytes_per_vcpu * o->vcpus / o->slots) % SZ_2M) {
		fprintf(stderr, "rmapvm: bench dirty-log: memory does not split into 2M-aligned slots\n");
		free(d);
		return 2;
	}
	if (o->dcfg.initially_set && o->dcfg.mode != DIRTY_MODE_MANUAL) {
		fprintf(stderr, "rmapvm: bench dirty-log: --initially-set needs --mode manual\n");
		free(d);
		return 2;
	}
	r = dl_bench_run(d);
	free(d);
	if (r) {
		fprintf(stderr, "rmapvm: bench dirty-log: %s\n", strerror(-r));
		return 1;
	}
	return 0;
}

BENCH_REGISTER("dirty-log", bench_dirty_log_main,
	       "dirty_log_perf_test: populate, enable, dirty/get/clear rounds, disable; --stall for locking")
