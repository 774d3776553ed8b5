/*
 * The counter: a guest that runs forever, printing "count N" lines with
 * N = 1, 2, 3, ... on COM1, about one line per 10 million TSC ticks. Its
 * counter lives in r12, so a restored snapshot that goes on counting from
 * where it paused proves that the vCPU state came back (tests of pause,
 * snapshot and restore through the API).
 *
 * Linked as an ELF at 2 MiB with no PVH note, so Subzero enters it at its
 * 64-bit entry point at CPL0 with paging on, like a vmlinux.
 */
        .intel_syntax noprefix
        .code64
        .set COM1, 0x3f8
        .set DELAY, 10000000

        .text
        .globl _start
_start:
        xor     r12, r12
next:
        inc     r12
        /* "count " */
        lea     rsi, [rip + prefix]
        mov     dx, COM1
1:      lodsb
        test    al, al
        jz      2f
        out     dx, al
        jmp     1b
        /* r12 in decimal, built backwards in digits */
2:      mov     rax, r12
        lea     rdi, [rip + digits_end]
        mov     rcx, 10
3:      xor     edx, edx
        div     rcx
        add     dl, '0'
        dec     rdi
        mov     [rdi], dl
        test    rax, rax
        jnz     3b
        lea     rbx, [rip + digits_end]
        mov     dx, COM1
4:      mov     al, [rdi]
        out     dx, al
        inc     rdi
        cmp     rdi, rbx
        jb      4b
        mov     al, 10
        out     dx, al
        /* wait DELAY TSC ticks (or less, if the TSC went backwards) */
        rdtsc
        shl     rdx, 32
        or      rax, rdx
        mov     r13, rax
5:      pause
        rdtsc
        shl     rdx, 32
        or      rax, rdx
        sub     rax, r13
        cmp     rax, DELAY
        jb      5b
        jmp     next

prefix: .asciz "count "
digits: .space 24
digits_end:
