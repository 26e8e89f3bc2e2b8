/* kvm_vm.c: /dev/kvm, capabilities, the VM, its memslots, the guest image and long-mode vCPUs. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm_internal.h"

/*
 * Boot on PVM (docs/KVM.md): KVM_SET_SREGS puts every vCPU straight into
 * 64-bit mode at CPL3 (CS/SS with DPL 3 before the first KVM_RUN), over an
 * identity map the host built. No guest code runs at CPL0, so KVM's
 * instruction emulator only sees the protocol's `out` instructions (a #GP
 * under PVM, emulated against the TSS I/O bitmap).
 */

#define CR0_PE (1ull << 0)
#define CR0_MP (1ull << 1)
#define CR0_ET (1ull << 4)
#define CR0_NE (1ull << 5)
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define CR4_OSFXSR (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)

#define PTE_P  (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_US (1ull << 2)
#define PTE_PS (1ull << 7)

void kvm_vm_set_error(struct kvm_vm *vm, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&vm->err_lock);
	va_start(ap, fmt);
	vsnprintf(vm->err, sizeof(vm->err), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&vm->err_lock);
}

const char *kvm_vm_error(const struct kvm_vm *vm)
{
	return vm->err;
}

const struct kvm_vm_config *kvm_vm_config(const struct kvm_vm *vm)
{
	return &vm->cfg;
}

const struct kvm_caps *kvm_vm_caps(const struct kvm_vm *vm)
{
	return &vm->caps;
}

int kvm_vm_fd(const struct kvm_vm *vm)
{
	return vm->vm_fd;
}

int kvm_vcpu_fd(const struct kvm_vm *vm, int vcpu)
{
	if (vcpu < 0 || vcpu >= vm->nr_vcpus)
		return -EINVAL;
	return vm->vcpus[vcpu].fd;
}

static int check_ext(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);

	return r < 0 ? 0 : r;
}

static struct kvm_cpuid2 *get_supported_cpuid(int kvm_fd)
{
	int nent = 64;

	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));

		if (!c)
			return NULL;
		c->nent = nent;
		if (!ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c))
			return c;
		free(c);
		if (errno != E2BIG || nent > 4096)
			return NULL;
		nent *= 2;
	}
}

static struct kvm_cpuid_entry2 *cpuid_find(struct kvm_cpuid2 *c, uint32_t fn, uint32_t idx)
{
	uint32_t i;

	for (i = 0; i < c->nent; i++)
		if (c->entries[i].function == fn && c->entries[i].index == idx)
			return &c->entries[i];
	return NULL;
}

static int get_msr_index_list(int kvm_fd, uint32_t **out)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *list;
	int n;

	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) && errno != E2BIG)
		return -errno;
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
	if (!list)
		return -ENOMEM;
	list->nmsrs = probe.nmsrs;
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list)) {
		free(list);
		return -errno;
	}
	n = (int)list->nmsrs;
	*out = malloc(n * sizeof(uint32_t) + 1);
	if (!*out) {
		free(list);
		return -ENOMEM;
	}
	memcpy(*out, list->indices, n * sizeof(uint32_t));
	free(list);
	return n;
}

