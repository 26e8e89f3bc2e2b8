/* platform_kvm.c: the guest's platform calls under the rmapvm VMM: port I/O exits from CPL3. */
#include "rmapvm/kvm_guest_abi.h"
#include "guest.h"

#define VCPU(id) ((volatile struct guest_vcpu_page *)GUEST_VCPU_PAGE_GPA(id))

void guest_sync(uint32_t id, uint32_t round)
{
	guest_outl(GUEST_PORT_SYNC, round);
}

void guest_print(uint32_t id, const char *s, int len)
{
	volatile struct guest_vcpu_page *v = VCPU(id);
	int i;

	if (len > (int)sizeof(v->print_buf))
		len = sizeof(v->print_buf);
	for (i = 0; i < len; i++)
		v->print_buf[i] = s[i];
	guest_outl(GUEST_PORT_PRINT, (uint32_t)len);
}

/* The host stops running a vCPU after FAIL or DONE; loop in case it does not. */
void guest_fail(uint32_t id, uint32_t reason)
{
	for (;;)
		guest_outl(GUEST_PORT_FAIL, reason);
}

void guest_done(uint32_t id)
{
	for (;;)
		guest_outl(GUEST_PORT_DONE, 0);
}
