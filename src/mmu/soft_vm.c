/* soft_vm.c: a soft-MMU VM with its RAM, memslots and vCPU threads running self-verifying workloads. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mmu_internal.h"
#include "rmapvm/soft_vm.h"
#include "rmapvm/util.h"

struct soft_vcpu {
	struct soft_vm *svm;
	int idx;
	pthread_t thread;
	bool started;
	bool done;			/* relaxed atomic */
	struct soft_vcpu_stats stats;	/* relaxed atomics */
	/* Architectural state (saved/loaded while paused, see soft_vm_save_vcpu). */
	struct workload_state ws;	/* position in the workload */
	uint64_t accesses;		/* accesses completed */
	uint64_t pending_page;		/* access in flight: page ... */
	bool pending;			/* ... valid: redone on resume */
	bool pending_write;
};

struct soft_vm {
	struct soft_vm_config cfg;
	struct vm *vm;
	struct mem_backing backing;
	uint64_t pages_per_vcpu;
	uint32_t round;			/* relaxed atomic */
	uint32_t throttle_pct;		/* relaxed atomic: % of time vCPUs sleep */
	bool stop;			/* relaxed atomic */
	struct soft_vcpu *vcpus;
};

/* Sleep so that the vCPU runs only (100 - pct)% of the time since @*mark. */
static void soft_vcpu_throttle(struct vcpu *vcpu, uint32_t pct, uint64_t *mark)
{
	uint64_t now = now_ns(), ran = now - *mark, nap = ran * pct / (100 - pct);
	struct timespec ts = { .tv_sec = nap / 1000000000ull, .tv_nsec = nap % 1000000000ull };

	vcpu_put(vcpu);
	nanosleep(&ts, NULL);
	vcpu_load(vcpu);
	*mark = now_ns();
}

static void *soft_vcpu_thread(void *arg)
{
	struct soft_vcpu *sv = arg;
	struct soft_vm *svm = sv->svm;
	struct vcpu *vcpu = vm_get_vcpu(svm->vm, sv->idx);
	uint64_t npages = svm->pages_per_vcpu, n = 0, t0 = now_ns(), mark = t0;
	gpa_t base = (gpa_t)sv->idx * npages * PAGE_SIZE;
	int r = 0;

	vcpu_load(vcpu);
	while (!READ_ONCE(svm->stop)) {
		uint32_t pct;
		gpa_t gpa;

		/* The access in flight is part of the vCPU state: a restored vCPU redoes it. */
		if (!sv->pending) {
			bool write;

			sv->pending_page = workload_next(&sv->ws, &write);
			sv->pending_write = write;
			sv->pending = true;
		}
		gpa = base + sv->pending_page * PAGE_SIZE;
		if (sv->pending_write) {
			uint64_t stamp = stamp_make(sv->idx, READ_ONCE(svm->round), sv->pending_page);

			r = vcpu_write_u64(vcpu, gpa, stamp);
			stat_inc(sv->stats.writes);
		} else {
			uint64_t v;

			r = vcpu_read_u64(vcpu, gpa, &v);
			if (!r && v &&
			    (stamp_vcpu(v) != (uint32_t)sv->idx || stamp_page(v) != sv->pending_page ||
			     stamp_round(v) > READ_ONCE(svm->round)))
				stat_inc(sv->stats.bad_reads);
			stat_inc(sv->stats.reads);
		}
		if (r)
			break;
		sv->pending = false;
		sv->accesses++;
		if (++n == svm->cfg.max_accesses)
			break;
		if (n & 1023)
			continue;
		pct = READ_ONCE(svm->throttle_pct);
		if (pct)
			soft_vcpu_throttle(vcpu, pct, &mark);
		/* Rate limit: sleep when ahead of the schedule. */
		if (svm->cfg.workload.rate) {
			uint64_t due = t0 + n * 1000000000ull / svm->cfg.workload.rate, now = now_ns();

			if (due > now) {
				vcpu_put(vcpu);
				/* In slices, so that a stop is seen within 10 ms. */
				while ((now = now_ns()) < due && !READ_ONCE(svm->stop)) {
					uint64_t nap = MIN(due - now, 10000000ull);
					struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)nap };

					nanosleep(&ts, NULL);
				}
				vcpu_load(vcpu);
			}
		}
	}
	vcpu_put(vcpu);
	WRITE_ONCE(sv->stats.error, r);
	WRITE_ONCE(sv->done, true);
	return NULL;
}