/* Fill @caps from an open /dev/kvm and a VM fd (extensions can differ per VM type). */
static void probe_caps(int kvm_fd, int vm_fd, struct kvm_caps *caps)
{
	struct kvm_cpuid2 *cpuid;
	struct kvm_cpuid_entry2 *e;
	uint32_t *msrs = NULL;

	memset(caps, 0, sizeof(*caps));
	caps->api_version = ioctl(kvm_fd, KVM_GET_API_VERSION, 0);
	caps->nr_memslots = check_ext(vm_fd, KVM_CAP_NR_MEMSLOTS);
	caps->max_vcpus = check_ext(vm_fd, KVM_CAP_MAX_VCPUS);
	caps->manual_protect = (uint32_t)check_ext(vm_fd, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	caps->ring_acq_rel = check_ext(vm_fd, KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0;
	caps->ring_max_bytes = (uint32_t)check_ext(
		vm_fd, caps->ring_acq_rel ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL : KVM_CAP_DIRTY_LOG_RING);
#ifdef KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP
	caps->ring_with_bitmap = check_ext(vm_fd, KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP) > 0;
#else
	caps->ring_with_bitmap = check_ext(vm_fd, 225) > 0;
#endif
	caps->xsave_size = check_ext(vm_fd, KVM_CAP_XSAVE2);
	if (!caps->xsave_size && check_ext(vm_fd, KVM_CAP_XSAVE))
		caps->xsave_size = 4096;
	caps->xcrs = check_ext(vm_fd, KVM_CAP_XCRS) > 0;
	caps->vcpu_events = check_ext(vm_fd, KVM_CAP_VCPU_EVENTS) > 0;
	caps->irqchip = check_ext(vm_fd, KVM_CAP_IRQCHIP) > 0;
	caps->tsc_control = check_ext(vm_fd, KVM_CAP_TSC_CONTROL) > 0;
	caps->immediate_exit = check_ext(vm_fd, KVM_CAP_IMMEDIATE_EXIT) > 0;
	caps->readonly_mem = check_ext(vm_fd, KVM_CAP_READONLY_MEM) > 0;
	caps->pvm = access("/sys/module/kvm_pvm", F_OK) == 0;
	cpuid = get_supported_cpuid(kvm_fd);
	if (cpuid) {
		e = cpuid_find(cpuid, 0x80000001, 0);
		caps->cpuid_1g = e && (e->edx & (1u << 26));
		free(cpuid);
	}
	caps->nr_msrs = get_msr_index_list(kvm_fd, &msrs);
	if (caps->nr_msrs < 0)
		caps->nr_msrs = 0;
	free(msrs);
}

int kvm_probe(struct kvm_caps *caps)
{
	int kvm_fd, vm_fd;

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		return -errno;
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0) {
		int err = -errno;

		close(kvm_fd);
		return err;
	}
	probe_caps(kvm_fd, vm_fd, caps);
	close(vm_fd);
	close(kvm_fd);
	return 0;
}

void kvm_caps_format(const struct kvm_caps *c, char *buf, size_t len)
{
	snprintf(buf, len,
		 "/dev/kvm: %s, API %d, %d memslots, %d vCPUs max, %d MSRs\n"
		 "  manual dirty-log protect: %s (flags 0x%x%s)\n"
		 "  dirty ring: %s (max %u entries per vCPU%s%s)\n"
		 "  xsave %d bytes, xcrs %s, vcpu events %s, in-kernel irqchip %s,"
		 " tsc control %s, 1 GiB guest pages %s\n",
		 c->pvm ? "kvm_pvm (PVM, shadow paging)" : "kvm", c->api_version, c->nr_memslots,
		 c->max_vcpus, c->nr_msrs, c->manual_protect ? "yes" : "no", c->manual_protect,
		 (c->manual_protect & KVM_DIRTY_LOG_INITIALLY_SET) ? ", INITIALLY_SET" : "",
		 c->ring_max_bytes ? "yes" : "no", c->ring_max_bytes / 16,
		 c->ring_acq_rel ? ", ACQ_REL" : "", c->ring_with_bitmap ? ", WITH_BITMAP" : "",
		 c->xsave_size, c->xcrs ? "yes" : "no", c->vcpu_events ? "yes" : "no",
		 c->irqchip ? "yes" : "no", c->tsc_control ? "yes" : "no", c->cpuid_1g ? "yes" : "no");
}

struct kvm_memslot *kvm_vm_find_slot(struct kvm_vm *vm, uint32_t slot)
{
	int i;

	for (i = 0; i < vm->nr_slots; i++)
		if (vm->slots[i]->id == slot)
			return vm->slots[i];
	return NULL;
}

static int set_user_memory_region(struct kvm_vm *vm, struct kvm_memslot *s, uint32_t flags)
{
	struct kvm_userspace_memory_region r = {
		.slot = s->id,
		.flags = flags,
		.guest_phys_addr = s->gpa,
		.memory_size = s->npages << PAGE_SHIFT,
		.userspace_addr = (uint64_t)(uintptr_t)s->hva,
	};

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r))
		return -errno;
	return 0;
}

int kvm_memslot_set_flags(struct kvm_vm *vm, struct kvm_memslot *s, uint32_t flags)
{
	int r = set_user_memory_region(vm, s, flags);

	if (r) {
		kvm_vm_set_error(vm, "KVM_SET_USER_MEMORY_REGION(slot %u, flags 0x%x): %s", s->id,
				 flags, strerror(-r));
		return r;
	}
	s->flags = flags;
	return 0;
}

