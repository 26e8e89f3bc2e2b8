/* guest.h: the guest's platform calls (VMM ports or QEMU devices) and entry point. */
#ifndef RMAPVM_GUEST_H
#define RMAPVM_GUEST_H

#include <stdint.h>

/* Run the workload as vCPU @id; never returns. */
void guest_main(uint32_t id) __attribute__((noreturn));

/* Platform (platform_kvm.c or multiboot.c). guest_fail/guest_done never return. */
void guest_sync(uint32_t id, uint32_t round);
void guest_print(uint32_t id, const char *s, int len);
void guest_fail(uint32_t id, uint32_t reason) __attribute__((noreturn));
void guest_done(uint32_t id) __attribute__((noreturn));

void *memcpy(void *dst, const void *src, unsigned long n);
void *memset(void *dst, int c, unsigned long n);

static inline void guest_outl(uint16_t port, uint32_t v)
{
	asm volatile("outl %0, %w1" : : "a"(v), "Nd"(port) : "memory");
}

static inline void guest_outb(uint16_t port, uint8_t v)
{
	asm volatile("outb %0, %w1" : : "a"(v), "Nd"(port) : "memory");
}

#endif /* RMAPVM_GUEST_H */
