/* kvm_state.c: vCPU state save/restore (regs, sregs, FPU/XSAVE, XCRs, MSRs, LAPIC, events, MP state, TSC) and VM snapshots. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvm_internal.h"

_Static_assert(sizeof(struct kvm_regs) == 144, "kvm_regs");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm_sregs");
_Static_assert(sizeof(struct kvm_fpu) == 416, "kvm_fpu");
_Static_assert(sizeof(struct kvm_xcrs) == 392, "kvm_xcrs");
_Static_assert(sizeof(struct kvm_lapic_state) == 1024, "kvm_lapic_state");
_Static_assert(sizeof(struct kvm_vcpu_events) == 64, "kvm_vcpu_events");
_Static_assert(sizeof(struct kvm_mp_state) == 4, "kvm_mp_state");
_Static_assert(sizeof(struct kvm_debugregs) == 128, "kvm_debugregs");

#define MSR_IA32_TSC 0x10

#define VCPU_IOCTL(vcpu, req, arg, what)                                                           \
	do {                                                                                       \
		if (ioctl((vcpu)->fd, req, arg)) {                                                 \
			int __e = errno;                                                           \
			kvm_vm_set_error((vcpu)->vm, "vCPU %d: %s: %s", (vcpu)->id, what,         \
					 strerror(__e));                                           \
			return -__e;                                                               \
		}                                                                                  \
	} while (0)

/* Read every MSR of the kernel's list; ones KVM refuses to read are skipped. */
static int save_msrs(struct kvm_vcpu *vcpu, struct kvm_vcpu_state *st)
{
	struct kvm_vm *vm = vcpu->vm;
	struct kvm_msrs *m;
	int i = 0, n;

	m = calloc(1, sizeof(*m) + KVM_STATE_MAX_MSRS * sizeof(struct kvm_msr_entry));
	if (!m)
		return -ENOMEM;
	st->nr_msrs = 0;
	while (i < vm->nr_msr_index && st->nr_msrs < KVM_STATE_MAX_MSRS) {
		int j, todo = MIN(vm->nr_msr_index - i, (int)(KVM_STATE_MAX_MSRS - st->nr_msrs));

		m->nmsrs = todo;
		for (j = 0; j < todo; j++) {
			m->entries[j].index = vm->msr_index[i + j];
			m->entries[j].data = 0;
		}
		n = ioctl(vcpu->fd, KVM_GET_MSRS, m);
		if (n < 0) {
			kvm_vm_set_error(vm, "vCPU %d: KVM_GET_MSRS: %s", vcpu->id, strerror(errno));
			free(m);
			return -errno;
		}
		for (j = 0; j < n; j++) {
			st->msrs[st->nr_msrs].index = m->entries[j].index;
			st->msrs[st->nr_msrs].data = m->entries[j].data;
			st->nr_msrs++;
		}
		i += n + 1; /* entry n failed (or all done): skip it */
	}
	free(m);
	return 0;
}

static int load_msrs(struct kvm_vcpu *vcpu, const struct kvm_vcpu_state *st)
{
	struct kvm_msrs *m;
	uint32_t i = 0;
	int n, j;

	m = calloc(1, sizeof(*m) + KVM_STATE_MAX_MSRS * sizeof(struct kvm_msr_entry));
	if (!m)
		return -ENOMEM;
	while (i < st->nr_msrs) {
		m->nmsrs = st->nr_msrs - i;
		for (j = 0; j < (int)m->nmsrs; j++) {
			m->entries[j].index = st->msrs[i + j].index;
			m->entries[j].data = st->msrs[i + j].data;
		}
		n = ioctl(vcpu->fd, KVM_SET_MSRS, m);
		if (n < 0) {
			kvm_vm_set_error(vcpu->vm, "vCPU %d: KVM_SET_MSRS: %s", vcpu->id,
					 strerror(errno));
			free(m);
			return -errno;
		}
		if ((uint32_t)n < m->nmsrs && st->msrs[i + n].index == MSR_IA32_TSC) {
			kvm_vm_set_error(vcpu->vm, "vCPU %d: KVM_SET_MSRS refused the TSC", vcpu->id);
			free(m);
			return -EIO;
		}
		i += n + 1; /* a read-only MSR (KVM refuses host writes): skip it */
	}
	free(m);
	return 0;
}

