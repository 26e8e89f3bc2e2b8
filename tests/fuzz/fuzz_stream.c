/* fuzz_stream.c: fuzz target for the migration stream, fed to the destination's load path (file: channel, soft VM). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "rmapvm/backing.h"
#include "rmapvm/migrate.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"
#include "rmapvm/workload.h"

/*
 * Each input is one file: stream (what `rmapvm run --migrate-to file:PATH`
 * writes). It is written to a memfd and received by mig_incoming() through
 * "file:/proc/self/fd/N", exactly as `rmapvm incoming --listen file:` reads
 * it, into a soft VM built from the stream's machine description (the CLI's
 * key=value format, capped to a small VM).
 *
 * Record checksums would stop every mutation at the first changed record,
 * so the input is received twice: as is (checksums, sequence numbers and
 * truncation are checked), and, when different, with every complete
 * record's seq and checksum repaired so the payload validation is reached.
 *
 * Oracle: the destination returns 0 with a VM, or -errno with a non-empty
 * message and no VM; never crashes, hangs or leaks (ASan/LSan). An accepted
 * VM is resumed briefly: its vCPUs, driven by the received state, must not
 * fault outside guest memory.
 */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_MEM (16ull << 20)
#define FUZZ_MAX_VCPUS 4
#define FUZZ_MAX_SLOTS 64

#define CHECK(c, ...)                                                                              \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fuzz_stream: %s failed: ", #c);                           \
			fprintf(stderr, __VA_ARGS__);                                              \
			fprintf(stderr, "\n");                                                     \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct fz_dest {
	struct soft_vm *svm;
};

static int fz_create(void *opaque, const char *kind, const void *desc, size_t len, uint32_t nr_vcpus,
		     struct backend **out, char *err, size_t errlen)
{
	struct fz_dest *fd = opaque;
	struct soft_vm_config c = { 0 };
	char d[MIG_MAX_DESC + 1], b[32], wl[256], werr[160];
	uint64_t vcpus, slots, lock;
	int r;

	if (strcmp(kind, "soft")) {
		snprintf(err, errlen, "backend kind '%s': this destination builds soft VMs", kind);
		return -EPROTONOSUPPORT;
	}
	if (!desc || len > MIG_MAX_DESC) {
		snprintf(err, errlen, "no machine description");
		return -EINVAL;
	}
	memcpy(d, desc, len);
	d[len] = 0;
	if (kv_u64(d, "mem", &c.mem_bytes) || kv_u64(d, "vcpus", &vcpus) ||
	    kv_u64(d, "slots", &slots) || kv_u64(d, "lock", &lock) ||
	    kv_u64(d, "max", &c.max_accesses) || kv_get(d, "backing", b, sizeof(b)) ||
	    backing_parse(b, &c.backing) || kv_get(d, "workload", wl, sizeof(wl)) ||
	    workload_parse(wl, &c.workload, werr, sizeof(werr)) || vcpus != nr_vcpus ||
	    vcpus < 1 || vcpus > FUZZ_MAX_VCPUS || slots < 1 || slots > FUZZ_MAX_SLOTS || lock > 1 ||
	    c.mem_bytes > FUZZ_MAX_MEM || c.backing >= BACKING_HUGETLB_2M) {
		snprintf(err, errlen, "bad or too big machine description");
		return -EINVAL;
	}
	c.vcpus = (int)vcpus;
	c.slots = (int)slots;
	/* the rate limiter sleeps 1024 accesses' worth at a time: run unthrottled here */
	c.workload.rate = 0;
	c.lock_mode = (enum mmu_lock_mode)lock;
	r = soft_vm_create(&c, &fd->svm);
	if (r) {
		snprintf(err, errlen, "soft_vm_create: %s", strerror(-r));
		return r;
	}
	r = soft_backend_create(fd->svm, out);
	if (r) {
		soft_vm_destroy(fd->svm);
		fd->svm = NULL;
		snprintf(err, errlen, "soft backend: %s", strerror(-r));
	}
	return r;
}

/* Repair seq and checksum of every complete record; returns true if anything changed. */
static bool fixup(uint8_t *b, size_t size)
{
	size_t off = sizeof(struct mig_preamble);
	uint64_t seq = 0;
	bool changed = false;

	while (off + sizeof(struct mig_rec_hdr) <= size) {
		struct mig_rec_hdr h;
		uint64_t csum;

		memcpy(&h, b + off, sizeof(h));
		if (h.len > MIG_MAX_PAYLOAD || h.len > size - off - sizeof(h))
			break;
		if (h.seq != seq) {
			h.seq = seq;
			changed = true;
		}
		csum = XXH3_64bits_withSeed(b + off + sizeof(h), h.len, XXH3_64bits(&h, 16));
		if (csum != h.csum) {
			h.csum = csum;
			changed = true;
		}
		memcpy(b + off, &h, sizeof(h));
		off += sizeof(h) + h.len;
		seq++;
	}
	return changed;
}

/* Resume an accepted VM for a moment: the loaded state must keep its vCPUs inside guest memory. */
static void run_briefly(struct soft_vm *svm)
{
	int i, n = soft_vm_config(svm)->vcpus;
	uint64_t t0 = now_ns();

	CHECK(!soft_vm_start(svm), "cannot resume the received VM");
	while (now_ns() - t0 < 2000000 && !soft_vm_done(svm)) {
		struct timespec ts = { 0, 200000 };

		nanosleep(&ts, NULL);
	}
	soft_vm_stop(svm);
	for (i = 0; i < n; i++) {
		struct soft_vcpu_stats st;

		soft_vm_vcpu_stats(svm, i, &st);
		CHECK(!st.error, "vCPU %d of an accepted VM failed an access: %s", i,
		      strerror(-st.error));
	}
}

static void receive(const uint8_t *data, size_t size)
{
	struct fz_dest fd = { 0 };
	struct mig_dest_ops ops = { .create = fz_create, .opaque = &fd };
	struct mig_dest_params p = { .io_timeout_ms = 5000, .digest_threads = 1 };
	struct mig_listener *l;
	struct backend *be = NULL;
	char uri[64], err[512] = "";
	int mfd, r;

	mfd = memfd_create("fuzz_stream", MFD_CLOEXEC);
	CHECK(mfd >= 0, "memfd_create: %s", strerror(errno));
	CHECK(!size || write(mfd, data, size) == (ssize_t)size, "write");
	snprintf(uri, sizeof(uri), "file:/proc/self/fd/%d", mfd);
	CHECK(!mig_listen(uri, &l, err, sizeof(err)), "listen: %s", err);
	r = mig_incoming(l, &p, &ops, &be, NULL, err, sizeof(err));
	mig_listener_close(l);
	close(mfd);
	if (getenv("FUZZ_STREAM_VERBOSE"))
		fprintf(stderr, "fuzz_stream: %zu bytes: %s\n", size, r ? err : "accepted");
	if (r) {
		CHECK(r < 0 && !be && strlen(err) > 5, "rejection without a reason (r=%d)", r);
		/* mig_incoming destroyed the backend; the soft VM is the builder's */
		if (fd.svm)
			soft_vm_destroy(fd.svm);
		return;
	}
	CHECK(be && fd.svm, "accepted without a VM");
	run_briefly(fd.svm);
	be->ops->destroy(be);
	soft_vm_destroy(fd.svm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;

	if (size > (32u << 20))
		return 0;
	receive(data, size);
	copy = malloc(size ? size : 1);
	CHECK(copy, "out of memory");
	memcpy(copy, data, size);
	if (fixup(copy, size))
		receive(copy, size);
	free(copy);
	return 0;
}
