/* entry_kvm.S: guest entry under the rmapvm VMM: the host starts each vCPU here at CPL3, %rdi = vCPU id, %rsp = its stack top. */
	.section .text.entry, "ax"
	.globl _start
	.code64
_start:
	xorl	%ebp, %ebp
	andq	$-16, %rsp
	call	guest_main
1:	jmp	1b