/* Register a memslot; -EEXIST on an id or range already in use, as KVM would say. */
static int add_memslot(struct kvm_vm *vm, uint32_t id, gpa_t gpa, uint64_t size, uint8_t *hva,
		       bool ram)
{
	struct kvm_memslot *s;
	int i, r;

	if (!size || !IS_ALIGNED(size, PAGE_SIZE) || !IS_ALIGNED(gpa, PAGE_SIZE) ||
	    !IS_ALIGNED((uintptr_t)hva, PAGE_SIZE) || gpa + size < gpa) {
		kvm_vm_set_error(vm, "memslot %u: gpa 0x%llx size 0x%llx hva %p: not page-aligned",
				 id, (unsigned long long)gpa, (unsigned long long)size, (void *)hva);
		return -EINVAL;
	}
	if ((uint16_t)id >= (uint32_t)vm->caps.nr_memslots || (id >> 16)) {
		kvm_vm_set_error(vm, "memslot %u: this kernel allows slot ids below %d", id,
				 vm->caps.nr_memslots);
		return -EINVAL;
	}
	for (i = 0; i < vm->nr_slots; i++) {
		struct kvm_memslot *o = vm->slots[i];
		gpa_t oend = o->gpa + (o->npages << PAGE_SHIFT);

		if (o->id == id) {
			kvm_vm_set_error(vm, "memslot %u: id already in use", id);
			return -EEXIST;
		}
		if (gpa < oend && o->gpa < gpa + size) {
			kvm_vm_set_error(vm,
					 "memslot %u [0x%llx, 0x%llx) overlaps memslot %u [0x%llx, 0x%llx)",
					 id, (unsigned long long)gpa, (unsigned long long)(gpa + size),
					 o->id, (unsigned long long)o->gpa, (unsigned long long)oend);
			return -EEXIST;
		}
	}
	if (vm->nr_slots == vm->slots_cap) {
		int cap = vm->slots_cap ? vm->slots_cap * 2 : 8;
		struct kvm_memslot **n = realloc(vm->slots, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		vm->slots = n;
		vm->slots_cap = cap;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->id = id;
	s->gpa = gpa;
	s->npages = size >> PAGE_SHIFT;
	s->hva = hva;
	s->ram = ram;
	pthread_mutex_init(&s->lock, NULL);
	r = set_user_memory_region(vm, s, 0);
	if (r) {
		kvm_vm_set_error(vm, "KVM_SET_USER_MEMORY_REGION(slot %u, gpa 0x%llx, 0x%llx bytes): %s",
				 id, (unsigned long long)gpa, (unsigned long long)size, strerror(-r));
		pthread_mutex_destroy(&s->lock);
		free(s);
		return r;
	}
	vm->slots[vm->nr_slots++] = s;
	return 0;
}

int kvm_vm_add_memslot(struct kvm_vm *vm, uint32_t id, gpa_t gpa, uint64_t size, void *hva)
{
	int r;

	pthread_mutex_lock(&vm->dirty_lock);
	r = vm->logging ? -EBUSY : add_memslot(vm, id, gpa, size, hva, false);
	if (r == -EBUSY)
		kvm_vm_set_error(vm, "memslot %u: not while dirty logging is on", id);
	pthread_mutex_unlock(&vm->dirty_lock);
	return r;
}

int kvm_vm_enable_cap(struct kvm_vm *vm, uint32_t cap, uint64_t arg0)
{
	struct kvm_enable_cap ec = { .cap = cap, .args = { arg0 } };
	int have = check_ext(vm->vm_fd, cap);

	if (have <= 0) {
		kvm_vm_set_error(vm, "KVM capability %u is not supported by this kernel", cap);
		return -EOPNOTSUPP;
	}
	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &ec)) {
		int r = -errno;

		kvm_vm_set_error(vm, "KVM_ENABLE_CAP(%u, 0x%llx): %s", cap, (unsigned long long)arg0,
				 strerror(-r));
		return r;
	}
	return 0;
}

int kvm_vm_nr_regions(const struct kvm_vm *vm)
{
	return vm->nr_slots;
}

int kvm_vm_region(const struct kvm_vm *vm, int i, struct kvm_region_info *info)
{
	const struct kvm_memslot *s;

	if (i < 0 || i >= vm->nr_slots)
		return -EINVAL;
	s = vm->slots[i];
	info->slot = s->id;
	info->gpa = s->gpa;
	info->npages = s->npages;
	info->hva = s->hva;
	info->ram = s->ram;
	return 0;
}

