/*
 * The exerciser: Subzero's embedded guest (subzero demo, KVM tests).
 *
 * Entered in 64-bit mode at CPL0 at its first byte, paging on (identity
 * map), interrupts off. It reads what to do from a parameter block at
 * PARAMS (see src/demo/params.rs) and makes exactly the exits asked for:
 *
 *   1. prints the NUL-terminated message, one OUT per byte, to serial_port
 *   2. pio_reads  x IN  from pio_port,  then pio_writes  x OUT of the last value read
 *   3. mmio_reads x load from mmio_addr, then mmio_writes x store of the last
 *      value read to mmio_addr + 8
 *   4. halts x HLT
 *   5. cpuids x CPUID (leaf 0), then rdmsrs x RDMSR of msr_index
 *   6. writes poweroff_value to poweroff_port, and halts forever
 *
 * Position independent; only PARAMS is a fixed address.
 */
        .intel_syntax noprefix
        .code64
        .set PARAMS, 0x5000
        .set P_PIO_PORT,       0x00
        .set P_PIO_READS,      0x08
        .set P_PIO_WRITES,     0x10
        .set P_MMIO_ADDR,      0x18
        .set P_MMIO_READS,     0x20
        .set P_MMIO_WRITES,    0x28
        .set P_HALTS,          0x30
        .set P_SERIAL_PORT,    0x38
        .set P_POWEROFF_PORT,  0x40
        .set P_POWEROFF_VALUE, 0x48
        .set P_MESSAGE,        0x50
        .set P_CPUIDS,         0x58
        .set P_RDMSRS,         0x60
        .set P_MSR_INDEX,      0x68

        .text
        .globl _start
_start:
        mov     ebp, PARAMS
        cld

        /* 1. message */
        mov     rsi, [rbp + P_MESSAGE]
        mov     rdx, [rbp + P_SERIAL_PORT]
print:
        lodsb
        test    al, al
        jz      pio
        out     dx, al
        jmp     print

        /* 2. port I/O round trips */
pio:
        xor     eax, eax
        mov     rdx, [rbp + P_PIO_PORT]
        mov     rcx, [rbp + P_PIO_READS]
        jrcxz   pio_out
pio_in_loop:
        in      eax, dx
        loop    pio_in_loop
pio_out:
        mov     rcx, [rbp + P_PIO_WRITES]
        jrcxz   mmio
pio_out_loop:
        out     dx, eax
        loop    pio_out_loop

        /* 3. MMIO round trips */
mmio:
        xor     eax, eax
        mov     rbx, [rbp + P_MMIO_ADDR]
        mov     rcx, [rbp + P_MMIO_READS]
        jrcxz   mmio_write
mmio_read_loop:
        mov     eax, [rbx]
        loop    mmio_read_loop
mmio_write:
        mov     rcx, [rbp + P_MMIO_WRITES]
        jrcxz   halts
mmio_write_loop:
        mov     [rbx + 8], eax
        loop    mmio_write_loop

        /* 4. HLT exits (no in-kernel irqchip: each one reaches the VMM) */
halts:
        mov     rcx, [rbp + P_HALTS]
        jrcxz   cpuids
halt_loop:
        hlt
        loop    halt_loop

        /* 5. CPUID and RDMSR exits, which KVM handles itself */
cpuids:
        mov     r8, [rbp + P_CPUIDS]
        test    r8, r8
        jz      rdmsrs
cpuid_loop:
        xor     eax, eax
        xor     ecx, ecx
        cpuid
        dec     r8
        jnz     cpuid_loop
rdmsrs:
        mov     r8, [rbp + P_RDMSRS]
        test    r8, r8
        jz      poweroff
rdmsr_loop:
        mov     rcx, [rbp + P_MSR_INDEX]
        rdmsr
        dec     r8
        jnz     rdmsr_loop

        /* 6. power off */
poweroff:
        mov     rdx, [rbp + P_POWEROFF_PORT]
        mov     rax, [rbp + P_POWEROFF_VALUE]
        out     dx, al
forever:
        hlt
        jmp     forever
