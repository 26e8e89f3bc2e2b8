/* guest_blob.S: embeds the flat guest image (built from src/kvm/guest by CMake) in the library. */
	.section .rodata.rmapvm_guest, "a"
	.balign 16
	.globl rmapvm_guest_start
	.globl rmapvm_guest_end
rmapvm_guest_start:
	.incbin "rmapvm-guest.bin" /* found through -Wa,-I<build dir> */
rmapvm_guest_end:
	.section .note.GNU-stack, "", @progbits