void *kvm_vm_gpa_to_hva(struct kvm_vm *vm, gpa_t gpa, size_t len)
{
	int i;

	for (i = 0; i < vm->nr_slots; i++) {
		struct kvm_memslot *s = vm->slots[i];
		uint64_t size = s->npages << PAGE_SHIFT;

		if (gpa >= s->gpa && gpa - s->gpa < size && len <= size - (gpa - s->gpa))
			return s->hva + (gpa - s->gpa);
	}
	return NULL;
}

uint64_t *kvm_vm_ram_page(struct kvm_vm *vm, uint64_t page)
{
	if (page >= vm->ram_pages)
		return NULL;
	return (uint64_t *)((uint8_t *)vm->ram_mem.hva + (page << PAGE_SHIFT));
}

int kvm_vm_vcpu_region(const struct kvm_vm *vm, int vcpu, uint64_t *first_page, uint64_t *npages)
{
	uint64_t a, b;

	if (vcpu < 0 || vcpu >= vm->nr_vcpus)
		return -EINVAL;
	a = vm->ram_pages * (uint64_t)vcpu / vm->nr_vcpus;
	b = vm->ram_pages * (uint64_t)(vcpu + 1) / vm->nr_vcpus;
	*first_page = a;
	*npages = b - a;
	return 0;
}

int kvm_vm_write_guest(struct kvm_vm *vm, gpa_t gpa, const void *data, size_t len)
{
	void *hva = kvm_vm_gpa_to_hva(vm, gpa, len);

	if (!hva)
		return -EFAULT;
	memcpy(hva, data, len);
	kvm_dirty_mark_host(vm, gpa, len);
	return 0;
}

/* GDT, TSS with its I/O bitmap, identity-map page tables. */
static void build_system(struct kvm_vm *vm)
{
	uint8_t *sys = (uint8_t *)vm->sys_mem.hva;
	uint64_t *gdt = (uint64_t *)(sys + GUEST_GDT_GPA);
	uint64_t *pml4 = (uint64_t *)(sys + GUEST_PT_GPA);
	uint64_t *pdpt = (uint64_t *)(sys + GUEST_PT_GPA + 0x1000);
	uint8_t *tss = sys + GUEST_TSS_GPA;
	uint64_t tss_base = GUEST_TSS_GPA, tss_limit = GUEST_TSS_LIMIT;
	uint64_t end = GUEST_RAM_GPA + (vm->ram_pages << PAGE_SHIFT), g, nr_gb;
	unsigned port;

	gdt[GUEST_SEL_KCODE >> 3] = 0x00af9b000000ffffull; /* 64-bit code, DPL 0 */
	gdt[GUEST_SEL_KDATA >> 3] = 0x00cf93000000ffffull;
	gdt[0x23 >> 3] = 0x00cffb000000ffffull;		  /* 32-bit user code (unused) */
	gdt[GUEST_SEL_UDATA >> 3] = 0x00cff3000000ffffull;
	gdt[GUEST_SEL_UCODE >> 3] = 0x00affb000000ffffull; /* 64-bit code, DPL 3 */
	gdt[GUEST_SEL_TSS >> 3] = (tss_limit & 0xffff) | ((tss_base & 0xffffff) << 16) |
				  (0x89ull << 40) | (((tss_limit >> 16) & 0xf) << 48) |
				  (((tss_base >> 24) & 0xff) << 56);
	gdt[(GUEST_SEL_TSS >> 3) + 1] = tss_base >> 32;

	/*
	 * TSS: the I/O bitmap denies every port but the protocol's. A 4-byte
	 * `out` to port p is checked against the bits of p .. p + 3.
	 */
	memset(tss, 0, GUEST_TSS_IOMAP_OFF);
	*(uint16_t *)(tss + 102) = GUEST_TSS_IOMAP_OFF;
	memset(tss + GUEST_TSS_IOMAP_OFF, 0xff, 0x2000 + 1);
	for (port = GUEST_PORT_FIRST; port < GUEST_PORT_FIRST + GUEST_NR_PORTS + 3; port++)
		tss[GUEST_TSS_IOMAP_OFF + port / 8] &= (uint8_t) ~(1u << (port % 8));

	/* Identity map [0, end) with 1 GiB pages if offered, else 2 MiB pages. */
	nr_gb = DIV_ROUND_UP(end, SZ_1G);
	pml4[0] = (GUEST_PT_GPA + 0x1000) | PTE_P | PTE_RW | PTE_US;
	for (g = 0; g < nr_gb; g++) {
		uint64_t *pd = (uint64_t *)(sys + GUEST_PT_GPA + 0x2000 + g * 0x1000);
		int i;

		if (vm->caps.cpuid_1g) {
			pdpt[g] = (g << 30) | PTE_P | PTE_RW | PTE_US | PTE_PS;
			continue;
		}
		pdpt[g] = (GUEST_PT_GPA + 0x2000 + g * 0x1000) | PTE_P | PTE_RW | PTE_US;
		for (i = 0; i < 512; i++)
			pd[i] = ((g << 30) + ((uint64_t)i << 21)) | PTE_P | PTE_RW | PTE_US | PTE_PS;
	}
}

