/* workload.h: guest write patterns and self-verifying stamps, shared by the soft MMU and the KVM guest. */
#ifndef RMAPVM_WORKLOAD_H
#define RMAPVM_WORKLOAD_H

/*
 * Freestanding: the KVM guest includes this header too, so only <stdint.h>
 * and <stdbool.h> and static inline code here; parsing lives in workload.c.
 */
#include <stdbool.h>
#include <stdint.h>

enum workload_pattern {
	WL_SWEEP,	/* sequential sweep over the region, wrapping */
	WL_RANDOM,	/* uniform random pages */
	WL_HOTSET,	/* hot_frac_pct of accesses go to the first hot_size_pct of pages */
};

/* workload_spec - what a vCPU does; parsed from "sweep|random|hotset[,key=value...]". */
struct workload_spec {
	uint32_t pattern;	/* enum workload_pattern */
	uint32_t write_pct;	/* percentage of accesses that write (default 100) */
	uint32_t hot_size_pct;	/* hot set: its size in % of the region (default 10) */
	uint32_t hot_frac_pct;	/* hot set: % of accesses that go to it (default 90) */
	uint64_t rate;		/* page accesses per second per vCPU, 0 = unlimited */
	uint64_t seed;		/* PRNG seed (mixed with the vCPU id) */
};

/*
 * Stamp written into the first 8 bytes of a page by every guest write:
 *   bits 63-52  vCPU id (12 bits)
 *   bits 51-32  round (20 bits)
 *   bits 31-0   page index within the vCPU's region
 * Zero is never a valid stamp (rounds start at 1).
 */
#define STAMP_VCPU_SHIFT  52
#define STAMP_ROUND_SHIFT 32
#define STAMP_ROUND_MASK  ((1ull << 20) - 1)
#define STAMP_PAGE_MASK	  ((1ull << 32) - 1)

static inline uint64_t stamp_make(uint32_t vcpu, uint32_t round, uint64_t page)
{
	return ((uint64_t)vcpu << STAMP_VCPU_SHIFT) |
	       (((uint64_t)round & STAMP_ROUND_MASK) << STAMP_ROUND_SHIFT) | (page & STAMP_PAGE_MASK);
}

static inline uint32_t stamp_vcpu(uint64_t stamp)
{
	return (uint32_t)(stamp >> STAMP_VCPU_SHIFT);
}

static inline uint32_t stamp_round(uint64_t stamp)
{
	return (uint32_t)((stamp >> STAMP_ROUND_SHIFT) & STAMP_ROUND_MASK);
}

static inline uint64_t stamp_page(uint64_t stamp)
{
	return stamp & STAMP_PAGE_MASK;
}

/* workload_state - one vCPU's position in its workload. */
struct workload_state {
	struct workload_spec spec;
	uint64_t npages;	/* pages in the region this vCPU works on */
	uint64_t rng;		/* xorshift64* state, never 0 */
	uint64_t next_seq;	/* sweep position */
	uint32_t vcpu_id;
};

static inline uint64_t workload_rand(struct workload_state *ws)
{
	uint64_t x = ws->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	ws->rng = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static inline void workload_init(struct workload_state *ws, const struct workload_spec *spec,
				 uint32_t vcpu_id, uint64_t npages)
{
	ws->spec = *spec;
	ws->npages = npages ? npages : 1;
	ws->vcpu_id = vcpu_id;
	ws->next_seq = 0;
	ws->rng = (spec->seed ^ (0x9E3779B97F4A7C15ull * (vcpu_id + 1))) | 1;
}

/*
 * workload_next() - the next page index (0 .. npages-1) to access, and
 * whether the access writes (*write).
 */
static inline uint64_t workload_next(struct workload_state *ws, bool *write)
{
	uint64_t page;

	switch (ws->spec.pattern) {
	case WL_RANDOM:
		page = workload_rand(ws) % ws->npages;
		break;
	case WL_HOTSET: {
		uint64_t hot = ws->npages * ws->spec.hot_size_pct / 100;

		if (hot == 0)
			hot = 1;
		if (workload_rand(ws) % 100 < ws->spec.hot_frac_pct || hot == ws->npages)
			page = workload_rand(ws) % hot;
		else
			page = hot + workload_rand(ws) % (ws->npages - hot);
		break;
	}
	case WL_SWEEP:
	default:
		page = ws->next_seq++;
		if (ws->next_seq >= ws->npages)
			ws->next_seq = 0;
		break;
	}
	*write = ws->spec.write_pct >= 100 || workload_rand(ws) % 100 < ws->spec.write_pct;
	return page;
}

/* Host-side (libc) helpers, in src/workload/workload.c. */
#ifndef RMAPVM_FREESTANDING
/* Parse a workload spec; returns 0 or -EINVAL with a reason in @err (may be NULL). */
int workload_parse(const char *s, struct workload_spec *spec, char *err, unsigned long errlen);
/* Format @spec back into its canonical text form. */
void workload_format(const struct workload_spec *spec, char *buf, unsigned long len);
#endif

#endif /* RMAPVM_WORKLOAD_H */
