/* fuzz_memslot.c: fuzz target: a byte string decoded into memslot, prefault and access calls, checked against a model. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "rmapvm/memslot.h"
#include "rmapvm/mmu.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NR_IDS	  6
#define MEM_PAGES 2048 /* 8 MiB of host memory the slots point into */

#define CHECK(c, ...)                                                                              \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fuzz_memslot: " __VA_ARGS__);                             \
			fprintf(stderr, "\n");                                                     \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct model_slot {
	bool present;
	uint64_t gpa, size, hva;
	uint32_t flags;
};

static struct model_slot model[KVM_ADDRESS_SPACE_NUM][NR_IDS];
static uint8_t *mem;

/* The rules of KVM_SET_USER_MEMORY_REGION, written independently of memslot.c. */
static int model_set(uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size, uint64_t hva)
{
	uint32_t as = slot >> 16, id = slot & 0xffff, i;
	struct model_slot *old;

	if (flags & ~3u || as >= KVM_ADDRESS_SPACE_NUM || id >= KVM_USER_MEM_SLOTS)
		return -EINVAL;
	if ((gpa | size | hva) & 0xfff)
		return -EINVAL;
	if (size && (hva + size < hva || !hva))
		return -EINVAL;
	if (id >= NR_IDS)
		return -EINVAL; /* the fuzzer never produces such ids with a valid rest */
	old = &model[as][id];
	if (!size) {
		if (!old->present)
			return -EINVAL;
		old->present = false;
		return 0;
	}
	if (old->present) {
		if (hva != old->hva || size != old->size || ((flags ^ old->flags) & 2))
			return -EINVAL;
	}
	if (!old->present || gpa != old->gpa) {
		for (i = 0; i < NR_IDS; i++) {
			struct model_slot *o = &model[as][i];

			if (i != id && o->present && gpa < o->gpa + o->size && o->gpa < gpa + size)
				return -EEXIST;
		}
	}
	old->present = true;
	old->gpa = gpa;
	old->size = size;
	old->hva = hva;
	old->flags = flags;
	return 0;
}

static const struct model_slot *model_find(uint64_t gpa)
{
	int i;

	for (i = 0; i < NR_IDS; i++) {
		const struct model_slot *o = &model[0][i];

		if (o->present && gpa >= o->gpa && gpa < o->gpa + o->size)
			return o;
	}
	return NULL;
}

static uint64_t take(const uint8_t **p, const uint8_t *end, int bytes)
{
	uint64_t v = 0;

	while (bytes-- && *p < end)
		v = v << 8 | *(*p)++;
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data, *end = data + size;
	struct vm_config cfg;
	struct vm *vm;
	struct vcpu *vcpu;
	int ops = 0;

	if (!mem) {
		mem = mmap(NULL, MEM_PAGES * 4096ul, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(mem != MAP_FAILED, "mmap");
	}
	memset(model, 0, sizeof(model));
	vm_config_default(&cfg);
	CHECK(!vm_create(&cfg, &vm), "vm_create");
	/* The vCPU is loaded only around its accesses: the VMM's calls wait for it otherwise. */
	vcpu = vm_get_vcpu(vm, 0);

	while (p < end && ops++ < 64) {
		uint8_t op = (uint8_t)take(&p, end, 1);

		switch (op % 4) {
		case 0: { /* set region */
			uint8_t sel = (uint8_t)take(&p, end, 1);
			uint32_t slot = (sel & 7) % NR_IDS | ((sel >> 3) & 1) << 16;
			uint32_t flags = (uint32_t)take(&p, end, 1) & (sel & 0x80 ? 0xff : 3);
			uint64_t gpa = take(&p, end, 2) * 4096ull;
			uint64_t npages = take(&p, end, 1) % 64;
			uint64_t hpage = take(&p, end, 2) % (MEM_PAGES - 64);
			uint64_t hva = (uint64_t)(uintptr_t)mem + hpage * 4096;
			int r, m;

			if (sel & 0x40)
				gpa += take(&p, end, 1); /* maybe unaligned */
			if (sel & 0x20)
				slot = (uint32_t)take(&p, end, 4);
			{
				struct vm_memory_region mr = { slot, flags, gpa, npages * 4096, hva };

				r = vm_set_user_memory_region(vm, &mr);
			}
			/* Ids beyond the model's are valid for the MMU: just undo them. */
			if ((slot >> 16) < 2 && (slot & 0xffff) >= NR_IDS &&
			    (slot & 0xffff) < KVM_USER_MEM_SLOTS) {
				struct vm_memory_region mr = { slot, 0, gpa, 0, hva };

				if (!r && npages)
					CHECK(!vm_set_user_memory_region(vm, &mr), "undo");
				break;
			}
			m = model_set(slot, flags, gpa, npages * 4096, hva);
			CHECK(r == m, "set_region(slot %#x flags %#x gpa %#llx pages %llu) = %d, model %d",
			      slot, flags, (unsigned long long)gpa, (unsigned long long)npages, r, m);
			break;
		}
		case 1:
		case 2: { /* guest write then read */
			uint64_t gpa = take(&p, end, 2) * 4096ull + (take(&p, end, 1) & 0xf8);
			const struct model_slot *o = model_find(gpa);
			uint64_t val = 0x1234500000000000ull | gpa, got = 0;
			bool write_ok = o && !(o->flags & KVM_MEM_READONLY);
			int r;

			vcpu_load(vcpu);
			r = vcpu_write_u64(vcpu, gpa, val);

			CHECK(r == (write_ok ? 0 : -EFAULT), "write %#llx = %d", (unsigned long long)gpa, r);
			r = vcpu_read_u64(vcpu, gpa, &got);
			vcpu_put(vcpu);
			CHECK(r == (o ? 0 : -EFAULT), "read %#llx = %d", (unsigned long long)gpa, r);
			if (o) {
				uint64_t host = *(uint64_t *)(uintptr_t)(o->hva + (gpa - o->gpa));

				CHECK(got == host, "read %#llx: guest sees %#llx, host has %#llx",
				      (unsigned long long)gpa, (unsigned long long)got,
				      (unsigned long long)host);
				if (write_ok)
					CHECK(got == val, "write not visible");
			}
			break;
		}
		case 3: { /* prefault */
			uint64_t gpa = take(&p, end, 2) * 4096ull, pages = take(&p, end, 1) % 16 + 1;
			int level = (int)take(&p, end, 1) % 3 + 1;
			int64_t r = vm_prefault_memory(vm, 0, gpa, pages * 4096, level);
			uint64_t i;
			bool all = true;

			for (i = 0; i < pages; i++)
				all &= model_find(gpa + i * 4096) != NULL;
			CHECK(all ? r == (int64_t)(pages * 4096) : r == -ENOENT || r >= 0,
			      "prefault = %lld", (long long)r);
			break;
		}
		}
	}
	vm_destroy(vm);
	return 0;
}