static void build_params(struct kvm_vm *vm, uint64_t tsc_khz)
{
	uint8_t *sys = (uint8_t *)vm->sys_mem.hva;
	struct guest_params *p = (struct guest_params *)(sys + GUEST_PARAMS_GPA);
	int i;

	p->magic = GUEST_PARAMS_MAGIC;
	p->abi_version = GUEST_ABI_VERSION;
	p->nr_vcpus = vm->nr_vcpus;
	p->flags = vm->cfg.guest_flags;
	p->ram_gpa = GUEST_RAM_GPA;
	p->ram_pages = vm->ram_pages;
	p->shadow_gpa = GUEST_SHADOW_GPA;
	p->batch = vm->cfg.batch;
	p->max_rounds = vm->cfg.max_rounds;
	p->tsc_khz = tsc_khz;
	p->spec = vm->cfg.workload;
	p->round = 1;
	p->stop = 0;
	for (i = 0; i < vm->nr_vcpus; i++) {
		struct guest_vcpu_page *v =
			(struct guest_vcpu_page *)(sys + GUEST_VCPU_PAGE_GPA(i));
		uint64_t first, n;

		kvm_vm_vcpu_region(vm, i, &first, &n);
		v->id = i;
		v->first_page = first;
		v->npages = n;
	}
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, bool code)
{
	memset(s, 0, sizeof(*s));
	s->selector = sel;
	s->base = 0;
	s->limit = 0xffffffff;
	s->type = type;
	s->present = 1;
	s->dpl = dpl;
	s->s = 1;
	s->g = 1;
	s->l = code;
	s->db = !code;
}

/* CPUID, MP state, then 64-bit CPL3 registers at the guest entry. */
static int setup_vcpu(struct kvm_vm *vm, struct kvm_vcpu *vcpu)
{
	struct kvm_cpuid2 *c = vm->cpuid;
	struct kvm_mp_state mp = { .mp_state = KVM_MP_STATE_RUNNABLE };
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	uint32_t i;

	/* Give each vCPU its APIC id in CPUID. */
	for (i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffff) | ((uint32_t)vcpu->id << 24);
		if (e->function == 0xb || e->function == 0x1f)
			e->edx = vcpu->id;
	}
	if (ioctl(vcpu->fd, KVM_SET_CPUID2, c)) {
		kvm_vm_set_error(vm, "vCPU %d: KVM_SET_CPUID2: %s", vcpu->id, strerror(errno));
		return -errno;
	}
	if (vm->caps.irqchip && ioctl(vcpu->fd, KVM_SET_MP_STATE, &mp)) {
		kvm_vm_set_error(vm, "vCPU %d: KVM_SET_MP_STATE: %s", vcpu->id, strerror(errno));
		return -errno;
	}
	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs))
		goto sregs_fail;
	seg(&sregs.cs, GUEST_SEL_UCODE, 0xb, 3, true);
	seg(&sregs.ss, GUEST_SEL_UDATA, 0x3, 3, false);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss;
	memset(&sregs.tr, 0, sizeof(sregs.tr));
	sregs.tr.selector = GUEST_SEL_TSS;
	sregs.tr.base = GUEST_TSS_GPA;
	sregs.tr.limit = GUEST_TSS_LIMIT;
	sregs.tr.type = 0xb; /* 64-bit TSS, busy */
	sregs.tr.present = 1;
	sregs.gdt.base = GUEST_GDT_GPA;
	sregs.gdt.limit = ((GUEST_SEL_TSS >> 3) + 2) * 8 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
	sregs.cr3 = GUEST_PT_GPA;
	sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	sregs.efer = EFER_LME | EFER_LMA;
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs))
		goto sregs_fail;

	memset(&regs, 0, sizeof(regs));
	regs.rip = GUEST_CODE_GPA;
	regs.rsp = GUEST_STACK_GPA + (uint64_t)(vcpu->id + 1) * GUEST_STACK_SIZE;
	regs.rdi = vcpu->id;
	regs.rflags = 0x2;
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs)) {
		kvm_vm_set_error(vm, "vCPU %d: KVM_SET_REGS: %s", vcpu->id, strerror(errno));
		return -errno;
	}
	return 0;

