/*
 * halt_wake: HLT woken by an interrupt, for `subzero bench exits`.
 *
 * Entered like the exerciser (64-bit, CPL0, identity paging, IF=0), in a VM
 * with KVM's in-kernel local APIC. Parameters at PARAMS (src/bench/halt_wake.rs).
 * It installs an interrupt gate for `vector` (IDT at IDT_BASE), enables
 * the local APIC, then `count` times:
 *
 *     out notify_port, al      ; ioeventfd: the host's waker thread sees it
 *     sti; hlt                 ; KVM halts the vCPU in the kernel
 *                              ; the waker's irqfd MSI wakes it; the handler
 *                              ; writes EOI and returns after the hlt
 *
 * `sti; hlt` cannot lose a wakeup: an interrupt that arrives after the OUT
 * stays pending until STI, and STI's one-instruction shadow makes it wake
 * the HLT. Finally it writes poweroff_value to poweroff_port.
 */
        .intel_syntax noprefix
        .code64
        .set PARAMS, 0x5000
        .set IDT_BASE, 0x3000
        .set LAPIC, 0xfee00000
        .set P_COUNT,          0x00
        .set P_NOTIFY_PORT,    0x08
        .set P_VECTOR,         0x10
        .set P_CODE_SELECTOR,  0x18
        .set P_POWEROFF_PORT,  0x20
        .set P_POWEROFF_VALUE, 0x28

        .text
        .globl _start
_start:
        mov     ebp, PARAMS
        /* interrupt gate for the vector: IDT_BASE + vector * 16 */
        mov     rdi, [rbp + P_VECTOR]
        shl     rdi, 4
        add     rdi, IDT_BASE
        lea     rax, [rip + handler]
        mov     [rdi], ax                       /* offset 15:0 */
        mov     rdx, [rbp + P_CODE_SELECTOR]
        mov     [rdi + 2], dx                   /* code segment selector */
        mov     word ptr [rdi + 4], 0x8e00      /* present, DPL 0, interrupt gate */
        shr     rax, 16
        mov     [rdi + 6], ax                   /* offset 31:16 */
        shr     rax, 16
        mov     [rdi + 8], eax                  /* offset 63:32 */
        mov     dword ptr [rdi + 12], 0
        /* lidt: limit 0xfff, base IDT_BASE */
        sub     rsp, 16
        mov     word ptr [rsp], 0xfff
        mov     qword ptr [rsp + 2], IDT_BASE
        lidt    [rsp]
        add     rsp, 16
        /* enable the local APIC: spurious-interrupt vector register */
        mov     ebx, LAPIC
        mov     dword ptr [rbx + 0xf0], 0x1ff

        mov     rcx, [rbp + P_COUNT]
        mov     rdx, [rbp + P_NOTIFY_PORT]
        jrcxz   done
wake_loop:
        out     dx, al
        sti
        hlt
        cli
        dec     rcx
        jnz     wake_loop
done:
        mov     rdx, [rbp + P_POWEROFF_PORT]
        mov     rax, [rbp + P_POWEROFF_VALUE]
        out     dx, al
forever:
        hlt
        jmp     forever

handler:
        mov     dword ptr [rbx + 0xb0], 0       /* EOI */
        iretq
