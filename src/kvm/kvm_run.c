/* kvm_run.c: vCPU threads, the KVM_RUN loop with the guest port protocol, pause/resume, kicks and throttling. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "kvm_internal.h"

/*
 * Kicks: a vCPU thread is forced out of KVM_RUN by a signal (SIGUSR1)
 * whose handler sets kvm_run.immediate_exit, so a kick that lands just
 * before KVM_RUN is not lost: KVM_RUN then returns -EINTR at once. The
 * kicker sets its request flag (under vm->lock) before it signals, and the
 * thread checks the flags after every return, so every request is seen.
 */
#define KVM_KICK_SIGNAL SIGUSR1
#define THROTTLE_SLICE_NS 10000000ull /* 10 ms, as QEMU's auto-converge */

static __thread struct kvm_run *tls_run;
static pthread_once_t signal_once = PTHREAD_ONCE_INIT;
static int signal_err;

static void kick_handler(int sig)
{
	(void)sig;
	if (tls_run)
		tls_run->immediate_exit = 1;
}

static void install_handler(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	if (sigaction(KVM_KICK_SIGNAL, &sa, NULL))
		signal_err = -errno;
}

int kvm_run_init_signals(void)
{
	pthread_once(&signal_once, install_handler);
	return signal_err;
}

void kvm_vcpu_kick(struct kvm_vcpu *vcpu)
{
	if (vcpu->thread_started)
		pthread_kill(vcpu->thread, KVM_KICK_SIGNAL);
}

static const char *exit_name(uint32_t reason)
{
	static const char *const names[] = {
		[KVM_EXIT_UNKNOWN] = "UNKNOWN",
		[KVM_EXIT_EXCEPTION] = "EXCEPTION",
		[KVM_EXIT_IO] = "IO",
		[KVM_EXIT_HYPERCALL] = "HYPERCALL",
		[KVM_EXIT_DEBUG] = "DEBUG",
		[KVM_EXIT_HLT] = "HLT",
		[KVM_EXIT_MMIO] = "MMIO",
		[KVM_EXIT_IRQ_WINDOW_OPEN] = "IRQ_WINDOW_OPEN",
		[KVM_EXIT_SHUTDOWN] = "SHUTDOWN",
		[KVM_EXIT_FAIL_ENTRY] = "FAIL_ENTRY",
		[KVM_EXIT_INTR] = "INTR",
		[KVM_EXIT_SET_TPR] = "SET_TPR",
		[KVM_EXIT_TPR_ACCESS] = "TPR_ACCESS",
		[KVM_EXIT_NMI] = "NMI",
		[KVM_EXIT_INTERNAL_ERROR] = "INTERNAL_ERROR",
		[KVM_EXIT_SYSTEM_EVENT] = "SYSTEM_EVENT",
		[KVM_EXIT_X86_RDMSR] = "X86_RDMSR",
		[KVM_EXIT_X86_WRMSR] = "X86_WRMSR",
		[KVM_EXIT_DIRTY_RING_FULL] = "DIRTY_RING_FULL",
	};

	return reason < ARRAY_SIZE(names) && names[reason] ? names[reason] : "?";
}

static const char *fail_name(uint32_t reason)
{
	switch (reason) {
	case GUEST_FAIL_BAD_PARAMS:
		return "bad parameters";
	case GUEST_FAIL_READ_MISMATCH:
		return "a read found a stamp other than the last one written";
	case GUEST_FAIL_VERIFY:
		return "verification: page stamp differs from the shadow";
	case GUEST_FAIL_BAD_STAMP:
		return "stamp names another vCPU, page or a future round";
	case GUEST_FAIL_FPU:
		return "xmm7 lost its value (FPU state)";
	default:
		return "unknown reason";
	}
}

static struct guest_vcpu_page *vcpu_page(struct kvm_vcpu *vcpu)
{
	return (struct guest_vcpu_page *)((uint8_t *)vcpu->vm->sys_mem.hva +
					  GUEST_VCPU_PAGE_GPA(vcpu->id));
}