int kvm_vcpu_save_state(struct kvm_vm *vm, int id, struct kvm_vcpu_state *st)
{
	struct kvm_vcpu *vcpu;
	int r;

	if (id < 0 || id >= vm->nr_vcpus)
		return -EINVAL;
	vcpu = &vm->vcpus[id];
	memset(st, 0, sizeof(*st));
	st->magic = KVM_VCPU_STATE_MAGIC;
	st->version = KVM_VCPU_STATE_VERSION;
	st->size = sizeof(*st);
	st->vcpu_id = id;
	VCPU_IOCTL(vcpu, KVM_GET_REGS, st->regs, "KVM_GET_REGS");
	VCPU_IOCTL(vcpu, KVM_GET_SREGS, st->sregs, "KVM_GET_SREGS");
	VCPU_IOCTL(vcpu, KVM_GET_FPU, st->fpu, "KVM_GET_FPU");
	if (vm->caps.xsave_size) {
		if (vm->caps.xsave_size > KVM_STATE_XSAVE_MAX) {
			kvm_vm_set_error(vm, "xsave area of %d bytes exceeds the state blob's %d",
					 vm->caps.xsave_size, KVM_STATE_XSAVE_MAX);
			return -E2BIG;
		}
		if (vm->caps.xsave_size > 4096)
			VCPU_IOCTL(vcpu, KVM_GET_XSAVE2, st->xsave, "KVM_GET_XSAVE2");
		else
			VCPU_IOCTL(vcpu, KVM_GET_XSAVE, st->xsave, "KVM_GET_XSAVE");
		st->xsave_len = vm->caps.xsave_size;
		st->flags |= KVM_STATE_F_XSAVE;
	}
	if (vm->caps.xcrs) {
		VCPU_IOCTL(vcpu, KVM_GET_XCRS, st->xcrs, "KVM_GET_XCRS");
		st->flags |= KVM_STATE_F_XCRS;
	}
	if (vm->caps.irqchip) {
		VCPU_IOCTL(vcpu, KVM_GET_LAPIC, st->lapic, "KVM_GET_LAPIC");
		st->flags |= KVM_STATE_F_LAPIC;
	}
	if (vm->caps.vcpu_events) {
		VCPU_IOCTL(vcpu, KVM_GET_VCPU_EVENTS, st->events, "KVM_GET_VCPU_EVENTS");
		st->flags |= KVM_STATE_F_EVENTS;
	}
	VCPU_IOCTL(vcpu, KVM_GET_MP_STATE, st->mp_state, "KVM_GET_MP_STATE");
	st->flags |= KVM_STATE_F_MP_STATE;
	VCPU_IOCTL(vcpu, KVM_GET_DEBUGREGS, st->debugregs, "KVM_GET_DEBUGREGS");
	st->flags |= KVM_STATE_F_DEBUGREGS;
	r = ioctl(vcpu->fd, KVM_GET_TSC_KHZ, 0);
	st->tsc_khz = r > 0 ? (uint32_t)r : 0;
	return save_msrs(vcpu, st);
}

