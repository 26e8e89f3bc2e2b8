/* entry_multiboot.S: Multiboot entry for QEMU: 32-bit protected mode -> identity map -> long mode -> CPL3 -> mb_main(). */
#define GUEST_PT_GPA 0x100000 /* = GUEST_PT_GPA of kvm_guest_abi.h (C-only header) */

#define MB_MAGIC 0x1badb002
#define MB_FLAGS 0x00000003 /* page-aligned modules, memory info */
#define MB_STACK 0x10000
#define MB_TSS_IOMAP 0x68		/* I/O bitmap right after the 104-byte TSS */
#define MB_TSS_LIMIT (MB_TSS_IOMAP + 0x2000)	/* 65536 port bits + the 0xff terminator byte */

	.section .multiboot, "a"
	.balign 4
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)

	.section .text.entry, "ax"
	.code32
	.globl	mb_entry32
mb_entry32:
	cli
	movl	$(mb_stack + MB_STACK), %esp
	movl	%ebx, %esi			/* multiboot info */

	/* Identity map 0..4 GiB with 2 MiB pages at GUEST_PT_GPA (same layout as the VMM's). */
	movl	$GUEST_PT_GPA, %edi
	movl	$(6 * 4096 / 4), %ecx
	xorl	%eax, %eax
	rep stosl
	movl	$(GUEST_PT_GPA + 0x1000 + 7), GUEST_PT_GPA	/* PML4[0] -> PDPT */
	xorl	%ecx, %ecx
1:	movl	%ecx, %eax				/* PDPT[i] -> PD i */
	shll	$12, %eax
	addl	$(GUEST_PT_GPA + 0x2000 + 7), %eax
	movl	%eax, (GUEST_PT_GPA + 0x1000)(,%ecx,8)
	incl	%ecx
	cmpl	$4, %ecx
	jne	1b
	xorl	%ecx, %ecx
2:	movl	%ecx, %eax				/* PD entries: 2 MiB pages, P|RW|US|PS */
	shll	$21, %eax
	orl	$0x87, %eax
	movl	%eax, (GUEST_PT_GPA + 0x2000)(,%ecx,8)
	incl	%ecx
	cmpl	$2048, %ecx
	jne	2b

	movl	%cr4, %eax
	orl	$0x620, %eax			/* PAE | OSFXSR | OSXMMEXCPT */
	movl	%eax, %cr4
	movl	$GUEST_PT_GPA, %eax
	movl	%eax, %cr3
	movl	$0xc0000080, %ecx		/* EFER.LME */
	rdmsr
	orl	$0x100, %eax
	wrmsr
	movl	%cr0, %eax
	andl	$~0x4, %eax			/* no EM */
	orl	$0x80000023, %eax		/* PG | NE | MP | PE */
	movl	%eax, %cr0
	lgdt	mb_gdt_ptr
	ljmp	$0x10, $mb_entry64

	.code64
mb_entry64:
	movl	$0x18, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	movq	$(mb_stack + MB_STACK), %rsp

	/*
	 * Drop to CPL3 as the rmapvm VMM starts its vCPUs: under a PVM
	 * /dev/kvm (this project's machines) CPL0 code is run by KVM's
	 * instruction emulator, which is slow and cannot emulate SSE (the
	 * guest's xmm7 check), while CPL3 runs natively. Linux selectors
	 * (user code 0x33, data 0x2b) as PVM requires; a TSS whose I/O bitmap
	 * opens every port (debugcon, isa-debug-exit, the PIT), since PVM
	 * ignores IOPL. TCG runs the same code.
	 */
	leaq	mb_tss(%rip), %rax		/* TSS descriptor base */
	movw	%ax, mb_gdt + 0x40 + 2(%rip)
	shrq	$16, %rax
	movb	%al, mb_gdt + 0x40 + 4(%rip)
	movb	%ah, mb_gdt + 0x40 + 7(%rip)
	shrq	$16, %rax
	movl	%eax, mb_gdt + 0x40 + 8(%rip)
	movq	$(mb_stack + MB_STACK), %rax
	movq	%rax, mb_tss + 4(%rip)		/* rsp0 */
	movw	$MB_TSS_IOMAP, mb_tss + 102(%rip)
	movb	$0xff, mb_tss + MB_TSS_LIMIT(%rip)	/* bitmap terminator */
	movw	$0x40, %ax
	ltr	%ax
	pushq	$0x2b				/* ss */
	pushq	$(mb_stack + MB_STACK)		/* rsp */
	pushq	$0x2				/* rflags: IF = 0, IOPL = 0 */
	pushq	$0x33				/* cs */
	leaq	mb_user(%rip), %rax
	pushq	%rax
	iretq

mb_user:
	movl	%esi, %edi
	xorl	%ebp, %ebp
	call	mb_main
3:	pause
	jmp	3b

	.section .data
	.balign 16
mb_gdt:						/* the Linux layout, as the VMM's GDT */
	.quad	0
	.quad	0
	.quad	0x00af9a000000ffff		/* 0x10: 64-bit kernel code */
	.quad	0x00cf92000000ffff		/* 0x18: kernel data */
	.quad	0x00cffa000000ffff		/* 0x23: 32-bit user code */
	.quad	0x00cff2000000ffff		/* 0x2b: user data */
	.quad	0x00affa000000ffff		/* 0x33: 64-bit user code */
	.quad	0
	.quad	0x0000890000000000 + MB_TSS_LIMIT	/* 0x40: 64-bit TSS (base set at run time) */
	.quad	0
mb_gdt_ptr:
	.word	mb_gdt_ptr - mb_gdt - 1
	.long	mb_gdt

	.section .bss
	.balign 16
mb_stack:
	.skip	MB_STACK
	.balign	16
mb_tss:						/* zero: every port open */
	.skip	MB_TSS_LIMIT + 1

	.section .note.GNU-stack, "", @progbits
