/* guest.c: the rmapvm guest: runs a workload.h pattern with stamped writes and verifies its own memory. */
#include <stdbool.h>
#include <stdint.h>

#include "rmapvm/kvm_guest_abi.h"
#include "rmapvm/workload.h"
#include "guest.h"

/*
 * One source, two platforms (guest.h): under the rmapvm VMM every vCPU
 * enters guest_main() at CPL3 with its id, and talks to the host through
 * the GUEST_PORT_* ports; under QEMU (multiboot build) vCPU 0 enters it at
 * CPL0 after the multiboot stub built the same layout, and the platform
 * calls go to debugcon / isa-debug-exit instead.
 *
 * No mutable globals: every vCPU runs this code at once, and all state lives
 * in registers, the vCPU's stack and its guest_vcpu_page, so that a VM saved
 * at any exit continues from the same point in another process.
 */

#define PARAMS	   ((volatile struct guest_params *)GUEST_PARAMS_GPA)
#define VCPU(id)   ((volatile struct guest_vcpu_page *)GUEST_VCPU_PAGE_GPA(id))
#define FPU_MAGIC  0x5a17c0de00000000ull

/* The compiler may emit calls to these for struct copies. */
void *memcpy(void *dst, const void *src, unsigned long n)
{
	char *d = dst;
	const char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, unsigned long n)
{
	char *d = dst;

	while (n--)
		*d++ = (char)c;
	return dst;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* xmm7 holds a per-vCPU value for the whole run: proves FPU state survives save/restore. */
static inline void fpu_mark(uint64_t v)
{
	/* no clobber list: -mgeneral-regs-only keeps the compiler off xmm7 */
	asm volatile("movq %0, %%xmm7" : : "r"(v));
}

static inline uint64_t fpu_read(void)
{
	uint64_t v;

	asm volatile("movq %%xmm7, %0" : "=r"(v));
	return v;
}

static int str_len(const char *s)
{
	int n = 0;

	while (s[n])
		n++;
	return n;
}

/* Print "<prefix><hex>" through the platform. */
static void print_hex(uint32_t id, const char *prefix, uint64_t v)
{
	char buf[80];
	int n = 0, i;

	while (*prefix && n < 60)
		buf[n++] = *prefix++;
	buf[n++] = '0';
	buf[n++] = 'x';
	for (i = 60; i >= 0; i -= 4)
		buf[n++] = "0123456789abcdef"[(v >> i) & 0xf];
	buf[n] = 0;
	guest_print(id, buf, n);
}

static void fail(volatile struct guest_vcpu_page *v, uint32_t reason, uint64_t page,
		 uint64_t expected, uint64_t found)
{
	v->fail_reason = reason;
	v->fail_page = page;
	v->fail_expected = expected;
	v->fail_found = found;
	guest_fail(v->id, reason);
}

/*
 * verify_region() - every page of the region holds the stamp the shadow
 * says was written last (0 = never written), and every stamp names this
 * vCPU, this page and a round not in the future.
 */
static void verify_region(volatile struct guest_vcpu_page *v, volatile uint64_t *shadow,
			  uint8_t *ram, uint32_t round)
{
	uint64_t i;

	for (i = 0; i < v->npages; i++) {
		uint64_t got = *(volatile uint64_t *)(ram + i * 4096);
		uint64_t exp = shadow[i];

		if (got != exp)
			fail(v, GUEST_FAIL_VERIFY, i, exp, got);
		if (exp && (stamp_vcpu(exp) != v->id || stamp_page(exp) != i ||
			    (round <= STAMP_ROUND_MASK && stamp_round(exp) > round)))
			fail(v, GUEST_FAIL_BAD_STAMP, i, stamp_make(v->id, round, i), exp);
	}
}

/*
 * run_host_cmds() - GUEST_F_HOST_CMDS: wait for each host write command,
 * stamp its pages that lie in this vCPU's region (round = the command's
 * sequence number), report it done; until the host asks to stop. Returns
 * the round of the last command.
 */
static uint32_t run_host_cmds(uint32_t id, volatile struct guest_params *p,
			      volatile struct guest_vcpu_page *v, volatile uint64_t *shadow,
			      uint8_t *ram, uint64_t fpu, uint32_t round)
{
	volatile uint32_t *list = (volatile uint32_t *)GUEST_LIST_GPA;
	uint64_t first = v->first_page, n = v->npages, writes = 0;

	for (;;) {
		uint64_t k, start, count, stride;
		uint32_t seq;

		while ((seq = p->cmd_seq) == v->cmd_done && !p->stop)
			asm volatile("pause");
		if (seq == v->cmd_done)
			break;
		start = p->cmd_first;
		count = p->cmd_count;
		stride = p->cmd_stride;
		if (!stride && count > GUEST_LIST_MAX)
			count = GUEST_LIST_MAX;
		round = seq & STAMP_ROUND_MASK;
		for (k = 0; k < count; k++) {
			uint64_t g = stride ? start + k * stride : list[k], idx, s;

			if (g < first || g - first >= n)
				continue;
			idx = g - first;
			s = stamp_make(id, round, idx);
			*(volatile uint64_t *)(ram + idx * 4096) = s;
			shadow[idx] = s;
			writes++;
		}
		v->writes = writes;
		v->round = round;
		v->batches++;
		if (fpu_read() != fpu)
			fail(v, GUEST_FAIL_FPU, 0, fpu, fpu_read());
		v->cmd_done = seq;
		if (p->flags & GUEST_F_SYNC_EXITS)
			guest_sync(id, round);
	}
	return round;
}

void guest_main(uint32_t id)
{
	volatile struct guest_params *p = PARAMS;
	volatile struct guest_vcpu_page *v = VCPU(id);
	struct workload_state ws;
	struct workload_spec spec;
	volatile uint64_t *shadow;
	uint8_t *ram;
	uint64_t writes, reads, batch, t0, fpu = FPU_MAGIC | id;
	uint32_t flags, round;

	if (p->magic != GUEST_PARAMS_MAGIC || p->abi_version != GUEST_ABI_VERSION ||
	    id >= p->nr_vcpus || v->id != id || !p->batch)
		fail(v, GUEST_FAIL_BAD_PARAMS, 0, GUEST_ABI_VERSION, p->abi_version);
	flags = p->flags;
	spec = *(const struct workload_spec *)&p->spec;
	shadow = (volatile uint64_t *)(p->shadow_gpa) + v->first_page;
	ram = (uint8_t *)(p->ram_gpa + v->first_page * 4096);
	fpu_mark(fpu);

	workload_init(&ws, &spec, id, v->npages);
	writes = reads = 0;
	round = flags & GUEST_F_HOST_ROUNDS ? p->round : 1;
	v->round = round;
	v->started = 1;
	guest_print(id, "rmapvm guest: vCPU running", str_len("rmapvm guest: vCPU running"));

	if (flags & GUEST_F_HOST_CMDS)
		round = run_host_cmds(id, p, v, shadow, ram, fpu, round);
	while (!(flags & GUEST_F_HOST_CMDS)) {
		t0 = rdtsc();
		for (batch = 0; batch < p->batch; batch++) {
			volatile uint64_t *page;
			uint64_t idx;
			bool write;

			if (flags & GUEST_F_HOST_ROUNDS)
				round = p->round;
			idx = workload_next(&ws, &write);
			page = (volatile uint64_t *)(ram + idx * 4096);
			if (write) {
				uint64_t s = stamp_make(id, round, idx);

				*page = s;
				shadow[idx] = s;
				writes++;
			} else {
				uint64_t got = *page;

				reads++;
				if ((flags & GUEST_F_VERIFY_READS) && got != shadow[idx])
					fail(v, GUEST_FAIL_READ_MISMATCH, idx, shadow[idx], got);
			}
		}
		if (spec.rate && p->tsc_khz) {
			/* accesses / rate seconds per batch */
			uint64_t need = p->batch * p->tsc_khz * 1000 / spec.rate;

			while (rdtsc() - t0 < need)
				asm volatile("pause");
		}
		v->writes = writes;
		v->reads = reads;
		v->batches++;
		v->ws = ws;
		if (fpu_read() != fpu)
			fail(v, GUEST_FAIL_FPU, 0, fpu, fpu_read());
		if (flags & GUEST_F_SYNC_EXITS)
			guest_sync(id, round);
		if (p->stop)
			break;
		if (!(flags & GUEST_F_HOST_ROUNDS)) {
			if (p->max_rounds && round >= p->max_rounds)
				break;
			v->round = ++round;
		}
	}
	if (flags & GUEST_F_VERIFY_END) {
		verify_region(v, shadow, ram, round);
		print_hex(id, "rmapvm guest: verified pages: ", v->npages);
	}
	guest_done(id);
}
