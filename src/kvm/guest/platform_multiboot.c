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
 * One vCPU (no AP start-up); CPL0 throughout: QEMU has no PVM restriction.
 */

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;	/* KiB below 1 MiB */
	uint32_t mem_upper;	/* KiB above 1 MiB */
	uint32_t boot_device;
	uint32_t cmdline;	/* physical address of a NUL-terminated string */
};

void mb_main(uint32_t mbi_addr);

static void puts_n(const char *s, int len)
{
	int i;

	for (i = 0; i < len; i++)
		guest_outb(GUEST_QEMU_DEBUGCON, (uint8_t)s[i]);
	guest_outb(GUEST_QEMU_DEBUGCON, '\n');
}

void guest_sync(uint32_t id, uint32_t round)
{
}

void guest_print(uint32_t id, const char *s, int len)
{
	puts_n(s, len);
}

static __attribute__((noreturn)) void qemu_exit(uint32_t code)
{
	guest_outl(GUEST_QEMU_EXIT, code);
	for (;;)
		asm volatile("cli; hlt");
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
	p->round = 1;
	v->id = 0;
	v->first_page = 0;
	v->npages = ram_pages;
	guest_main(0);
}