sregs_fail:
	kvm_vm_set_error(vm, "vCPU %d: KVM_GET/SET_SREGS (64-bit CPL3 entry): %s", vcpu->id,
			 strerror(errno));
	return -errno;
}

static int create_vcpu(struct kvm_vm *vm, int id)
{
	struct kvm_vcpu *vcpu = &vm->vcpus[id];
	void *p;

	vcpu->vm = vm;
	vcpu->id = id;
	vcpu->state = KVM_VCPU_CREATED;
	vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, id);
	if (vcpu->fd < 0) {
		kvm_vm_set_error(vm, "KVM_CREATE_VCPU(%d): %s", id, strerror(errno));
		return -errno;
	}
	p = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (p == MAP_FAILED) {
		kvm_vm_set_error(vm, "vCPU %d: mmap(kvm_run): %s", id, strerror(errno));
		return -errno;
	}
	vcpu->run = p;
	if (vm->cfg.ring_entries) {
		size_t bytes = (size_t)vm->cfg.ring_entries * sizeof(struct kvm_dirty_gfn);

		p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd,
			 KVM_DIRTY_LOG_PAGE_OFFSET * getpagesize());
		if (p == MAP_FAILED) {
			kvm_vm_set_error(vm, "vCPU %d: mmap(dirty ring, %zu bytes): %s", id, bytes,
					 strerror(errno));
			return -errno;
		}
		vcpu->ring = p;
	}
	return setup_vcpu(vm, vcpu);
}

/* Validate @cfg against the ABI and the kernel; fill the defaults. */
static int check_config(struct kvm_vm *vm, struct kvm_vm_config *cfg)
{
	uint64_t ram_pages = cfg->mem_bytes >> PAGE_SHIFT, sys;

	if (!cfg->mem_bytes || !IS_ALIGNED(cfg->mem_bytes, PAGE_SIZE)) {
		kvm_vm_set_error(vm, "memory size %llu is not a positive multiple of 4 KiB",
				 (unsigned long long)cfg->mem_bytes);
		return -EINVAL;
	}
	if (cfg->nr_vcpus < 1 || cfg->nr_vcpus > GUEST_MAX_VCPUS ||
	    cfg->nr_vcpus > vm->caps.max_vcpus) {
		kvm_vm_set_error(vm, "%d vCPUs: the guest supports 1..%d, this kernel %d",
				 cfg->nr_vcpus, GUEST_MAX_VCPUS, vm->caps.max_vcpus);
		return -EINVAL;
	}
	if (cfg->nr_slots < 1 || (uint64_t)cfg->nr_slots > ram_pages ||
	    cfg->nr_slots + 1 > vm->caps.nr_memslots) {
		kvm_vm_set_error(vm, "%d RAM memslots: need 1..min(RAM pages %llu, %d)",
				 cfg->nr_slots, (unsigned long long)ram_pages,
				 vm->caps.nr_memslots - 1);
		return -EINVAL;
	}
	if ((uint64_t)cfg->nr_vcpus > ram_pages) {
		kvm_vm_set_error(vm, "%d vCPUs need at least as many RAM pages", cfg->nr_vcpus);
		return -EINVAL;
	}
	sys = ALIGN_UP(GUEST_SHADOW_GPA + ram_pages * 8, SZ_2M);
	if (sys > GUEST_RAM_GPA || GUEST_RAM_GPA + cfg->mem_bytes > GUEST_MAX_GPA) {
		kvm_vm_set_error(vm, "RAM of %llu bytes does not fit the guest layout (max %llu GiB)",
				 (unsigned long long)cfg->mem_bytes,
				 (unsigned long long)((GUEST_MAX_GPA - GUEST_RAM_GPA) >> 30));
		return -E2BIG;
	}
	if (cfg->ring_entries) {
		uint64_t bytes = (uint64_t)cfg->ring_entries * sizeof(struct kvm_dirty_gfn);

		if (!vm->caps.ring_max_bytes) {
			kvm_vm_set_error(vm, "dirty ring: KVM_CAP_DIRTY_LOG_RING is not supported by "
					     "this kernel");
			return -EOPNOTSUPP;
		}
		if (cfg->ring_entries & (cfg->ring_entries - 1)) {
			kvm_vm_set_error(vm, "dirty ring: %u entries is not a power of two",
					 cfg->ring_entries);
			return -EINVAL;
		}
		if (bytes < (uint64_t)getpagesize() || bytes > vm->caps.ring_max_bytes) {
			kvm_vm_set_error(vm, "dirty ring: %u entries (%llu bytes) outside [%d, %u] "
					     "bytes",
					 cfg->ring_entries, (unsigned long long)bytes, getpagesize(),
					 vm->caps.ring_max_bytes);
			return -EINVAL;
		}
	}
	if (cfg->workload.pattern > WL_HOTSET || cfg->workload.write_pct > 100) {
		kvm_vm_set_error(vm, "bad workload spec");
		return -EINVAL;
	}
	vm->sys_bytes = sys;
	vm->ram_pages = ram_pages;
	if (!cfg->batch) {
		uint64_t per_vcpu = ram_pages / cfg->nr_vcpus;

		cfg->batch = per_vcpu < 16384 ? per_vcpu : 16384;
	}
	return 0;
}

