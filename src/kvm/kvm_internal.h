/* kvm_internal.h: the VMM's private structures (VM, memslots, vCPUs) shared by the src/kvm files. */
#ifndef RMAPVM_KVM_INTERNAL_H
#define RMAPVM_KVM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>

#include "rmapvm/backing.h"
#include "rmapvm/kvm.h"
#include "rmapvm/kvm_guest_abi.h"

/* kvm_memslot - one KVM memslot the VMM registered. */
struct kvm_memslot {
	uint32_t id;		/* slot id (address space 0) */
	gpa_t gpa;		/* guest_phys_addr */
	uint64_t npages;	/* memory_size >> PAGE_SHIFT */
	uint8_t *hva;		/* userspace_addr */
	uint32_t flags;		/* KVM_MEM_* now in force */
	bool ram;		/* workload RAM (not the system slot) */
	pthread_mutex_t lock;	/* protects the two bitmaps below */
	uint64_t *pending;	/* bitmap mode: fetched from KVM, not yet handed to a harvester */
	uint64_t *host_dirty;	/* pages the VMM itself wrote (KVM does not log those) */
};

/* kvm_vcpu - one vCPU and the thread that runs it. */
struct kvm_vcpu {
	struct kvm_vm *vm;
	int id;
	int fd;
	struct kvm_run *run;		/* mmap of the vCPU fd */
	struct kvm_dirty_gfn *ring;	/* dirty ring (mmap at KVM_DIRTY_LOG_PAGE_OFFSET), or NULL */
	uint32_t ring_fetch;		/* next ring index to harvest (under vm->ring_lock) */
	pthread_t thread;
	bool thread_started;
	/* under vm->lock */
	enum kvm_vcpu_run_state state;
	bool paused;			/* parked in the pause loop */
	/* counters (atomic: read by other threads) */
	_Atomic uint64_t exits, io_exits, syncs, intr_exits, ring_full_exits;
};

/* kvm_vm - the VM. */
struct kvm_vm {
	struct kvm_vm_config cfg;
	struct kvm_caps caps;
	int kvm_fd;			/* /dev/kvm */
	int vm_fd;
	size_t run_size;		/* KVM_GET_VCPU_MMAP_SIZE */
	struct kvm_cpuid2 *cpuid;	/* KVM_GET_SUPPORTED_CPUID */
	uint32_t *msr_index;		/* KVM_GET_MSR_INDEX_LIST */
	int nr_msr_index;

	struct mem_backing sys_mem;	/* memslot 0: everything below GUEST_RAM_GPA */
	struct mem_backing ram_mem;	/* memslots 1..: workload RAM */
	uint64_t sys_bytes;
	uint64_t ram_pages;
	int nr_slots;			/* used entries of slots[] */
	struct kvm_memslot **slots;	/* slots[0] = system, then RAM, then extra slots */
	int slots_cap;
	struct kvm_vcpu *vcpus;
	int nr_vcpus;

	pthread_mutex_t lock;		/* vCPU run states, pause protocol */
	pthread_cond_t cond;
	bool pause_req;
	bool quit;
	int nr_paused;
	int nr_finished;
	uint64_t ring_gen;		/* bumped after each KVM_RESET_DIRTY_RINGS */
	int throttle_pct;
	pthread_t throttle_thread;
	bool throttle_started;

	pthread_mutex_t dirty_lock;	/* start/stop of dirty tracking */
	bool logging;
	struct dirty_config dirty;
	bool manual_enabled;		/* we enabled MANUAL_DIRTY_LOG_PROTECT2 */
	pthread_mutex_t ring_lock;	/* one ring harvester at a time */

	pthread_mutex_t err_lock;
	char err[512];
	char log[8192];			/* guest output, a ring of text */
	size_t log_len;
};

/* Set the VM's error message (first call after a clear wins is not enforced: last wins). */
void kvm_vm_set_error(struct kvm_vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
struct kvm_memslot *kvm_vm_find_slot(struct kvm_vm *vm, uint32_t slot);
/* Set a slot's flags (KVM_SET_USER_MEMORY_REGION with the same range). */
int kvm_memslot_set_flags(struct kvm_vm *vm, struct kvm_memslot *s, uint32_t flags);
/* vCPU thread body and the kick signal (kvm_run.c). */
int kvm_run_init_signals(void);
void kvm_vcpu_kick(struct kvm_vcpu *vcpu);
/* Host dirty bookkeeping (kvm_dirty.c). */
void kvm_dirty_mark_host(struct kvm_vm *vm, gpa_t gpa, size_t len);
void kvm_dirty_free(struct kvm_vm *vm);

/* The embedded guest image (guest_blob.S). */
extern const uint8_t rmapvm_guest_start[];
extern const uint8_t rmapvm_guest_end[];

static inline uint64_t bitmap_words(uint64_t npages)
{
	return (npages + 63) / 64;
}

#endif /* RMAPVM_KVM_INTERNAL_H */