int soft_vm_create(const struct soft_vm_config *cfg, struct soft_vm **out)
{
	struct vm_config vcfg;
	struct soft_vm *svm;
	uint64_t slot_bytes, off;
	int i, r;

	if (!cfg->mem_bytes || !IS_ALIGNED(cfg->mem_bytes, PAGE_SIZE) || cfg->vcpus < 1 ||
	    cfg->vcpus > VM_MAX_VCPUS || cfg->slots < 1 || cfg->slots > KVM_USER_MEM_SLOTS ||
	    cfg->mem_bytes / PAGE_SIZE < (uint64_t)cfg->vcpus ||
	    cfg->mem_bytes / PAGE_SIZE < (uint64_t)cfg->slots)
		return -EINVAL;
	svm = calloc(1, sizeof(*svm));
	if (!svm)
		return -ENOMEM;
	svm->cfg = *cfg;
	svm->round = 1;
	svm->pages_per_vcpu = cfg->mem_bytes / PAGE_SIZE / cfg->vcpus;
	svm->vcpus = calloc(cfg->vcpus, sizeof(*svm->vcpus));
	if (!svm->vcpus) {
		r = -ENOMEM;
		goto fail;
	}
	vm_config_default(&vcfg);
	vcfg.nr_vcpus = cfg->vcpus;
	vcfg.lock_mode = cfg->lock_mode;
	r = vm_create(&vcfg, &svm->vm);
	if (r)
		goto fail;
	r = backing_alloc(&svm->backing, cfg->backing, cfg->mem_bytes);
	if (r)
		goto fail;
	r = vm_register_backing(svm->vm, &svm->backing);
	if (r)
		goto fail;
	slot_bytes = ALIGN_DOWN(cfg->mem_bytes / cfg->slots, PAGE_SIZE);
	for (i = 0, off = 0; i < cfg->slots; i++, off += slot_bytes) {
		struct vm_memory_region mr = {
			.slot = (uint32_t)i,
			.guest_phys_addr = off,
			.memory_size = i == cfg->slots - 1 ? cfg->mem_bytes - off : slot_bytes,
			.userspace_addr = svm->backing.hva + off,
		};

		r = vm_set_user_memory_region(svm->vm, &mr);
		if (r)
			goto fail;
	}
	for (i = 0; i < cfg->vcpus; i++) {
		svm->vcpus[i].svm = svm;
		svm->vcpus[i].idx = i;
		workload_init(&svm->vcpus[i].ws, &cfg->workload, i, svm->pages_per_vcpu);
	}
	*out = svm;
	return 0;
fail:
	soft_vm_destroy(svm);
	return r;
}

int soft_vm_start(struct soft_vm *svm)
{
	int i, r;

	WRITE_ONCE(svm->stop, false);
	for (i = 0; i < svm->cfg.vcpus; i++) {
		struct soft_vcpu *sv = &svm->vcpus[i];

		if (sv->started)
			continue;
		WRITE_ONCE(sv->done, false);
		r = pthread_create(&sv->thread, NULL, soft_vcpu_thread, sv);
		if (r) {
			soft_vm_stop(svm);
			return -r;
		}
		sv->started = true;
	}
	return 0;
}

void soft_vm_stop(struct soft_vm *svm)
{
	int i;

	WRITE_ONCE(svm->stop, true);
	/* Parked vCPUs finish the access in flight, then see stop. */
	vm_resume(svm->vm);
	for (i = 0; i < svm->cfg.vcpus; i++) {
		if (!svm->vcpus[i].started)
			continue;
		pthread_join(svm->vcpus[i].thread, NULL);
		svm->vcpus[i].started = false;
	}
}

bool soft_vm_done(struct soft_vm *svm)
{
	int i;

	for (i = 0; i < svm->cfg.vcpus; i++)
		if (!READ_ONCE(svm->vcpus[i].done))
			return false;
	return true;
}

void soft_vm_destroy(struct soft_vm *svm)
{
	if (!svm)
		return;
	if (svm->vcpus)
		soft_vm_stop(svm);
	vm_destroy(svm->vm);
	backing_free(&svm->backing);
	free(svm->vcpus);
	free(svm);
}

struct vm *soft_vm_vm(struct soft_vm *svm)
{
	return svm->vm;
}

const struct soft_vm_config *soft_vm_config(const struct soft_vm *svm)
{
	return &svm->cfg;
}

const struct mem_backing *soft_vm_backing(const struct soft_vm *svm)
{
	return &svm->backing;
}

void soft_vm_set_round(struct soft_vm *svm, uint32_t round)
{
	WRITE_ONCE(svm->round, round);
}

void soft_vm_vcpu_stats(struct soft_vm *svm, int vcpu, struct soft_vcpu_stats *st)
{
	struct soft_vcpu *sv = &svm->vcpus[vcpu];

	st->writes = READ_ONCE(sv->stats.writes);
	st->reads = READ_ONCE(sv->stats.reads);
	st->bad_reads = READ_ONCE(sv->stats.bad_reads);
	st->error = READ_ONCE(sv->stats.error);
}

