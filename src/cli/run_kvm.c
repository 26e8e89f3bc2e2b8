/* run_kvm.c: `rmapvm run --backend kvm`: run the embedded guest on /dev/kvm and print its statistics. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/util.h"

#define HARVEST_INTERVAL_NS 100000000ull /* 100 ms between dirty-log harvests */
#define DEFAULT_RING_ENTRIES 4096

struct harvest_stats {
	uint64_t rounds;	/* harvests of the whole guest */
	uint64_t pages;		/* dirty pages reported, all rounds */
	uint64_t max_pages;	/* largest round */
	uint64_t ns;		/* time inside harvest calls */
};

static void print_guest(void *opaque, int vcpu, const char *text, size_t len)
{
	const struct run_options *opt = opaque;

	if (!opt->json)
		fprintf(stderr, "guest[%d]: %.*s\n", vcpu, (int)len, text);
}

static void count_entry(void *opaque, uint32_t slot, uint64_t offset)
{
	(*(uint64_t *)opaque)++;
}

/* Harvest every memslot once; returns dirty pages or -errno. */
static int64_t harvest_all(struct kvm_vm *vm, enum dirty_mode mode)
{
	uint64_t pages = 0;
	int i, r;

	if (mode == DIRTY_MODE_RING) {
		r = kvm_vm_harvest_rings(vm, count_entry, &pages);
		return r < 0 ? r : (int64_t)pages;
	}
	for (i = 0; i < kvm_vm_nr_regions(vm); i++) {
		struct kvm_region_info ri;
		uint64_t *bm, w;

		kvm_vm_region(vm, i, &ri);
		bm = calloc((ri.npages + 63) / 64, 8);
		if (!bm)
			return -ENOMEM;
		r = kvm_vm_harvest_range(vm, ri.slot, 0, ri.npages, bm);
		for (w = 0; !r && w < (ri.npages + 63) / 64; w++)
			pages += (uint64_t)__builtin_popcountll(bm[w]);
		free(bm);
		if (r)
			return r;
	}
	return (int64_t)pages;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };

	nanosleep(&ts, NULL);
}

