/* platform_multiboot.c: the guest under QEMU (-kernel): parameters from the Multiboot command line, output to debugcon, exit through isa-debug-exit. */
#include <stdbool.h>
#include <stdint.h>

#include "rmapvm/kvm_guest_abi.h"
#include "guest.h"

/*
 * QEMU run:  qemu-system-x86_64 -m 2G -kernel rmapvm-guest-multiboot.elf
 *            -append "mem=64M workload=random write=50 rounds=8"
 *            -debugcon stdio -device isa-debug-exit,iobase=0xf4,iosize=4
 * Exit status: 1 = done and verified, 3 = failure (QEMU reports (v << 1) | 1).
 * One vCPU (no AP start-up). The stub drops to CPL3 before mb_main (see entry_multiboot.S).
 *
 * Arguments: mem= (write region), workload=sweep|random|hotset, write=, hot=,
 * frac=, rate= (accesses/s; the TSC is calibrated against the PIT), seed=,
 * batch=, rounds= (batches; 0 = run until a key arrives on the i8042, e.g.
 * QMP send-key: how a host stops the guest after a live migration).
 */

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;	/* KiB below 1 MiB */
	uint32_t mem_upper;	/* KiB above 1 MiB */
	uint32_t boot_device;
	uint32_t cmdline;	/* physical address of a NUL-terminated string */
};

void mb_main(uint32_t mbi_addr);

#define PIT_HZ	     1193182u
#define I8042_DATA   0x60
#define I8042_STATUS 0x64 /* bit 0: output buffer full */

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	asm volatile("inb %w1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* TSC kHz from a 50 ms one-shot of PIT channel 2 (gate via port 0x61); 0 if it never fires. */
static uint64_t pit_tsc_khz(void)
{
	uint32_t latch = PIT_HZ / 20, n;
	uint64_t t0, t1;

	guest_outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01)); /* gate on, speaker off */
	guest_outb(0x43, 0xb0);	/* channel 2, lo/hi byte, mode 0 */
	guest_outb(0x42, (uint8_t)latch);
	guest_outb(0x42, (uint8_t)(latch >> 8));
	t0 = rdtsc();
	for (n = 0; !(inb(0x61) & 0x20); n++)
		if (n > 50000000u)
			return 0;
	t1 = rdtsc();
	return (t1 - t0) / 50;
}

/* Drain the i8042 output buffer; true if anything was there. */
static bool key_pressed(void)
{
	bool any = false;
	int n;

	for (n = 0; n < 64 && (inb(I8042_STATUS) & 1); n++) {
		(void)inb(I8042_DATA);
		any = true;
	}
	return any;
}

static void puts_n(const char *s, int len);

/* "<prefix><decimal>" to debugcon. */
static void print_u64(const char *prefix, uint64_t v)
{
	char buf[64], dig[24];
	int n = 0, d = 0;

	while (*prefix && n < 36)
		buf[n++] = *prefix++;
	do
		dig[d++] = (char)('0' + v % 10);
	while ((v /= 10) && d < 20);
	while (d)
		buf[n++] = dig[--d];
	puts_n(buf, n);
}

static void puts_n(const char *s, int len)
{
	int i;

	for (i = 0; i < len; i++)
		guest_outb(GUEST_QEMU_DEBUGCON, (uint8_t)s[i]);
	guest_outb(GUEST_QEMU_DEBUGCON, '\n');
}

/* After each batch (GUEST_F_SYNC_EXITS, rounds=0 only): a key press stops the run. */
void guest_sync(uint32_t id, uint32_t round)
{
	volatile struct guest_params *p = (void *)GUEST_PARAMS_GPA;

	if (key_pressed())
		p->stop = 1;
}

void guest_print(uint32_t id, const char *s, int len)
{
	puts_n(s, len);
}

static __attribute__((noreturn)) void qemu_exit(uint32_t code)
{
	guest_outl(GUEST_QEMU_EXIT, code);
	for (;;)
		asm volatile("pause"); /* CPL3: no hlt */
}

void guest_fail(uint32_t id, uint32_t reason)
{
	volatile struct guest_vcpu_page *v = (void *)GUEST_VCPU_PAGE_GPA(id);
	char msg[] = "rmapvm guest: FAIL reason ?";

	msg[sizeof(msg) - 2] = (char)('0' + reason % 10);
	puts_n(msg, sizeof(msg) - 1);
	(void)v;
	qemu_exit(1);
}

void guest_done(uint32_t id)
{
	volatile struct guest_vcpu_page *v = (void *)GUEST_VCPU_PAGE_GPA(id);

	print_u64("rmapvm guest: rounds ", v->batches);
	print_u64("rmapvm guest: writes ", v->writes);
	puts_n("rmapvm guest: done", 18);
	qemu_exit(0);
}

