/* run_soft.c: `rmapvm run --backend soft`: run a soft-MMU VM and print its statistics. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

static void print_stats(const struct run_options *opt, struct soft_vm *svm, double secs,
			const char *verify)
{
	struct vm_stats st;
	uint64_t writes = 0, reads = 0, bad = 0;
	double meta_per_page;
	char buf[64], wl[160];
	int i;

	vm_get_stats(soft_vm_vm(svm), &st);
	for (i = 0; i < opt->vcpus; i++) {
		struct soft_vcpu_stats vs;

		soft_vm_vcpu_stats(svm, i, &vs);
		writes += vs.writes;
		reads += vs.reads;
		bad += vs.bad_reads;
	}
	meta_per_page = st.guest_pages
				? (double)(st.rmap_bytes + st.lpage_info_bytes) / (double)st.guest_pages
				: 0;
	workload_format(&opt->workload, wl, sizeof(wl));
	if (opt->json) {
		printf("{\"backend\":\"soft\",\"mem_bytes\":%llu,\"vcpus\":%d,\"slots\":%d,"
		       "\"backing\":\"%s\",\"workload\":\"%s\",\"seconds\":%.3f,"
		       "\"writes\":%llu,\"reads\":%llu,\"bad_reads\":%llu,\"verify\":\"%s\","
		       "\"tlb_hits\":%llu,\"tlb_misses\":%llu,\"tlb_flushes\":%llu,"
		       "\"remote_tlb_flushes\":%llu,\"faults_slow\":%llu,\"faults_fast\":%llu,"
		       "\"fault_retries\":%llu,\"mmio_exits\":%llu,\"mmu_pages\":%llu,"
		       "\"leaf_sptes_4k\":%llu,\"leaf_sptes_2m\":%llu,\"leaf_sptes_1g\":%llu,"
		       "\"rmap_descs\":%llu,\"rmap_bytes\":%llu,\"lpage_info_bytes\":%llu,"
		       "\"page_table_bytes\":%llu,\"metadata_bytes_per_page\":%.4f}\n",
		       (unsigned long long)opt->mem_bytes, opt->vcpus, opt->slots,
		       backing_name(opt->backing), wl, secs, (unsigned long long)writes,
		       (unsigned long long)reads, (unsigned long long)bad, verify,
		       (unsigned long long)st.tlb_hits, (unsigned long long)st.tlb_misses,
		       (unsigned long long)st.tlb_flushes, (unsigned long long)st.remote_tlb_flushes,
		       (unsigned long long)st.faults_slow, (unsigned long long)st.faults_fast,
		       (unsigned long long)st.fault_retries, (unsigned long long)st.mmio_exits,
		       (unsigned long long)st.mmu_pages, (unsigned long long)st.leaf_sptes[0],
		       (unsigned long long)st.leaf_sptes[1], (unsigned long long)st.leaf_sptes[2],
		       (unsigned long long)st.rmap_descs, (unsigned long long)st.rmap_bytes,
		       (unsigned long long)st.lpage_info_bytes,
		       (unsigned long long)st.page_table_bytes, meta_per_page);
		return;
	}
	printf("soft VM: %s RAM (%s backing), %d vCPUs, %d memslot(s), workload %s\n",
	       fmt_bytes(opt->mem_bytes, buf, sizeof(buf)), backing_name(opt->backing), opt->vcpus,
	       opt->slots, wl);
	printf("  ran %.2f s: %llu writes, %llu reads (%.1f M accesses/s), verify: %s\n", secs,
	       (unsigned long long)writes, (unsigned long long)reads,
	       secs > 0 ? (double)(writes + reads) / secs / 1e6 : 0.0, verify);
	printf("  TLB: %llu hits, %llu misses, %llu flushes (%llu remote flush requests)\n",
	       (unsigned long long)st.tlb_hits, (unsigned long long)st.tlb_misses,
	       (unsigned long long)st.tlb_flushes, (unsigned long long)st.remote_tlb_flushes);
	printf("  faults: %llu slow, %llu fast, %llu retried, %llu MMIO exits\n",
	       (unsigned long long)st.faults_slow, (unsigned long long)st.faults_fast,
	       (unsigned long long)st.fault_retries, (unsigned long long)st.mmio_exits);
	printf("  page tables: %llu mmu pages (%s); leaves 4K %llu, 2M %llu, 1G %llu\n",
	       (unsigned long long)st.mmu_pages, fmt_bytes(st.page_table_bytes, buf, sizeof(buf)),
	       (unsigned long long)st.leaf_sptes[0], (unsigned long long)st.leaf_sptes[1],
	       (unsigned long long)st.leaf_sptes[2]);
	printf("  rmap: %llu pte_list_desc; rmap + lpage_info = %.3f bytes per 4 KiB guest page "
	       "(%.3f%%)\n",
	       (unsigned long long)st.rmap_descs, meta_per_page, meta_per_page / 4096 * 100);
}

int cli_run_soft(const struct run_options *opt)
{
	struct soft_vm_config cfg = {
		.mem_bytes = opt->mem_bytes,
		.vcpus = opt->vcpus,
		.slots = opt->slots,
		.backing = opt->backing,
		.workload = opt->workload,
		.lock_mode = opt->lock_shared ? MMU_LOCK_SHARED : MMU_LOCK_EXCLUSIVE,
	};
	struct soft_vm *svm;
	char err[256];
	const char *verify = "ok";
	uint64_t t0, deadline;
	int r, i, failed = 0;

	r = soft_vm_create(&cfg, &svm);
	if (r == -EOPNOTSUPP)
		die("--backing %s: the host has no such huge pages", backing_name(opt->backing));
	if (r)
		die_errno(r, "cannot create the soft VM");
	r = soft_vm_start(svm);
	if (r)
		die_errno(r, "cannot start vCPU threads");
	t0 = now_ns();
	deadline = t0 + (uint64_t)(opt->duration_s * 1e9);
	while (!soft_vm_done(svm) && (opt->duration_s == 0 || now_ns() < deadline)) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	soft_vm_stop(svm);
	for (i = 0; i < opt->vcpus; i++) {
		struct soft_vcpu_stats vs;

		soft_vm_vcpu_stats(svm, i, &vs);
		if (vs.error) {
			snprintf(err, sizeof(err), "vCPU %d: access failed: %s", i,
				 strerror(-vs.error));
			verify = err;
			failed = 1;
		} else if (vs.bad_reads) {
			snprintf(err, sizeof(err), "vCPU %d read %llu impossible stamps", i,
				 (unsigned long long)vs.bad_reads);
			verify = err;
			failed = 1;
		}
	}
	if (!failed && soft_vm_verify(svm, err, sizeof(err))) {
		verify = err;
		failed = 1;
	}
	print_stats(opt, svm, (double)(now_ns() - t0) / 1e9, verify);
	soft_vm_destroy(svm);
	return failed;
}