/* Describe an unexpected exit with the registers that explain it. */
static void report_exit(struct kvm_vcpu *vcpu, const char *what)
{
	struct kvm_run *run = vcpu->run;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	char extra[160] = "";

	memset(&regs, 0, sizeof(regs));
	memset(&sregs, 0, sizeof(sregs));
	ioctl(vcpu->fd, KVM_GET_REGS, &regs);
	ioctl(vcpu->fd, KVM_GET_SREGS, &sregs);
	switch (run->exit_reason) {
	case KVM_EXIT_SHUTDOWN:
		snprintf(extra, sizeof(extra),
			 " (triple fault; on PVM any guest exception at CPL3 ends here)");
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(extra, sizeof(extra), " suberror %u ndata %u data0 0x%llx",
			 run->internal.suberror, run->internal.ndata,
			 run->internal.ndata ? (unsigned long long)run->internal.data[0] : 0ull);
		break;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(extra, sizeof(extra), " hardware reason 0x%llx",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		break;
	case KVM_EXIT_EXCEPTION:
		snprintf(extra, sizeof(extra), " vector %u error 0x%x", run->ex.exception,
			 run->ex.error_code);
		break;
	case KVM_EXIT_IO:
		snprintf(extra, sizeof(extra), " port 0x%x %s size %u", run->io.port,
			 run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in", run->io.size);
		break;
	case KVM_EXIT_MMIO:
		snprintf(extra, sizeof(extra), " gpa 0x%llx len %u %s",
			 (unsigned long long)run->mmio.phys_addr, run->mmio.len,
			 run->mmio.is_write ? "write" : "read");
		break;
	}
	kvm_vm_set_error(vcpu->vm,
			 "vCPU %d: %s: exit %s (%u)%s; rip 0x%llx rsp 0x%llx rax 0x%llx rdi 0x%llx "
			 "rflags 0x%llx cs 0x%x (dpl %u) cr0 0x%llx cr2 0x%llx cr3 0x%llx cr4 0x%llx "
			 "efer 0x%llx",
			 vcpu->id, what, exit_name(run->exit_reason), run->exit_reason, extra,
			 (unsigned long long)regs.rip, (unsigned long long)regs.rsp,
			 (unsigned long long)regs.rax, (unsigned long long)regs.rdi,
			 (unsigned long long)regs.rflags, sregs.cs.selector, sregs.cs.dpl,
			 (unsigned long long)sregs.cr0, (unsigned long long)sregs.cr2,
			 (unsigned long long)sregs.cr3, (unsigned long long)sregs.cr4,
			 (unsigned long long)sregs.efer);
}

static void guest_print(struct kvm_vcpu *vcpu, uint32_t len)
{
	struct kvm_vm *vm = vcpu->vm;
	struct guest_vcpu_page *v = vcpu_page(vcpu);
	char text[sizeof(v->print_buf) + 1];
	size_t n, room = sizeof(vm->log);

	if (len > sizeof(v->print_buf))
		len = sizeof(v->print_buf);
	memcpy(text, v->print_buf, len);
	text[len] = 0;
	pthread_mutex_lock(&vm->err_lock);
	n = snprintf(NULL, 0, "[vCPU %d] %s\n", vcpu->id, text);
	if (n < room) {
		if (vm->log_len + n >= room) {
			size_t drop = vm->log_len + n + 1 - room;

			memmove(vm->log, vm->log + drop, vm->log_len - drop);
			vm->log_len -= drop;
		}
		snprintf(vm->log + vm->log_len, room - vm->log_len, "[vCPU %d] %s\n", vcpu->id,
			 text);
		vm->log_len += n;
	}
	pthread_mutex_unlock(&vm->err_lock);
	if (vm->cfg.print)
		vm->cfg.print(vm->cfg.print_opaque, vcpu->id, text, len);
}

size_t kvm_vm_log(struct kvm_vm *vm, char *buf, size_t len)
{
	size_t n;

	if (!len)
		return 0;
	pthread_mutex_lock(&vm->err_lock);
	n = MIN(vm->log_len, len - 1);
	memcpy(buf, vm->log + (vm->log_len - n), n);
	buf[n] = 0;
	pthread_mutex_unlock(&vm->err_lock);
	return n;
}

/*
 * Handle one KVM_EXIT_IO. Returns 0 to keep running, or the final state
 * (DONE, FAILED, ERROR) of the vCPU.
 */
static enum kvm_vcpu_run_state handle_io(struct kvm_vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint32_t value;

	if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4 || run->io.count != 1) {
		report_exit(vcpu, "unexpected port access");
		return KVM_VCPU_ERROR;
	}
	memcpy(&value, (uint8_t *)run + run->io.data_offset, 4);
	switch (run->io.port) {
	case GUEST_PORT_SYNC:
		vcpu->syncs++;
		return 0;
	case GUEST_PORT_PRINT:
		guest_print(vcpu, value);
		return 0;
	case GUEST_PORT_DONE:
		return KVM_VCPU_DONE;
	case GUEST_PORT_FAIL: {
		struct guest_vcpu_page *v = vcpu_page(vcpu);

		kvm_vm_set_error(vcpu->vm,
				 "vCPU %d: guest failure %u (%s): page %llu of its region, expected "
				 "0x%llx, found 0x%llx, round %llu",
				 vcpu->id, value, fail_name(value), (unsigned long long)v->fail_page,
				 (unsigned long long)v->fail_expected,
				 (unsigned long long)v->fail_found, (unsigned long long)v->round);
		return KVM_VCPU_FAILED;
	}
	default:
		report_exit(vcpu, "unexpected port");
		return KVM_VCPU_ERROR;
	}
}

/* Under vm->lock: park while a pause is requested; complete pending I/O first. */
static void pause_point(struct kvm_vcpu *vcpu)
{
	struct kvm_vm *vm = vcpu->vm;

	while (vm->pause_req && !vm->quit) {
		if (!vcpu->paused) {
			/*
			 * KVM_RUN with immediate_exit completes an in-flight
			 * PIO/MMIO (its register results, rip) and returns
			 * -EINTR without entering the guest: after this the
			 * saved state is consistent (api.rst, KVM_RUN).
			 */
			vcpu->run->immediate_exit = 1;
			ioctl(vcpu->fd, KVM_RUN, 0);
			vcpu->run->immediate_exit = 0;
			vcpu->paused = true;
			vcpu->state = KVM_VCPU_PAUSED;
			vm->nr_paused++;
			pthread_cond_broadcast(&vm->cond);
		}
		pthread_cond_wait(&vm->cond, &vm->lock);
	}
	if (vcpu->paused) {
		vcpu->paused = false;
		vcpu->state = KVM_VCPU_RUNNING;
		vm->nr_paused--;
	}
}

static void throttle_sleep(struct kvm_vm *vm)
{
	int pct = vm->throttle_pct;
	struct timespec ts;
	uint64_t ns;

	if (pct <= 0)
		return;
	ns = THROTTLE_SLICE_NS * (uint64_t)pct / (uint64_t)(100 - pct);
	ts.tv_sec = ns / 1000000000ull;
	ts.tv_nsec = ns % 1000000000ull;
	pthread_mutex_unlock(&vm->lock);
	nanosleep(&ts, NULL);
	pthread_mutex_lock(&vm->lock);
}

static void *vcpu_thread(void *arg)
{
	struct kvm_vcpu *vcpu = arg;
	struct kvm_vm *vm = vcpu->vm;
	enum kvm_vcpu_run_state final = KVM_VCPU_ERROR;
	sigset_t set;

	tls_run = vcpu->run;
	sigemptyset(&set);
	sigaddset(&set, KVM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	pthread_mutex_lock(&vm->lock);
	for (;;) {
		enum kvm_vcpu_run_state st = 0;
		int r, err;

		pause_point(vcpu);
		if (vm->quit) {
			final = vcpu->state == KVM_VCPU_RUNNING ? KVM_VCPU_PAUSED : vcpu->state;
			break;
		}
		pthread_mutex_unlock(&vm->lock);
		r = ioctl(vcpu->fd, KVM_RUN, 0);
		err = errno;
		vcpu->run->immediate_exit = 0;
		vcpu->exits++;
		pthread_mutex_lock(&vm->lock);
		if (r < 0) {
			if (err == EINTR || err == EAGAIN) {
				vcpu->intr_exits++;
				if (!vm->pause_req && !vm->quit)
					throttle_sleep(vm);
				continue;
			}
			kvm_vm_set_error(vm, "vCPU %d: KVM_RUN: %s", vcpu->id, strerror(err));
			final = KVM_VCPU_ERROR;
			break;
		}
		switch (vcpu->run->exit_reason) {
		case KVM_EXIT_IO:
			vcpu->io_exits++;
			st = handle_io(vcpu);
			break;
		case KVM_EXIT_INTR:
			vcpu->intr_exits++;
			break;
		case KVM_EXIT_DIRTY_RING_FULL: {
			/* Wait for a harvester to reset the rings (or for a pause). */
			uint64_t gen = vm->ring_gen;

			vcpu->ring_full_exits++;
			while (gen == vm->ring_gen && !vm->pause_req && !vm->quit)
				pthread_cond_wait(&vm->cond, &vm->lock);
			break;
		}
		default:
			report_exit(vcpu, "unexpected exit");
			st = KVM_VCPU_ERROR;
			break;
		}
		if (st) {
			final = st;
			break;
		}
	}
	vcpu->state = final;
	if (final == KVM_VCPU_DONE || final == KVM_VCPU_FAILED || final == KVM_VCPU_ERROR)
		vm->nr_finished++;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	tls_run = NULL;
	return NULL;
}

int kvm_vm_start(struct kvm_vm *vm)
{
	sigset_t set, old;
	int i, r = 0;

	/* Threads start with the kick signal blocked and unblock it themselves. */
	sigemptyset(&set);
	sigaddset(&set, KVM_KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	pthread_mutex_lock(&vm->lock);
	for (i = 0; i < vm->nr_vcpus; i++) {
		struct kvm_vcpu *vcpu = &vm->vcpus[i];

		if (vcpu->thread_started)
			continue;
		vcpu->state = KVM_VCPU_RUNNING;
		r = -pthread_create(&vcpu->thread, NULL, vcpu_thread, vcpu);
		if (r) {
			vcpu->state = KVM_VCPU_CREATED;
			kvm_vm_set_error(vm, "vCPU %d: pthread_create: %s", i, strerror(-r));
			break;
		}
		vcpu->thread_started = true;
	}
	pthread_mutex_unlock(&vm->lock);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}

static int nr_threads(struct kvm_vm *vm)
{
	int i, n = 0;

	for (i = 0; i < vm->nr_vcpus; i++)
		n += vm->vcpus[i].thread_started;
	return n;
}

int kvm_vm_pause(struct kvm_vm *vm)
{
	int i;

	pthread_mutex_lock(&vm->lock);
	vm->pause_req = true;
	pthread_cond_broadcast(&vm->cond);
	for (i = 0; i < vm->nr_vcpus; i++)
		kvm_vcpu_kick(&vm->vcpus[i]);
	while (vm->nr_paused + vm->nr_finished < nr_threads(vm))
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int kvm_vm_resume(struct kvm_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->pause_req = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int kvm_vm_wait(struct kvm_vm *vm, double timeout_s)
{
	struct timespec dl;
	int i, r = 0;

	clock_gettime(CLOCK_REALTIME, &dl);
	if (timeout_s >= 0) {
		uint64_t ns = (uint64_t)(timeout_s * 1e9) + (uint64_t)dl.tv_nsec;

		dl.tv_sec += ns / 1000000000ull;
		dl.tv_nsec = ns % 1000000000ull;
	}
	pthread_mutex_lock(&vm->lock);
	for (;;) {
		bool failed = false;

		for (i = 0; i < vm->nr_vcpus; i++)
			failed |= vm->vcpus[i].state == KVM_VCPU_FAILED ||
				  vm->vcpus[i].state == KVM_VCPU_ERROR;
		if (failed) {
			r = -EIO;
			break;
		}
		if (vm->nr_finished == vm->nr_vcpus)
			break;
		if (timeout_s < 0) {
			pthread_cond_wait(&vm->cond, &vm->lock);
		} else if (pthread_cond_timedwait(&vm->cond, &vm->lock, &dl) == ETIMEDOUT) {
			r = -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&vm->lock);
	return r;
}

static volatile struct guest_params *params(struct kvm_vm *vm)
{
	return (volatile struct guest_params *)((uint8_t *)vm->sys_mem.hva + GUEST_PARAMS_GPA);
}

int kvm_vm_request_stop(struct kvm_vm *vm)
{
	uint32_t one = 1;

	return kvm_vm_write_guest(vm, GUEST_PARAMS_GPA + offsetof(struct guest_params, stop), &one,
				  sizeof(one));
}

int kvm_vm_set_round(struct kvm_vm *vm, uint32_t round)
{
	if (params(vm)->round == round)
		return 0;
	return kvm_vm_write_guest(vm, GUEST_PARAMS_GPA + offsetof(struct guest_params, round),
				  &round, sizeof(round));
}

static void *throttle_thread(void *arg)
{
	struct kvm_vm *vm = arg;
	struct timespec ts = { 0, THROTTLE_SLICE_NS };
	int i;

	pthread_mutex_lock(&vm->lock);
	while (!vm->quit) {
		bool on = vm->throttle_pct > 0;

		pthread_mutex_unlock(&vm->lock);
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&vm->lock);
		if (on && !vm->quit)
			for (i = 0; i < vm->nr_vcpus; i++)
				kvm_vcpu_kick(&vm->vcpus[i]);
	}
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

int kvm_vm_throttle(struct kvm_vm *vm, int pct)
{
	int r = 0;

	if (pct < 0 || pct > 99)
		return -EINVAL;
	pthread_mutex_lock(&vm->lock);
	vm->throttle_pct = pct;
	if (pct && !vm->throttle_started) {
		r = -pthread_create(&vm->throttle_thread, NULL, throttle_thread, vm);
		vm->throttle_started = r == 0;
	}
	pthread_mutex_unlock(&vm->lock);
	return r;
}

int kvm_vm_vcpu_stats(struct kvm_vm *vm, int i, struct kvm_vcpu_stats *st)
{
	struct kvm_vcpu *vcpu;
	struct guest_vcpu_page *v;

	if (i < 0 || i >= vm->nr_vcpus)
		return -EINVAL;
	vcpu = &vm->vcpus[i];
	v = vcpu_page(vcpu);
	pthread_mutex_lock(&vm->lock);
	st->state = vcpu->state;
	pthread_mutex_unlock(&vm->lock);
	st->exits = vcpu->exits;
	st->io_exits = vcpu->io_exits;
	st->syncs = vcpu->syncs;
	st->intr_exits = vcpu->intr_exits;
	st->ring_full_exits = vcpu->ring_full_exits;
	st->guest_writes = ((volatile struct guest_vcpu_page *)v)->writes;
	st->guest_reads = ((volatile struct guest_vcpu_page *)v)->reads;
	st->guest_batches = ((volatile struct guest_vcpu_page *)v)->batches;
	st->guest_round = ((volatile struct guest_vcpu_page *)v)->round;
	return 0;
}