int kvm_vcpu_load_state(struct kvm_vm *vm, int id, const struct kvm_vcpu_state *st)
{
	struct kvm_vcpu *vcpu;
	int r;

	if (id < 0 || id >= vm->nr_vcpus)
		return -EINVAL;
	vcpu = &vm->vcpus[id];
	if (st->magic != KVM_VCPU_STATE_MAGIC || st->version != KVM_VCPU_STATE_VERSION ||
	    st->size != sizeof(*st) || st->nr_msrs > KVM_STATE_MAX_MSRS ||
	    st->xsave_len > KVM_STATE_XSAVE_MAX) {
		kvm_vm_set_error(vm, "vCPU %d: state blob: magic 0x%x version %u size %u: not a "
				     "version-%d blob of %zu bytes",
				 id, st->magic, st->version, st->size, KVM_VCPU_STATE_VERSION,
				 sizeof(*st));
		return -EINVAL;
	}
	if ((st->flags & KVM_STATE_F_XSAVE) && (int)st->xsave_len > vm->caps.xsave_size) {
		kvm_vm_set_error(vm, "vCPU %d: xsave area of %u bytes, this kernel takes %d", id,
				 st->xsave_len, vm->caps.xsave_size);
		return -EINVAL;
	}
	if (st->tsc_khz && vm->caps.tsc_control) {
		r = ioctl(vcpu->fd, KVM_SET_TSC_KHZ, st->tsc_khz);
		(void)r; /* best effort: the guest does not depend on the rate */
	}
	/* Order as the kernel selftests' vcpu_load_state(): sregs first, regs last. */
	VCPU_IOCTL(vcpu, KVM_SET_SREGS, st->sregs, "KVM_SET_SREGS");
	r = load_msrs(vcpu, st);
	if (r)
		return r;
	if (st->flags & KVM_STATE_F_XSAVE) {
		/* KVM_SET_XSAVE copies the kernel's xsave size: give it a buffer that large. */
		void *buf = calloc(1, MAX(vm->caps.xsave_size, 4096));

		if (!buf)
			return -ENOMEM;
		memcpy(buf, st->xsave, st->xsave_len);
		if (ioctl(vcpu->fd, KVM_SET_XSAVE, buf)) {
			r = -errno;
			free(buf);
			kvm_vm_set_error(vm, "vCPU %d: KVM_SET_XSAVE: %s", id, strerror(-r));
			return r;
		}
		free(buf);
	} else {
		VCPU_IOCTL(vcpu, KVM_SET_FPU, st->fpu, "KVM_SET_FPU");
	}
	if (st->flags & KVM_STATE_F_XCRS)
		VCPU_IOCTL(vcpu, KVM_SET_XCRS, st->xcrs, "KVM_SET_XCRS");
	if ((st->flags & KVM_STATE_F_LAPIC) && vm->caps.irqchip)
		VCPU_IOCTL(vcpu, KVM_SET_LAPIC, st->lapic, "KVM_SET_LAPIC");
	if (st->flags & KVM_STATE_F_EVENTS)
		VCPU_IOCTL(vcpu, KVM_SET_VCPU_EVENTS, st->events, "KVM_SET_VCPU_EVENTS");
	if (st->flags & KVM_STATE_F_MP_STATE)
		VCPU_IOCTL(vcpu, KVM_SET_MP_STATE, st->mp_state, "KVM_SET_MP_STATE");
	if (st->flags & KVM_STATE_F_DEBUGREGS)
		VCPU_IOCTL(vcpu, KVM_SET_DEBUGREGS, st->debugregs, "KVM_SET_DEBUGREGS");
	VCPU_IOCTL(vcpu, KVM_SET_REGS, st->regs, "KVM_SET_REGS");
	return 0;
}

/*
 * Snapshot file: snap_header, then for each memslot a snap_region and its
 * bytes, then nr_vcpus kvm_vcpu_state blobs, then an FNV-1a checksum of
 * everything before it.
 */
#define SNAP_MAGIC   "RMAPVMSN"
#define SNAP_VERSION 1

struct snap_header {
	char magic[8];
	uint32_t version;
	uint32_t header_size;
	uint64_t mem_bytes;
	uint32_t nr_vcpus;
	uint32_t nr_slots;
	uint32_t backing;
	uint32_t ring_entries;
	uint32_t guest_flags;
	uint32_t nr_regions;
	uint64_t batch;
	uint64_t max_rounds;
	struct workload_spec workload;
	uint32_t state_size;
	uint32_t pad;
};

struct snap_region {
	uint32_t slot;
	uint32_t pad;
	uint64_t gpa;
	uint64_t npages;
};

struct snap_io {
	int fd;
	uint64_t hash;
};

static void fnv(struct snap_io *io, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n--) {
		io->hash ^= *b++;
		io->hash *= 0x100000001b3ull;
	}
}

static int snap_write(struct snap_io *io, const void *p, size_t n)
{
	const uint8_t *b = p;

	fnv(io, p, n);
	while (n) {
		ssize_t w = write(io->fd, b, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		b += w;
		n -= w;
	}
	return 0;
}

static int snap_read(struct snap_io *io, void *p, size_t n)
{
	uint8_t *b = p;
	size_t want = n;

	while (n) {
		ssize_t r = read(io->fd, b, n);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -ENODATA;
		b += r;
		n -= r;
	}
	fnv(io, p, want);
	return 0;
}

int kvm_vm_save(struct kvm_vm *vm, const char *path)
{
	struct snap_io io = { .hash = 0xcbf29ce484222325ull };
	struct snap_header h;
	struct kvm_vcpu_state *st;
	int i, r;

	st = malloc(sizeof(*st));
	if (!st)
		return -ENOMEM;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, SNAP_MAGIC, 8);
	h.version = SNAP_VERSION;
	h.header_size = sizeof(h);
	h.mem_bytes = vm->cfg.mem_bytes;
	h.nr_vcpus = vm->nr_vcpus;
	h.nr_slots = vm->cfg.nr_slots;
	h.backing = vm->cfg.backing;
	h.ring_entries = vm->cfg.ring_entries;
	h.guest_flags = vm->cfg.guest_flags;
	h.nr_regions = vm->nr_slots;
	h.batch = vm->cfg.batch;
	h.max_rounds = vm->cfg.max_rounds;
	h.workload = vm->cfg.workload;
	h.state_size = sizeof(*st);
	io.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (io.fd < 0) {
		r = -errno;
		kvm_vm_set_error(vm, "snapshot %s: %s", path, strerror(-r));
		free(st);
		return r;
	}
	r = snap_write(&io, &h, sizeof(h));
	for (i = 0; !r && i < vm->nr_slots; i++) {
		struct kvm_memslot *s = vm->slots[i];
		struct snap_region reg = { .slot = s->id, .gpa = s->gpa, .npages = s->npages };

		r = snap_write(&io, &reg, sizeof(reg));
		if (!r)
			r = snap_write(&io, s->hva, s->npages << PAGE_SHIFT);
	}
	for (i = 0; !r && i < vm->nr_vcpus; i++) {
		r = kvm_vcpu_save_state(vm, i, st);
		if (!r)
			r = snap_write(&io, st, sizeof(*st));
	}
	if (!r) {
		uint64_t sum = io.hash;

		r = snap_write(&io, &sum, sizeof(sum));
	}
	if (close(io.fd) && !r)
		r = -errno;
	if (r && !vm->err[0])
		kvm_vm_set_error(vm, "snapshot %s: write: %s", path, strerror(-r));
	free(st);
	return r;
}