static int load_guest(struct kvm_vm *vm)
{
	size_t len = (size_t)(rmapvm_guest_end - rmapvm_guest_start);

	if (!len || len > GUEST_CODE_MAX) {
		kvm_vm_set_error(vm, "embedded guest image is %zu bytes (max %llu)", len,
				 (unsigned long long)GUEST_CODE_MAX);
		return -ENOEXEC;
	}
	memcpy((uint8_t *)vm->sys_mem.hva + GUEST_CODE_GPA, rmapvm_guest_start, len);
	return 0;
}

int kvm_vm_create(const struct kvm_vm_config *cfg_in, struct kvm_vm **out, char *err,
		  size_t errlen)
{
	struct kvm_vm *vm;
	uint64_t tsc_khz = 0;
	int r, i;

	*out = NULL;
	vm = calloc(1, sizeof(*vm));
	if (!vm) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	vm->cfg = *cfg_in;
	vm->kvm_fd = vm->vm_fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	pthread_mutex_init(&vm->dirty_lock, NULL);
	pthread_mutex_init(&vm->ring_lock, NULL);
	pthread_mutex_init(&vm->err_lock, NULL);

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		r = -errno;
		kvm_vm_set_error(vm, "open /dev/kvm: %s", strerror(-r));
		goto fail;
	}
	r = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (r != KVM_API_VERSION) {
		kvm_vm_set_error(vm, "KVM API version %d, need %d", r, KVM_API_VERSION);
		r = -EINVAL;
		goto fail;
	}
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		r = -errno;
		kvm_vm_set_error(vm, "KVM_CREATE_VM: %s", strerror(-r));
		goto fail;
	}
	probe_caps(vm->kvm_fd, vm->vm_fd, &vm->caps);
	if (!check_ext(vm->vm_fd, KVM_CAP_USER_MEMORY) || !vm->caps.immediate_exit) {
		kvm_vm_set_error(vm, "KVM lacks KVM_CAP_USER_MEMORY or KVM_CAP_IMMEDIATE_EXIT");
		r = -EOPNOTSUPP;
		goto fail;
	}
	r = check_config(vm, &vm->cfg);
	if (r)
		goto fail;
	vm->run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	vm->cpuid = get_supported_cpuid(vm->kvm_fd);
	if (!vm->cpuid || (int)vm->run_size <= 0) {
		r = -EIO;
		kvm_vm_set_error(vm, "KVM_GET_SUPPORTED_CPUID / KVM_GET_VCPU_MMAP_SIZE failed");
		goto fail;
	}
	vm->nr_msr_index = get_msr_index_list(vm->kvm_fd, &vm->msr_index);
	if (vm->nr_msr_index < 0) {
		r = vm->nr_msr_index;
		kvm_vm_set_error(vm, "KVM_GET_MSR_INDEX_LIST: %s", strerror(-r));
		goto fail;
	}
	if (vm->caps.irqchip && ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0)) {
		r = -errno;
		kvm_vm_set_error(vm, "KVM_CREATE_IRQCHIP: %s", strerror(-r));
		goto fail;
	}

	/* Memory: system slot, then RAM split over nr_slots slots. */
	r = backing_alloc(&vm->sys_mem, BACKING_ANON_4K, vm->sys_bytes);
	if (r) {
		kvm_vm_set_error(vm, "system memory (%llu bytes): %s",
				 (unsigned long long)vm->sys_bytes, strerror(-r));
		goto fail;
	}
	r = backing_alloc(&vm->ram_mem, vm->cfg.backing, vm->cfg.mem_bytes);
	if (r) {
		kvm_vm_set_error(vm, "RAM: %s backing of %llu bytes: %s%s",
				 backing_name(vm->cfg.backing),
				 (unsigned long long)vm->cfg.mem_bytes, strerror(-r),
				 r == -EOPNOTSUPP ? " (no hugetlbfs pages of that size reserved: "
						    "see /proc/sys/vm/nr_hugepages)"
						  : "");
		goto fail;
	}
	r = add_memslot(vm, 0, 0, vm->sys_bytes, (uint8_t *)vm->sys_mem.hva, false);
	if (r)
		goto fail;
	for (i = 0; i < vm->cfg.nr_slots; i++) {
		uint64_t a = vm->ram_pages * i / vm->cfg.nr_slots;
		uint64_t b = vm->ram_pages * (i + 1) / vm->cfg.nr_slots;

		r = add_memslot(vm, 1 + i, GUEST_RAM_GPA + (a << PAGE_SHIFT), (b - a) << PAGE_SHIFT,
				(uint8_t *)vm->ram_mem.hva + (a << PAGE_SHIFT), true);
		if (r)
			goto fail;
	}
	r = load_guest(vm);
	if (r)
		goto fail;
	vm->nr_vcpus = vm->cfg.nr_vcpus;
	build_system(vm);

	/* The ring must exist before any vCPU. */
	if (vm->cfg.ring_entries) {
		r = kvm_vm_enable_cap(vm,
				      vm->caps.ring_acq_rel ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL
							    : KVM_CAP_DIRTY_LOG_RING,
				      (uint64_t)vm->cfg.ring_entries * sizeof(struct kvm_dirty_gfn));
		if (r)
			goto fail;
	}
	r = kvm_run_init_signals();
	if (r) {
		kvm_vm_set_error(vm, "installing the vCPU kick signal handler: %s", strerror(-r));
		goto fail;
	}
	vm->vcpus = calloc(vm->nr_vcpus, sizeof(*vm->vcpus));
	if (!vm->vcpus) {
		r = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < vm->nr_vcpus; i++)
		vm->vcpus[i].fd = -1;
	for (i = 0; i < vm->nr_vcpus; i++) {
		r = create_vcpu(vm, i);
		if (r)
			goto fail;
	}
	r = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
	if (r > 0)
		tsc_khz = (uint64_t)r;
	build_params(vm, tsc_khz);
	*out = vm;
	return 0;

