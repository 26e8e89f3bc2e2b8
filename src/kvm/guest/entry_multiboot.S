/* entry_multiboot.S: Multiboot entry for QEMU: 32-bit protected mode -> identity map -> long mode -> mb_main(). */
#define GUEST_PT_GPA 0x100000 /* = GUEST_PT_GPA of kvm_guest_abi.h (C-only header) */

#define MB_MAGIC 0x1badb002
#define MB_FLAGS 0x00000003 /* page-aligned modules, memory info */
#define MB_STACK 0x10000

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
	movl	%esi, %edi
	xorl	%ebp, %ebp
	call	mb_main
3:	hlt
	jmp	3b

	.section .data
	.balign 16
mb_gdt:
	.quad	0
	.quad	0
	.quad	0x00af9a000000ffff		/* 0x10: 64-bit code */
	.quad	0x00cf92000000ffff		/* 0x18: data */
mb_gdt_ptr:
	.word	mb_gdt_ptr - mb_gdt - 1
	.long	mb_gdt

	.section .bss
	.balign 16
mb_stack:
	.skip	MB_STACK

	.section .note.GNU-stack, "", @progbits