/* Parse "key=value" with value a decimal number and an optional K/M/G suffix. */
static bool arg_u64(const char *cmd, const char *key, uint64_t *out)
{
	const char *p = cmd;

	while (p && *p) {
		const char *k = key, *q = p;

		while (*k && *q == *k) {
			k++;
			q++;
		}
		if (!*k && *q == '=' && (p == cmd || p[-1] == ' ')) {
			uint64_t v = 0;

			for (q++; *q >= '0' && *q <= '9'; q++)
				v = v * 10 + (uint64_t)(*q - '0');
			if (*q == 'K' || *q == 'k')
				v <<= 10;
			else if (*q == 'M' || *q == 'm')
				v <<= 20;
			else if (*q == 'G' || *q == 'g')
				v <<= 30;
			*out = v;
			return true;
		}
		p++;
	}
	return false;
}

static bool has_word(const char *cmd, const char *w)
{
	const char *p;

	for (p = cmd; p && *p; p++) {
		const char *a = w, *b = p;

		while (*a && *a == *b) {
			a++;
			b++;
		}
		if (!*a)
			return true;
	}
	return false;
}

void mb_main(uint32_t mbi_addr)
{
	struct multiboot_info *mbi = (void *)(uintptr_t)mbi_addr;
	volatile struct guest_params *p = (void *)GUEST_PARAMS_GPA;
	volatile struct guest_vcpu_page *v = (void *)GUEST_VCPU_PAGE_GPA(0);
	const char *cmd = (mbi->flags & 4) ? (const char *)(uintptr_t)mbi->cmdline : "";
	uint64_t top = 0x100000ull + ((uint64_t)mbi->mem_upper << 10), mem = 64ull << 20, x, i;
	uint64_t ram_pages;

	arg_u64(cmd, "mem", &mem);
	if (top > 0xC0000000ull)
		top = 0xC0000000ull; /* below the PCI hole; identity map covers 4 GiB */
	if (top <= GUEST_RAM_GPA + 0x200000)
		guest_fail(0, GUEST_FAIL_BAD_PARAMS);
	if (mem > top - GUEST_RAM_GPA)
		mem = top - GUEST_RAM_GPA;
	ram_pages = mem >> 12;
	if (GUEST_SHADOW_GPA + ram_pages * 8 > GUEST_RAM_GPA)
		guest_fail(0, GUEST_FAIL_BAD_PARAMS);

	memset((void *)GUEST_PARAMS_GPA, 0, 4096);
	memset((void *)GUEST_VCPU_PAGE_GPA(0), 0, 4096);
	memset((void *)GUEST_SHADOW_GPA, 0, ram_pages * 8);
	for (i = 0; i < ram_pages; i++)
		*(volatile uint64_t *)(GUEST_RAM_GPA + i * 4096) = 0;

	p->magic = GUEST_PARAMS_MAGIC;
	p->abi_version = GUEST_ABI_VERSION;
	p->nr_vcpus = 1;
	p->flags = GUEST_F_VERIFY_READS | GUEST_F_VERIFY_END;
	p->ram_gpa = GUEST_RAM_GPA;
	p->ram_pages = ram_pages;
	p->shadow_gpa = GUEST_SHADOW_GPA;
	p->batch = ram_pages < 16384 ? ram_pages : 16384;
	p->max_rounds = 8;
	p->spec.pattern = has_word(cmd, "workload=sweep")    ? WL_SWEEP
			  : has_word(cmd, "workload=hotset") ? WL_HOTSET
							     : WL_RANDOM;
	p->spec.write_pct = 100;
	p->spec.hot_size_pct = 10;
	p->spec.hot_frac_pct = 90;
	p->spec.seed = 1;
	if (arg_u64(cmd, "write", &x) && x <= 100)
		p->spec.write_pct = (uint32_t)x;
	if (arg_u64(cmd, "rounds", &x))
		p->max_rounds = x;
	if (arg_u64(cmd, "batch", &x) && x)
		p->batch = x;
	if (arg_u64(cmd, "seed", &x))
		p->spec.seed = x;
	if (arg_u64(cmd, "hot", &x) && x && x <= 100)
		p->spec.hot_size_pct = (uint32_t)x;
	if (arg_u64(cmd, "frac", &x) && x <= 100)
		p->spec.hot_frac_pct = (uint32_t)x;
	if (arg_u64(cmd, "rate", &x) && x) {
		p->spec.rate = x;
		p->tsc_khz = pit_tsc_khz();
		print_u64("rmapvm guest: tsc khz ", p->tsc_khz);
	}
	if (!p->max_rounds) {
		p->flags |= GUEST_F_SYNC_EXITS; /* guest_sync polls the keyboard */
		key_pressed();
	}
	p->round = 1;
	v->id = 0;
	v->first_page = 0;
	v->npages = ram_pages;
	guest_main(0);
}