fail:
	snprintf(err, errlen, "%s", vm->err[0] ? vm->err : strerror(-r));
	kvm_vm_destroy(vm);
	return r < 0 ? r : -EIO;
}

void kvm_vm_destroy(struct kvm_vm *vm)
{
	int i;

	if (!vm)
		return;
	pthread_mutex_lock(&vm->lock);
	vm->quit = true;
	vm->throttle_pct = 0;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	for (i = 0; vm->vcpus && i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].thread_started)
			kvm_vcpu_kick(&vm->vcpus[i]);
	for (i = 0; vm->vcpus && i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].thread_started)
			pthread_join(vm->vcpus[i].thread, NULL);
	if (vm->throttle_started)
		pthread_join(vm->throttle_thread, NULL);
	for (i = 0; vm->vcpus && i < vm->cfg.nr_vcpus; i++) {
		struct kvm_vcpu *vcpu = &vm->vcpus[i];

		if (vcpu->ring)
			munmap(vcpu->ring, (size_t)vm->cfg.ring_entries * sizeof(struct kvm_dirty_gfn));
		if (vcpu->run)
			munmap(vcpu->run, vm->run_size);
		if (vcpu->fd >= 0)
			close(vcpu->fd);
	}
	free(vm->vcpus);
	kvm_dirty_free(vm);
	for (i = 0; i < vm->nr_slots; i++) {
		pthread_mutex_destroy(&vm->slots[i]->lock);
		free(vm->slots[i]);
	}
	free(vm->slots);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	if (vm->ram_mem.hva)
		backing_free(&vm->ram_mem);
	if (vm->sys_mem.hva)
		backing_free(&vm->sys_mem);
	free(vm->cpuid);
	free(vm->msr_index);
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->dirty_lock);
	pthread_mutex_destroy(&vm->ring_lock);
	pthread_mutex_destroy(&vm->err_lock);
	free(vm);
}