int kvm_vm_restore(const char *path, kvm_print_fn print, void *opaque, struct kvm_vm **out,
		   char *err, size_t errlen)
{
	struct snap_io io = { .hash = 0xcbf29ce484222325ull };
	struct kvm_vm_config cfg;
	struct kvm_vcpu_state *st = NULL;
	struct snap_header h;
	struct kvm_vm *vm = NULL;
	uint64_t sum, want;
	uint32_t i;
	int r;

	*out = NULL;
	io.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (io.fd < 0) {
		r = -errno;
		snprintf(err, errlen, "snapshot %s: %s", path, strerror(-r));
		return r;
	}
	r = snap_read(&io, &h, sizeof(h));
	if (r || memcmp(h.magic, SNAP_MAGIC, 8) || h.version != SNAP_VERSION ||
	    h.header_size != sizeof(h) || h.state_size != sizeof(*st)) {
		snprintf(err, errlen, "snapshot %s: not a version-%d rmapvm KVM snapshot", path,
			 SNAP_VERSION);
		r = r ? r : -EINVAL;
		goto out;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.mem_bytes = h.mem_bytes;
	cfg.nr_vcpus = (int)h.nr_vcpus;
	cfg.nr_slots = (int)h.nr_slots;
	cfg.backing = h.backing;
	cfg.ring_entries = h.ring_entries;
	cfg.guest_flags = h.guest_flags;
	cfg.batch = h.batch;
	cfg.max_rounds = h.max_rounds;
	cfg.workload = h.workload;
	cfg.print = print;
	cfg.print_opaque = opaque;
	r = kvm_vm_create(&cfg, &vm, err, errlen);
	if (r)
		goto out;
	if (h.nr_regions != (uint32_t)vm->nr_slots) {
		snprintf(err, errlen, "snapshot %s: %u memslots, the rebuilt VM has %d", path,
			 h.nr_regions, vm->nr_slots);
		r = -EINVAL;
		goto out;
	}
	for (i = 0; i < h.nr_regions; i++) {
		struct kvm_memslot *s = vm->slots[i];
		struct snap_region reg;

		r = snap_read(&io, &reg, sizeof(reg));
		if (!r && (reg.slot != s->id || reg.gpa != s->gpa || reg.npages != s->npages))
			r = -EINVAL;
		if (!r)
			r = snap_read(&io, s->hva, s->npages << PAGE_SHIFT);
		if (r) {
			snprintf(err, errlen, "snapshot %s: memslot %u: %s", path, reg.slot,
				 r == -EINVAL ? "layout differs" : strerror(-r));
			goto out;
		}
	}
	st = malloc(sizeof(*st));
	if (!st) {
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < h.nr_vcpus; i++) {
		r = snap_read(&io, st, sizeof(*st));
		if (!r)
			r = kvm_vcpu_load_state(vm, (int)i, st);
		if (r) {
			snprintf(err, errlen, "snapshot %s: vCPU %u: %s", path, i,
				 vm->err[0] ? vm->err : strerror(-r));
			goto out;
		}
	}
	want = io.hash;
	r = snap_read(&io, &sum, sizeof(sum));
	if (r || sum != want) {
		snprintf(err, errlen, "snapshot %s: checksum mismatch (file damaged)", path);
		r = -EBADMSG;
		goto out;
	}
	*out = vm;
	vm = NULL;
out:
	free(st);
	close(io.fd);
	kvm_vm_destroy(vm);
	return r;
}
