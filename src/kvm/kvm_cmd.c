/* kvm_cmd.c: host write commands: have the guest (GUEST_F_HOST_CMDS) stamp exactly the RAM pages the host names. */
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "kvm_internal.h"
#include "rmapvm/util.h"

/*
 * The protocol (kvm_guest_abi.h): the host sets cmd_first/count/stride
 * (and the page list), then bumps cmd_seq with a release store; each vCPU
 * stamps the pages of its region and stores cmd_done = cmd_seq. Host
 * writes to the system slot are recorded as host-dirty like any other.
 */

static volatile struct guest_params *cmd_params(struct kvm_vm *vm)
{
	return (volatile struct guest_params *)((uint8_t *)vm->sys_mem.hva + GUEST_PARAMS_GPA);
}

static uint32_t vcpu_cmd_done(struct kvm_vm *vm, int i)
{
	struct guest_vcpu_page *v =
		(struct guest_vcpu_page *)((uint8_t *)vm->sys_mem.hva + GUEST_VCPU_PAGE_GPA(i));

	return __atomic_load_n(&v->cmd_done, __ATOMIC_ACQUIRE);
}

/* -EBUSY unless every vCPU thread runs unpaused; -EIO if one has finished or failed. */
static int cmd_check_running(struct kvm_vm *vm)
{
	int i, r = 0;

	pthread_mutex_lock(&vm->lock);
	if (vm->pause_req) {
		kvm_vm_set_error(vm, "host write command: the VM is paused");
		r = -EBUSY;
	}
	for (i = 0; i < vm->nr_vcpus && !r; i++) {
		enum kvm_vcpu_run_state st = vm->vcpus[i].state;

		if (!vm->vcpus[i].thread_started) {
			kvm_vm_set_error(vm, "host write command: vCPU %d not started", i);
			r = -EBUSY;
		} else if (st == KVM_VCPU_DONE || st == KVM_VCPU_FAILED || st == KVM_VCPU_ERROR) {
			if (st == KVM_VCPU_DONE)
				kvm_vm_set_error(vm, "host write command: vCPU %d has finished", i);
			r = -EIO;
		}
	}
	pthread_mutex_unlock(&vm->lock);
	return r;
}

static int cmd_post_and_wait(struct kvm_vm *vm, uint64_t first, uint64_t count, uint64_t stride,
			     double timeout_s)
{
	volatile struct guest_params *p = cmd_params(vm);
	uint64_t deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
	uint32_t seq;
	int i, r, spins = 0;

	r = cmd_check_running(vm);
	if (r)
		return r;
	seq = p->cmd_seq + 1;
	if (!(seq & STAMP_ROUND_MASK))
		seq++; /* the stamp round must not be 0 */
	p->cmd_first = first;
	p->cmd_count = count;
	p->cmd_stride = stride;
	__atomic_store_n(&((struct guest_params *)p)->cmd_seq, seq, __ATOMIC_RELEASE);
	kvm_dirty_mark_host(vm, GUEST_PARAMS_GPA, sizeof(struct guest_params));

	for (i = 0; i < vm->nr_vcpus; i++) {
		while (vcpu_cmd_done(vm, i) != seq) {
			if (++spins % 256 == 0) {
				r = cmd_check_running(vm);
				if (r)
					return r;
				if (now_ns() > deadline) {
					kvm_vm_set_error(vm, "host write command %u: vCPU %d did not "
							     "finish in %.1f s",
							 seq, i, timeout_s);
					return -ETIMEDOUT;
				}
			}
			if (spins < 4096) {
				sched_yield();
			} else {
				struct timespec ts = { 0, 20000 };

				nanosleep(&ts, NULL);
			}
		}
	}
	return 0;
}

static int cmd_mode_ok(struct kvm_vm *vm)
{
	if (!(vm->cfg.guest_flags & GUEST_F_HOST_CMDS)) {
		kvm_vm_set_error(vm, "host write commands need GUEST_F_HOST_CMDS in guest_flags");
		return -EINVAL;
	}
	return 0;
}

int kvm_vm_guest_write_range(struct kvm_vm *vm, uint64_t first, uint64_t count, uint64_t stride,
			     double timeout_s)
{
	int r = cmd_mode_ok(vm);

	if (r)
		return r;
	if (!stride || (count && (first >= vm->ram_pages ||
				  (count - 1) > (vm->ram_pages - 1 - first) / stride))) {
		kvm_vm_set_error(vm, "host write command: pages %llu + k * %llu, k < %llu, outside "
				     "RAM (%llu pages)",
				 (unsigned long long)first, (unsigned long long)stride,
				 (unsigned long long)count, (unsigned long long)vm->ram_pages);
		return -EINVAL;
	}
	return cmd_post_and_wait(vm, first, count, stride, timeout_s);
}

int kvm_vm_guest_write_list(struct kvm_vm *vm, const uint32_t *pages, uint64_t n,
			    double timeout_s)
{
	uint64_t i;
	int r = cmd_mode_ok(vm);

	if (r)
		return r;
	if (n > GUEST_LIST_MAX) {
		kvm_vm_set_error(vm, "host write command: %llu pages listed (max %llu)",
				 (unsigned long long)n, (unsigned long long)GUEST_LIST_MAX);
		return -EINVAL;
	}
	for (i = 0; i < n; i++) {
		if (pages[i] >= vm->ram_pages) {
			kvm_vm_set_error(vm, "host write command: page %u outside RAM (%llu pages)",
					 pages[i], (unsigned long long)vm->ram_pages);
			return -EINVAL;
		}
	}
	if (n) {
		r = kvm_vm_write_guest(vm, GUEST_LIST_GPA, pages, n * sizeof(*pages));
		if (r)
			return r;
	}
	return cmd_post_and_wait(vm, 0, n, 0, timeout_s);
}