int soft_vm_verify(struct soft_vm *svm, char *err, unsigned long errlen)
{
	uint32_t round = READ_ONCE(svm->round);
	int v;

	for (v = 0; v < svm->cfg.vcpus; v++) {
		uint64_t p;

		for (p = 0; p < svm->pages_per_vcpu; p++) {
			uint64_t gpa = ((uint64_t)v * svm->pages_per_vcpu + p) * PAGE_SIZE;
			uint64_t s = __atomic_load_n((uint64_t *)(svm->backing.hva + gpa),
						     __ATOMIC_RELAXED);

			if (!s)
				continue;
			if (stamp_vcpu(s) != (uint32_t)v || stamp_page(s) != p ||
			    stamp_round(s) > round) {
				snprintf(err, errlen,
					 "gpa 0x%llx: stamp 0x%016llx (vcpu %u page %llu round %u), "
					 "expected vcpu %d page %llu round <= %u",
					 (unsigned long long)gpa, (unsigned long long)s, stamp_vcpu(s),
					 (unsigned long long)stamp_page(s), stamp_round(s), v,
					 (unsigned long long)p, round);
				return -EIO;
			}
		}
	}
	return 0;
}

uint32_t soft_vm_round(const struct soft_vm *svm)
{
	return READ_ONCE(svm->round);
}

void soft_vm_set_throttle(struct soft_vm *svm, uint32_t pct)
{
	WRITE_ONCE(svm->throttle_pct, pct > 99 ? 99 : pct);
}

/* Version 1 of a soft vCPU's saved state; fixed-width little-endian fields. */
struct soft_vcpu_state_v1 {
	uint32_t magic;			/* SOFT_VCPU_STATE_MAGIC */
	uint32_t version;		/* 1 */
	uint32_t vcpu;			/* vCPU index */
	uint32_t round;			/* VM round stamped into writes */
	struct workload_state ws;	/* workload position */
	uint64_t accesses;		/* accesses completed */
	uint64_t pending_page;		/* access in flight */
	uint32_t pending;		/* 1 if pending_page is valid */
	uint32_t pending_write;		/* 1 if it writes */
};
#define SOFT_VCPU_STATE_MAGIC 0x53435055u /* "UPCS" */

int soft_vm_save_vcpu(struct soft_vm *svm, int idx, void *buf, size_t len, size_t *used)
{
	struct soft_vcpu_state_v1 st;
	struct soft_vcpu *sv;

	if (idx < 0 || idx >= svm->cfg.vcpus)
		return -EINVAL;
	if (len < sizeof(st))
		return -ENOSPC;
	sv = &svm->vcpus[idx];
	memset(&st, 0, sizeof(st));
	st.magic = SOFT_VCPU_STATE_MAGIC;
	st.version = 1;
	st.vcpu = (uint32_t)idx;
	st.round = READ_ONCE(svm->round);
	st.ws = sv->ws;
	st.accesses = sv->accesses;
	st.pending_page = sv->pending_page;
	st.pending = sv->pending;
	st.pending_write = sv->pending_write;
	memcpy(buf, &st, sizeof(st));
	*used = sizeof(st);
	return 0;
}

int soft_vm_load_vcpu(struct soft_vm *svm, int idx, const void *buf, size_t len)
{
	struct soft_vcpu_state_v1 st;
	struct soft_vcpu *sv;

	if (idx < 0 || idx >= svm->cfg.vcpus || len != sizeof(st))
		return -EINVAL;
	memcpy(&st, buf, sizeof(st));
	if (st.magic != SOFT_VCPU_STATE_MAGIC || st.version != 1 || st.vcpu != (uint32_t)idx ||
	    st.ws.vcpu_id != (uint32_t)idx || st.ws.npages != svm->pages_per_vcpu || !st.ws.rng ||
	    st.ws.next_seq >= st.ws.npages || st.ws.spec.pattern > WL_HOTSET ||
	    /* percentages out of range send hot-set accesses outside the vCPU's pages */
	    st.ws.spec.write_pct > 100 || st.ws.spec.hot_size_pct > 100 ||
	    st.ws.spec.hot_frac_pct > 100 ||
	    (st.pending && st.pending_page >= svm->pages_per_vcpu) ||
	    !st.round || st.round > STAMP_ROUND_MASK)
		return -EINVAL;
	sv = &svm->vcpus[idx];
	if (sv->started)
		return -EBUSY;
	sv->ws = st.ws;
	sv->accesses = st.accesses;
	sv->pending_page = st.pending_page;
	sv->pending = st.pending;
	sv->pending_write = st.pending_write;
	WRITE_ONCE(svm->round, st.round);
	return 0;
}