int cli_run_kvm(const struct run_options *opt)
{
	struct kvm_vm_config cfg = {
		.mem_bytes = opt->mem_bytes,
		.nr_vcpus = opt->vcpus,
		.nr_slots = opt->slots,
		.backing = opt->backing,
		.workload = opt->workload,
		.guest_flags = GUEST_F_VERIFY_READS | GUEST_F_VERIFY_END | GUEST_F_SYNC_EXITS,
		.print = print_guest,
		.print_opaque = (void *)opt,
	};
	struct harvest_stats hs = { 0 };
	struct dirty_config dc = { 0 };
	bool logging = false;
	struct kvm_vm *vm;
	uint64_t writes = 0, reads = 0, exits = 0, io = 0, syncs = 0, ringfull = 0, t0, t1;
	char err[512], buf[64], wl[160];
	const char *verify = "passed";
	double secs;
	int i, r;

	if (opt->migrate_to)
		die("--backend kvm: --migrate-to is not wired to the KVM backend yet");
	if (opt->vcpus > GUEST_MAX_VCPUS)
		die("--backend kvm: at most %d vCPUs", GUEST_MAX_VCPUS);
	if (opt->dirty_mode) {
		enum dirty_mode m;

		if (dirty_mode_parse(opt->dirty_mode, &m))
			die("--dirty-mode: '%s' is not bitmap, manual or ring", opt->dirty_mode);
		dc.mode = m;
		if (m == DIRTY_MODE_RING)
			cfg.ring_entries = dc.ring_entries = DEFAULT_RING_ENTRIES;
		logging = true;
	}
	if (opt->duration_s <= 0) {
		/* Until the workload ends: one pass over each vCPU's region. */
		uint64_t per_vcpu = opt->mem_bytes / PAGE_SIZE / (uint64_t)opt->vcpus;

		cfg.batch = per_vcpu < 16384 ? per_vcpu : 16384;
		cfg.max_rounds = DIV_ROUND_UP(per_vcpu, cfg.batch);
	}
	r = kvm_vm_create(&cfg, &vm, err, sizeof(err));
	if (r)
		die("--backend kvm: %s", err);
	if (logging && (r = kvm_vm_dirty_start(vm, &dc)))
		die("--backend kvm: dirty logging (%s): %s", opt->dirty_mode, kvm_vm_error(vm));
	t0 = now_ns();
	r = kvm_vm_start(vm);
	if (r)
		die("--backend kvm: %s", kvm_vm_error(vm));

	if (opt->duration_s > 0) {
		uint64_t end = t0 + (uint64_t)(opt->duration_s * 1e9);

		while (now_ns() < end) {
			uint64_t left = end - now_ns(), h0;

			sleep_ns(logging ? MIN(left, HARVEST_INTERVAL_NS) : left);
			if (!logging)
				continue;
			h0 = now_ns();
			int64_t n = harvest_all(vm, dc.mode);

			if (n < 0)
				die("--backend kvm: harvest: %s", kvm_vm_error(vm));
			hs.ns += now_ns() - h0;
			hs.rounds++;
			hs.pages += (uint64_t)n;
			hs.max_pages = MAX(hs.max_pages, (uint64_t)n);
			if (kvm_vm_wait(vm, 0) == -EIO)
				break;
		}
		kvm_vm_request_stop(vm);
	}
	/* Keep draining the ring while the guest verifies (a full ring would stall it). */
	do {
		r = kvm_vm_wait(vm, logging ? 0.05 : -1);
		if (r == -ETIMEDOUT && dc.mode == DIRTY_MODE_RING && logging)
			harvest_all(vm, dc.mode);
	} while (r == -ETIMEDOUT);
	t1 = now_ns();
	if (r)
		verify = "FAILED";
	for (i = 0; i < opt->vcpus; i++) {
		struct kvm_vcpu_stats st;

		kvm_vm_vcpu_stats(vm, i, &st);
		writes += st.guest_writes;
		reads += st.guest_reads;
		exits += st.exits;
		io += st.io_exits;
		syncs += st.syncs;
		ringfull += st.ring_full_exits;
	}
	secs = (double)(t1 - t0) / 1e9;
	workload_format(&opt->workload, wl, sizeof(wl));
	if (opt->json) {
		printf("{\"backend\":\"kvm\",\"mem_bytes\":%llu,\"vcpus\":%d,\"slots\":%d,"
		       "\"backing\":\"%s\",\"workload\":\"%s\",\"seconds\":%.3f,"
		       "\"writes\":%llu,\"reads\":%llu,\"verify\":\"%s\",\"exits\":%llu,"
		       "\"io_exits\":%llu,\"syncs\":%llu,\"ring_full_exits\":%llu,"
		       "\"dirty_mode\":\"%s\",\"harvests\":%llu,\"dirty_pages\":%llu,"
		       "\"max_dirty_pages\":%llu,\"harvest_ms\":%.3f,\"error\":\"%s\"}\n",
		       (unsigned long long)opt->mem_bytes, opt->vcpus, opt->slots,
		       backing_name(opt->backing), wl, secs, (unsigned long long)writes,
		       (unsigned long long)reads, verify, (unsigned long long)exits,
		       (unsigned long long)io, (unsigned long long)syncs,
		       (unsigned long long)ringfull, logging ? dirty_mode_name(dc.mode) : "off",
		       (unsigned long long)hs.rounds, (unsigned long long)hs.pages,
		       (unsigned long long)hs.max_pages, (double)hs.ns / 1e6,
		       r ? kvm_vm_error(vm) : "");
	} else {
		printf("KVM VM: %s RAM (%s backing), %d vCPUs, %d memslot(s), workload %s\n",
		       fmt_bytes(opt->mem_bytes, buf, sizeof(buf)), backing_name(opt->backing),
		       opt->vcpus, opt->slots, wl);
		printf("  ran %.2f s: %llu writes, %llu reads (%.1f M accesses/s), verify: %s\n", secs,
		       (unsigned long long)writes, (unsigned long long)reads,
		       secs > 0 ? (double)(writes + reads) / secs / 1e6 : 0.0, verify);
		printf("  exits: %llu (%llu port I/O, %llu syncs, %llu dirty-ring full)\n",
		       (unsigned long long)exits, (unsigned long long)io, (unsigned long long)syncs,
		       (unsigned long long)ringfull);
		if (logging)
			printf("  dirty log (%s): %llu harvests, %llu dirty pages (max %llu per "
			       "harvest), %.3f ms harvesting\n",
			       dirty_mode_name(dc.mode), (unsigned long long)hs.rounds,
			       (unsigned long long)hs.pages, (unsigned long long)hs.max_pages,
			       (double)hs.ns / 1e6);
		if (r)
			fprintf(stderr, "rmapvm: kvm: %s\n", kvm_vm_error(vm));
	}
	kvm_vm_destroy(vm);
	return r ? 1 : 0;
}
